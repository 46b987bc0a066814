"""Saving inside an epoch (``--save-every``, SIGTERM) and resuming there: the run ends as one never stopped."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vitrain.cli import main
from vitrain.config.checks import parse_save_every
from vitrain.engine.state import read_state

from .conftest import _metrics, _without_timing, interrupt_step

# 24 training images in batches of 4: 6 steps an epoch; augmentation, dropout and drop-path all draw
RUN = ["--epochs", "3", "--batch-size", "4", "--augment", "trivialaugment", "--dropout", "0.1"]
RUN += ["--drop-path", "0.1", "--warmup-epochs", "1"]


def _same_run(one: Path, two: Path) -> None:
    a, b = load_file(str(one / "last.safetensors")), load_file(str(two / "last.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert _without_timing(_metrics(one)) == _without_timing(_metrics(two))
    reports = [json.loads((run / "report.json").read_text()) for run in (one, two)]
    assert reports[0]["test"] == reports[1]["test"] and reports[0]["val"] == reports[1]["val"]


@pytest.mark.parametrize("in_memory", ["on", "off"])
def test_save_every_steps_then_resume_ends_identical_to_a_run_never_stopped(
    flat_folder, tmp_path, tiny_args, monkeypatch, capsys, in_memory
):
    common = ["--data", str(flat_folder), *tiny_args, *RUN, "--in-memory", in_memory]
    assert main(["train", "--out", str(tmp_path / "full"), *common]) == 0
    cut = tmp_path / "cut"
    interrupt_step(monkeypatch, 11)  # Ctrl-C in step 5 of epoch 2: the save at global step 8 stands
    assert main(["train", "--out", str(cut), *common, "--save-every", "4steps"]) == 130
    said = capsys.readouterr().out
    assert "saved the run at step 4 of epoch 1" in said and "saved the run at step 2 of epoch 2" in said
    state = read_state(cut)
    assert (state["epoch"], state["step"]) == (1, 8)  # one epoch and 2 steps of the next
    assert (state["partial"]["epoch"], state["partial"]["step"], state["partial"]["world"]) == (2, 2, 1)
    assert len(_metrics(cut)) == 1
    monkeypatch.undo()
    assert main(["train", "--resume", str(cut)]) == 0
    assert f"resuming {cut} at step 2 of epoch 2" in capsys.readouterr().out
    _same_run(tmp_path / "full", cut)
    assert "partial" not in read_state(cut)  # the last commit was the end of the last epoch


def test_sigterm_saves_inside_the_epoch_and_the_run_resumes_there(
    flat_folder, tmp_path, tiny_args, monkeypatch, capsys
):
    """A scheduler's SIGTERM: the step in progress finishes, the run is saved there, and it stops (exit 130)."""
    common = ["--data", str(flat_folder), *tiny_args, *RUN]
    assert main(["train", "--out", str(tmp_path / "full"), *common]) == 0
    cut = tmp_path / "cut"
    interrupt_step(monkeypatch, 9, lambda: os.kill(os.getpid(), signal.SIGTERM))  # during step 3 of epoch 2
    assert main(["train", "--out", str(cut), *common]) == 130
    err = capsys.readouterr().err
    said = "stopped by SIGTERM at step 3 of epoch 2, which is saved. Continue with: vitrain train --resume"
    assert f"{said} {cut}" in err
    assert read_state(cut)["partial"]["step"] == 3
    monkeypatch.undo()
    assert main(["train", "--resume", str(cut)]) == 0
    _same_run(tmp_path / "full", cut)


def test_the_file_pipeline_augments_the_same_with_any_number_of_workers(flat_folder, tmp_path, tiny_args):
    """Each sample's augmentation is seeded by its place in the epoch, not by the worker that decodes it."""
    common = ["--data", str(flat_folder), *tiny_args, *RUN, "--epochs", "1", "--in-memory", "off"]
    assert main(["train", "--out", str(tmp_path / "none"), *common, "--workers", "0"]) == 0
    assert main(["train", "--out", str(tmp_path / "two"), *common, "--workers", "2"]) == 0
    _same_run(tmp_path / "none", tmp_path / "two")


def test_save_every_values_and_refusals(flat_folder, tmp_path, tiny_args, capsys):
    assert parse_save_every("30") == (30.0, None)
    assert parse_save_every("1.5h") == (90.0, None)
    assert parse_save_every("500steps") == (None, 500)
    common = ["--data", str(flat_folder), *tiny_args, "--out", str(tmp_path / "run")]
    assert main(["train", *common, "--save-every", "5x"]) == 2
    assert "--save-every must be minutes (30, 30m, 1.5h) or steps (500steps)" in capsys.readouterr().err
    assert main(["train", *common, "--save-every", "10", "--backend", "jax"]) == 2
    assert "--save-every needs --backend torch" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
