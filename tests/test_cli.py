"""The command line: exit codes and messages for bad flags and for missing or unwritable paths,
``python -m vitrain``, ``vitrain models``, SIGTERM, and runs that are never overwritten by accident."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

import vitrain
from vitrain.cli import main


def test_existing_run_is_not_overwritten_by_accident(flat_folder, tmp_path, tiny_args, capsys):
    run = tmp_path / "run"
    args = ["train", "--data", str(flat_folder), "--out", str(run), *tiny_args, "--epochs", "1"]
    assert main(args) == 0
    before = (run / "last.safetensors").read_bytes()
    assert main(args) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert (run / "last.safetensors").read_bytes() == before
    # a failing start (here: a mistyped --data) with --overwrite leaves the old run untouched
    bad = ["train", "--data", str(flat_folder) + "-typo", "--out", str(run), *tiny_args, "--overwrite"]
    assert main(bad) == 2
    assert (run / "last.safetensors").read_bytes() == before
    (run / "my-notes.txt").write_text("keep me")
    assert main(args + ["--overwrite", "--seed", "1"]) == 0
    assert (run / "my-notes.txt").read_text() == "keep me"  # only vitrain's own files are replaced


def test_overwrite_clears_what_describes_the_old_model_and_nothing_else(tmp_path):
    from vitrain.engine.card import MARK
    from vitrain.engine.rundir import start_run_dir

    (tmp_path / "examples").mkdir()
    (tmp_path / "examples" / "test-00001.png").write_bytes(b"old")
    (tmp_path / "best.onnx").write_bytes(b"old")
    (tmp_path / "README.md").write_text("# old card\n" + MARK)
    for name, stamp in (("export-hf", True), ("export-timm", None)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps({"vitrain_export": stamp}))
    (tmp_path / "notes.txt").write_text("keep me")
    start_run_dir(tmp_path)
    assert not any((tmp_path / n).exists() for n in ("examples", "best.onnx", "README.md", "export-hf"))
    assert (tmp_path / "export-timm" / "config.json").exists()  # not stamped by vitrain: kept
    assert (tmp_path / "notes.txt").read_text() == "keep me"
    (tmp_path / "README.md").write_text("my own notes")
    start_run_dir(tmp_path)
    assert (tmp_path / "README.md").read_text() == "my own notes"


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--lr", "-1"], "--lr must be positive"),
        (["--batch-size", "0"], "--batch-size must be at least 1"),
        (["--img-size", "30", "--patch-size", "4"], "not divisible by patch_size"),
        (["--data", "no/such/folder"], "--data no/such/folder: no such file"),
        (["--mean", "0.5"], "--mean/--std must be given together"),
        (["--mean", "0.5,0.5", "--std", "0.2,0.2"], "--mean needs 1 value"),
        (["--workers", "9999"], "--workers is more than 4x this machine"),
        (["--device", "cuda:0"] if not torch.cuda.is_available() else ["--device", "tpu"], "--device"),
    ],
)
def test_bad_options_exit_2_with_a_message_naming_them(tmp_path, flags, message, capsys):
    assert main(["train", "--out", str(tmp_path / "run"), "--epochs", "1", "--no-progress", *flags]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # nothing is created for a run that never started


@pytest.mark.parametrize(
    "flags, message",
    [(["--channels", "2"], "--channels: invalid choice: 2"), (["--epochs", "many"], "--epochs: invalid int value")],
)
def test_malformed_option_values_are_named_by_the_parser(tmp_path, flags, message, capsys):
    with pytest.raises(SystemExit) as info:
        main(["train", "--out", str(tmp_path / "run"), *flags])
    assert info.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_python_dash_m_runs_the_default_digits_job_briefly(tmp_path):
    run = tmp_path / "digits"
    result = subprocess.run(
        [sys.executable, "-m", "vitrain", "train", "--epochs", "2", "--out", str(run), "--no-progress"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "model: vit-digits" in result.stdout and "test accuracy" in result.stdout
    report = json.loads((run / "report.json").read_text())
    assert report["test"]["images"] == 359 and report["test"]["top5"] is not None
    assert len(report["classes"]) == 10


def test_models_command_lists_presets(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "vit-ti16" in out and "vit-digits" in out and "vit-b16" in out


def test_sigterm_saves_and_says_how_to_resume(tmp_path):
    import signal
    import time

    run = tmp_path / "run"
    proc = subprocess.Popen(
        # a long run, stopped early: --compile off, or --compile auto would first time a compiled step
        [sys.executable, "-m", "vitrain", "train", "--epochs", "500", "--compile", "off", "--out", str(run)]
        + ["--no-progress"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 120
    while not (run / "metrics.csv").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert f"Continue with: vitrain train --resume {run}" in err
    assert (run / "state.safetensors").is_file() and vitrain.load_model(run / "last.safetensors")


def test_tools_report_missing_checkpoints_clearly(tmp_path, capsys):
    assert main(["eval", str(tmp_path / "nothing"), "--data", "digits"]) == 2
    assert "no such checkpoint file or run folder" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "nothing"), "--format", "onnx"]) == 2


def test_tools_name_an_output_they_cannot_write(trained, tmp_path, capsys):
    run, data = trained
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    for command in (["eval", str(run)], ["predict", str(run), str(data / "cat")]):
        assert main([*command, "--out", str(afile)]) == 2
        assert f"vitrain: error: --out {afile} is a file, not a folder" in capsys.readouterr().err
    assert main(["eval", str(run), "--out", str(afile / "sub")]) == 1  # an OSError while writing: no traceback
    assert f"vitrain: error: [Errno 20] Not a directory: '{afile / 'sub'}'" in capsys.readouterr().err
    assert main(["export", str(run), "--format", "torchscript", "--out", str(tmp_path)]) == 2
    assert (
        f"--out {tmp_path} is a folder; give the file to write, e.g. {tmp_path / 'best.torchscript.pt'}"
        in capsys.readouterr().err
    )
    assert main(["export", str(run), "--format", "torchscript", "--out", str(tmp_path / "new" / "m.pt")]) == 0
    assert (tmp_path / "new" / "m.pt").is_file()  # the missing folder is made
