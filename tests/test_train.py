"""The training loop, ``vitrain train`` end to end: the run folder contract, resume, determinism,
non-finite losses, time budgets, class weights, leaked images and unreadable files."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import shutil
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

import vitrain
from vitrain.cli import main
from vitrain.engine import torch_backend

from .conftest import CLASS_COLORS, _metrics, _without_timing, interrupt_validation, write_class_folders

RUN_FILES = [
    "config.yaml",
    "metrics.csv",
    "best.safetensors",
    "last.safetensors",
    "state.safetensors",
    "report.json",
    "accuracy.png",
    "loss.png",
    "confusion_matrix.png",
    "samples.png",
]


def test_train_on_a_folder_writes_the_whole_run_folder(flat_folder, tmp_path, tiny_args):
    run = tmp_path / "run"
    assert main(["train", "--data", str(flat_folder), "--out", str(run), *tiny_args]) == 0
    for name in RUN_FILES:
        assert (run / name).is_file(), name
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))

    report = json.loads((run / "report.json").read_text())
    assert report["classes"] == ["cat", "dog", "fox"]
    assert report["best_epoch"] in (1, 2)
    assert 0 <= report["val"]["accuracy"] <= 1 and report["val"]["loss"] > 0
    test = report["test"]
    assert test["split"] == "test" and test["images"] == 3
    assert test["top5"] is None  # fewer than 5 classes
    assert set(test["per_class"]) == {"cat", "dog", "fox"}
    matrix = test["confusion_matrix"]
    assert len(matrix) == 3 and sum(map(sum, matrix)) == 3
    assert test["accuracy"] == pytest.approx(sum(matrix[i][i] for i in range(3)) / 3)
    assert report["train_seconds"] > 0

    rows = _metrics(run)
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert set(rows[0]) >= {"train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "images_per_second"}

    config = yaml.safe_load((run / "config.yaml").read_text())["train"]
    assert config["classes"] == ["cat", "dog", "fox"] and config["channels"] == 3
    assert len(config["mean"]) == 3 and config["embed_dim"] == 32
    assert config["augment"] == "none"  # "auto" resolves to none at a 16 px input

    model = vitrain.load_model(run)  # best checkpoint, no model flags
    assert model.meta["classes"] == ["cat", "dog", "fox"] and model.meta["mean"] == config["mean"]
    assert model(torch.zeros(1, 3, 16, 16)).shape == (1, 3)


def test_best_checkpoint_is_the_best_validation_epoch(flat_folder, tmp_path, tiny_args):
    run = tmp_path / "run"
    assert (
        main(["train", "--data", str(flat_folder), "--out", str(run), *tiny_args, "--epochs", "4", "--lr", "3e-3"]) == 0
    )
    rows = _metrics(run)
    report = json.loads((run / "report.json").read_text())
    best_acc = max(float(r["val_accuracy"]) for r in rows)
    first_best = next(int(r["epoch"]) for r in rows if float(r["val_accuracy"]) == best_acc)
    assert report["best_epoch"] == first_best and report["val"]["accuracy"] == pytest.approx(best_acc)
    assert vitrain.load_model(run / "best.safetensors").meta["epoch"] == first_best
    assert vitrain.load_model(run / "last.safetensors").meta["epoch"] == 4


def test_same_seed_same_numbers(flat_folder, tmp_path, tiny_args):
    for name in ("a", "b"):
        assert (
            main(
                [
                    "train",
                    "--data",
                    str(flat_folder),
                    "--out",
                    str(tmp_path / name),
                    *tiny_args,
                    "--augment",
                    "randaugment",
                    "--dropout",
                    "0.1",
                    "--seed",
                    "3",
                ]
            )
            == 0
        )
    assert _without_timing(_metrics(tmp_path / "a")) == _without_timing(_metrics(tmp_path / "b"))
    a, b = (load_file(str(tmp_path / n / "last.safetensors")) for n in "ab")
    assert all(torch.equal(a[k], b[k]) for k in a)


def _interrupt_then_resume(common: list[str], tmp_path: Path, monkeypatch) -> None:
    """Train ``full`` uninterrupted; train ``cut`` with Ctrl-C during epoch 3's validation, then resume it."""
    assert main(["train", "--out", str(tmp_path / "full"), *common]) == 0
    undo = interrupt_validation(monkeypatch, torch_backend)
    assert main(["train", "--out", str(tmp_path / "cut"), *common]) == 130
    assert len(_metrics(tmp_path / "cut")) == 2
    undo()
    assert main(["train", "--resume", str(tmp_path / "cut"), "--no-progress"]) == 0
    full = load_file(str(tmp_path / "full" / "last.safetensors"))
    resumed = load_file(str(tmp_path / "cut" / "last.safetensors"))
    assert all(torch.equal(full[k], resumed[k]) for k in full)
    assert _without_timing(_metrics(tmp_path / "full")) == _without_timing(_metrics(tmp_path / "cut"))


def test_resume_auto_starts_a_run_then_continues_it_with_the_same_command(
    flat_folder, tmp_path, tiny_args, monkeypatch, capsys
):
    """One command line for a preempted job: it starts the run, and after an interruption it continues it,
    ending identical to a run never stopped; changed settings are refused by name."""
    common = ["--data", str(flat_folder), *tiny_args, "--epochs", "4"]
    assert main(["train", "--out", str(tmp_path / "full"), *common]) == 0
    command = ["train", "--out", str(tmp_path / "cut"), "--resume", "auto", *common]
    undo = interrupt_validation(monkeypatch, torch_backend)
    assert main(command) == 130
    assert "Continue with: the same command (it has --resume auto)" in capsys.readouterr().err
    undo()
    assert main([*command, "--lr", "0.5", "--epochs", "5"]) == 2
    assert "changed: --epochs, --lr" in capsys.readouterr().err
    assert main([*command, "--workers", "0"]) == 0  # where and how fast it runs may change
    full = load_file(str(tmp_path / "full" / "last.safetensors"))
    resumed = load_file(str(tmp_path / "cut" / "last.safetensors"))
    assert all(torch.equal(full[k], resumed[k]) for k in full)
    assert _without_timing(_metrics(tmp_path / "full")) == _without_timing(_metrics(tmp_path / "cut"))


def test_resume_auto_needs_out_and_restarts_a_run_that_never_committed_an_epoch(
    flat_folder, tmp_path, tiny_args, capsys
):
    assert main(["train", "--data", str(flat_folder), "--resume", "auto", *tiny_args]) == 2
    assert "--resume auto needs --out DIR" in capsys.readouterr().err
    started = tmp_path / "started"  # killed while loading its data: only its config.yaml
    started.mkdir()
    (started / "config.yaml").write_text("train: {}\n")
    (started / "notes.txt").write_text("keep me")
    assert main(["train", "--data", str(flat_folder), "--out", str(started), "--resume", "auto", *tiny_args]) == 0
    assert (started / "state.safetensors").is_file() and (started / "notes.txt").read_text() == "keep me"
    finished = tmp_path / "no-state"  # run files without a training state: not vitrain's to replace
    finished.mkdir()
    (finished / "best.safetensors").write_bytes(b"mine")
    args = ["train", "--data", str(flat_folder), "--out", str(finished), "--resume", "auto", *tiny_args]
    assert main(args) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert (finished / "best.safetensors").read_bytes() == b"mine"


@pytest.mark.parametrize("in_memory", ["on", "off"])  # batched in-memory augmentation, and the per-image DataLoader
def test_resume_ends_identical_to_an_uninterrupted_run(flat_folder, tmp_path, tiny_args, monkeypatch, in_memory):
    _interrupt_then_resume(
        [
            "--data",
            str(flat_folder),
            *tiny_args,
            "--epochs",
            "3",
            "--augment",
            "trivialaugment",
            "--dropout",
            "0.1",
            "--drop-path",
            "0.1",
            "--warmup-epochs",
            "1",
            "--in-memory",
            in_memory,
        ],
        tmp_path,
        monkeypatch,
    )
    full_report = json.loads((tmp_path / "full" / "report.json").read_text())
    cut_report = json.loads((tmp_path / "cut" / "report.json").read_text())
    assert full_report["test"] == cut_report["test"]


def test_resume_refuses_changed_settings_and_missing_state(flat_folder, tmp_path, tiny_args, capsys):
    run = tmp_path / "run"
    assert main(["train", "--data", str(flat_folder), "--out", str(run), *tiny_args, "--epochs", "1"]) == 0
    assert main(["train", "--resume", str(run), "--lr", "0.5"]) == 2
    assert "cannot change: --lr" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path / "nowhere")]) == 2
    assert "not a vitrain run folder" in capsys.readouterr().err


def test_resume_refuses_data_whose_images_changed(flat_folder, tmp_path, tiny_args, capsys):
    # a file added to (or renamed in) a flat folder re-deals the seeded split: trained-on images could be tested
    run = tmp_path / "run"
    assert main(["train", "--data", str(flat_folder), "--out", str(run), *tiny_args, "--epochs", "1"]) == 0
    state = (run / "state.safetensors").read_bytes()
    first = sorted((flat_folder / "cat").iterdir())[0]
    shutil.copy(first, flat_folder / "cat" / "extra.png")
    assert main(["train", "--resume", str(run)]) == 2
    assert (
        f"--resume {run}: the images of --data {flat_folder} changed since the run started (train/val/test "
        "images: 24/3/3 then, 25/3/3 now): the splits would differ, and images the run trained on could land "
        "in its test split; restore the data as it was, or start again with --overwrite"
    ) in capsys.readouterr().err
    (flat_folder / "cat" / "extra.png").unlink()
    first.rename(first.with_name("renamed.png"))
    assert main(["train", "--resume", str(run)]) == 2
    assert "(as many images, 24/3/3, but other files or labels)" in capsys.readouterr().err
    assert (run / "state.safetensors").read_bytes() == state  # a refused resume changes nothing
    first.with_name("renamed.png").rename(first)
    assert main(["train", "--resume", str(run)]) == 0


def test_the_last_line_says_when_the_final_score_is_on_validation(flat_folder, tmp_path, tiny_args, capsys):
    run = tmp_path / "run"
    assert main(["train", "--data", str(flat_folder), "--out", str(run), *tiny_args, "--test-fraction", "0"]) == 0
    done = capsys.readouterr().out.strip().splitlines()[-1]
    report = json.loads((run / "report.json").read_text())
    assert report["test"]["split"] == "val"
    assert done.startswith("done in ") and "test accuracy" not in done
    assert (
        f"accuracy on the validation split (no test split; it also chose the best epoch) "
        f"{report['test']['accuracy']:.4f}"
    ) in done


def test_balanced_class_weights_are_images_over_classes_times_class_images():
    from types import SimpleNamespace

    from vitrain.config import TrainConfig
    from vitrain.engine.torch_backend import class_weights

    splits = SimpleNamespace(train=SimpleNamespace(targets=[0] * 6 + [1] * 3 + [2]))
    balanced = TrainConfig(class_weights="balanced", classes=["a", "b", "c"])
    weights = class_weights(balanced, splits, torch.device("cpu"))
    assert weights.tolist() == pytest.approx([10 / (3 * 6), 10 / (3 * 3), 10 / (3 * 1)])
    assert class_weights(TrainConfig(classes=["a", "b", "c"]), splits, torch.device("cpu")) is None


def test_imbalanced_data_gets_a_note_balanced_accuracy_and_balanced_training(tmp_path, tiny_args, capsys):
    data = write_class_folders(tmp_path / "imb", per_class=30, classes={"cat": CLASS_COLORS["cat"]})
    write_class_folders(data, per_class=6, classes={"dog": CLASS_COLORS["dog"]})
    runs = {}
    for weights in ("none", "balanced"):
        runs[weights] = tmp_path / weights
        assert (
            main(
                [
                    "train",
                    "--data",
                    str(data),
                    "--out",
                    str(runs[weights]),
                    *tiny_args,
                    "--epochs",
                    "3",
                    "--class-weights",
                    weights,
                    "--best-metric",
                    "balanced-accuracy",
                ]
            )
            == 0
        )
        log = capsys.readouterr().out
        assert (
            "note: imbalanced classes: cat has 24 training images, dog 4; accuracy favours the large classes, "
            "so the balanced accuracy (the mean per-class recall) is reported too"
        ) in log
        report = json.loads((runs[weights] / "report.json").read_text())
        recalls = [v for v in report["test"]["per_class"].values()]
        assert report["test"]["balanced_accuracy"] == pytest.approx(sum(recalls) / len(recalls))
        assert (
            f"test accuracy {report['test']['accuracy']:.4f}, balanced accuracy "
            f"{report['test']['balanced_accuracy']:.4f}"
        ) in log.strip().splitlines()[-1]
        with open(runs[weights] / "metrics.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        best = max(float(r["val_balanced_accuracy"]) for r in rows)
        assert report["best_epoch"] == next(int(r["epoch"]) for r in rows if float(r["val_balanced_accuracy"]) == best)
        assert report["val"]["balanced_accuracy"] == pytest.approx(best, abs=1e-6)
    with open(runs["none"] / "metrics.csv", newline="") as a, open(runs["balanced"] / "metrics.csv", newline="") as b:
        # same seed, data order and start: only the loss weights differ
        assert next(csv.DictReader(a))["train_loss"] != next(csv.DictReader(b))["train_loss"]


@pytest.mark.slow
def test_default_job_reaches_95_percent_on_digits(tmp_path):
    """The README's promise (about 70 s on 2 CPU cores): run with `pytest -m slow`."""
    assert main(["train", "--out", str(tmp_path / "default"), "--no-progress"]) == 0
    report = json.loads((tmp_path / "default" / "report.json").read_text())
    assert report["test"]["accuracy"] >= 0.95


def test_nonfinite_loss_stops_naming_the_epoch_and_keeps_the_last_good_checkpoint(
    flat_folder, tmp_path, tiny_args, monkeypatch, capsys
):
    real = torch_backend.F.cross_entropy
    calls = {"n": 0}

    def nan_in_epoch_two(*args, **kwargs):
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * float("nan") if calls["n"] > 3 else loss  # 3 steps per epoch

    monkeypatch.setattr(torch_backend.F, "cross_entropy", nan_in_epoch_two)
    run = tmp_path / "run"
    assert main(["train", "--data", str(flat_folder), "--out", str(run), *tiny_args, "--epochs", "3"]) == 1
    err = capsys.readouterr().err
    assert "a non-finite loss or gradient at epoch 2, step 1 of the epoch (global step 4): the loss was nan" in err
    assert "--skip-nonfinite" in err and "--compile off" not in err  # the step is not compiled
    assert vitrain.load_model(run / "last.safetensors").meta["epoch"] == 1
    assert len(_metrics(run)) == 1


@pytest.mark.parametrize("allowed", [1, 2])
def test_skip_nonfinite_skips_up_to_n_bad_batches_then_stops(
    flat_folder, tmp_path, tiny_args, monkeypatch, capsys, allowed
):
    real = torch_backend.F.cross_entropy
    calls = {"n": 0}

    def inf_twice(*args, **kwargs):  # steps 4 and 5 (epoch 2, steps 1 and 2) give an infinite loss
        calls["n"] += torch.is_grad_enabled()  # training steps only, not evaluation
        loss = real(*args, **kwargs)
        return loss * float("inf") if calls["n"] in (4, 5) else loss

    monkeypatch.setattr(torch_backend.F, "cross_entropy", inf_twice)
    run = tmp_path / "run"
    code = main(
        [
            "train",
            "--data",
            str(flat_folder),
            "--out",
            str(run),
            *tiny_args,
            "--epochs",
            "3",
            "--skip-nonfinite",
            str(allowed),
        ]
    )
    captured = capsys.readouterr()
    assert (
        "skipped a batch at epoch 2, step 1 of the epoch (global step 4): the loss was inf (1 of "
        f"--skip-nonfinite {allowed})" in captured.out
    )
    if allowed == 1:
        assert code == 1 and "at epoch 2, step 2 of the epoch (global step 5)" in captured.err
        return
    assert code == 0
    report = json.loads((run / "report.json").read_text())
    assert [b["step"] for b in report["skipped_batches"]] == [4, 5]
    assert all(math.isfinite(float(r["train_loss"])) for r in _metrics(run))
    assert vitrain.load_model(run / "last.safetensors").meta["epoch"] == 3


def test_mixup_cutmix_and_ema_train_and_resume_exactly(flat_folder, tmp_path, tiny_args, monkeypatch):
    # 24 training images in batches of 7: the last batch has 3, and MixUp/CutMix must cope
    _interrupt_then_resume(
        [
            "--data",
            str(flat_folder),
            *tiny_args,
            "--epochs",
            "3",
            "--batch-size",
            "7",
            "--mixup",
            "0.8",
            "--cutmix",
            "1.0",
            "--ema",
            "0.9",
        ],
        tmp_path,
        monkeypatch,
    )
    # checkpoints hold the EMA weights, which differ from the raw weights in the state
    from vitrain.checkpoint import load_state

    last = load_file(str(tmp_path / "full" / "last.safetensors"))
    state = load_state(tmp_path / "full" / "state.safetensors")
    assert torch.equal(state["ema"]["module.head.weight"], last["head.weight"])
    assert not torch.equal(state["model"]["head.weight"], last["head.weight"])


def test_time_budget_plans_the_steps_and_reports_them(flat_folder, tmp_path, tiny_args):
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--data",
                str(flat_folder),
                "--out",
                str(run),
                *tiny_args,
                "--epochs",
                "100000",
                "--time-budget",
                "0.25",
            ]
        )
        == 0
    )
    report = json.loads((run / "report.json").read_text())
    budget = report["time_budget"]
    assert budget["minutes"] == 0.25 and budget["planned_steps"] > 3
    assert budget["done_steps"] == budget["planned_steps"] or budget["stopped_by"] == "deadline"
    assert report["epochs"] == len(_metrics(run)) < 1000  # the plan, not --epochs, set the length
    assert float(_metrics(run)[-1]["lr"]) == pytest.approx(0.0, abs=1e-9)  # the schedule ran to its end
    assert report["test"]["images"] == 3


def test_a_wrong_first_plan_is_corrected_from_the_measured_epochs(flat_folder, tmp_path, tiny_args, monkeypatch):
    # the probe plans far too many steps: 200,000 in 15 s would need over 13,000 steps/s, 50x what
    # this tiny model does on any CPU (a multiple of the probe's own plan is not enough: the probe
    # counts validation time that a fast machine then does not spend). Re-planning after each
    # epoch must bring the run back inside the budget with the schedule run to its end.
    from vitrain.engine import train as engine

    real = engine.plan_budget

    def overoptimistic(*args, **kwargs):
        return {**real(*args, **kwargs), "planned_steps": 200_000}

    monkeypatch.setattr(engine, "plan_budget", overoptimistic)
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--data",
                str(flat_folder),
                "--out",
                str(run),
                *tiny_args,
                "--epochs",
                "100000",
                "--time-budget",
                "0.25",
            ]
        )
        == 0
    )
    report = json.loads((run / "report.json").read_text())
    budget = report["time_budget"]
    assert budget["replans"] and budget["replans"][0]["from"] == budget["first_plan"]
    assert budget["planned_steps"] < budget["first_plan"] / 5
    assert report["total_seconds"] < 0.25 * 60 * 1.1
    if budget["stopped_by"] == "plan":  # not cut by the deadline: the cosine reached its end
        assert float(_metrics(run)[-1]["lr"]) == pytest.approx(0.0, abs=1e-9)


def slow_first_call_compile(seconds: float):
    """A stand-in for torch.compile whose first call takes ``seconds``, as a real compilation
    does on a GPU (20 s and more there), without paying for one on the CPU."""

    def fake_compile(model, **kwargs):
        calls = []

        def compiled(*args, **kw):
            if not calls:
                time.sleep(seconds)
            calls.append(1)
            return model(*args, **kw)

        return compiled

    return fake_compile


def test_the_compiling_first_epoch_does_not_shrink_the_plan(flat_folder, tmp_path, tiny_args, monkeypatch):
    # measured on an H100: epoch 1 took 20.7 s (compilation) where later epochs took 0.4 s, and
    # re-planning from it cut a 3.5-minute run's plan from 984 steps to 51, then grew it back
    # epoch by epoch while the slow epoch stayed in the speed window. Epoch 1 of a compiled run
    # is not a speed measurement: the probe's plan stands until epoch 2 has been timed.
    monkeypatch.setattr(torch, "compile", slow_first_call_compile(3.0))
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--data",
                str(flat_folder),
                "--out",
                str(run),
                *tiny_args,
                "--epochs",
                "100000",
                "--time-budget",
                "0.2",
                "--compile",
                "on",
            ]
        )
        == 0
    )
    budget = json.loads((run / "report.json").read_text())["time_budget"]
    assert budget["replans"] and all(r["after_epoch"] >= 2 for r in budget["replans"])
    # no plan read the 3 s epoch as a speed (over a second per step of this tiny model)
    assert all(r["seconds_per_step"] < 0.5 for r in budget["replans"])


def test_leaked_evaluation_images_are_counted_and_removed_with_dedupe(tmp_path, tiny_args, capsys):
    from .conftest import write_class_folders

    data = tmp_path / "leaky"
    write_class_folders(data / "train", per_class=6)
    write_class_folders(data / "test", per_class=3, start=50)
    for name in ("cat", "dog"):  # two test images are byte copies of training images
        (data / "test" / name / "copy.png").write_bytes((data / "train" / name / "000.png").read_bytes())
    args = ["train", "--data", str(data), *tiny_args, "--epochs", "1"]
    assert main([*args, "--out", str(tmp_path / "kept")]) == 0
    assert "2 of 11 test images are identical to training images; kept" in capsys.readouterr().out
    kept = json.loads((tmp_path / "kept" / "report.json").read_text())
    assert kept["leakage"]["test"] == {"images": 11, "identical_to_train": 2} and kept["test"]["images"] == 11
    assert main([*args, "--out", str(tmp_path / "deduped"), "--dedupe"]) == 0
    deduped = json.loads((tmp_path / "deduped" / "report.json").read_text())
    assert deduped["leakage"]["test"]["removed"] == 2 and deduped["test"]["images"] == 9


def test_dedupe_that_empties_a_split_is_handled_before_training(tmp_path, tiny_args, capsys):
    from .conftest import write_class_folders

    data = tmp_path / "copies"
    write_class_folders(data / "train", per_class=6)
    for name in ("cat", "dog", "fox"):  # the whole test split is byte copies of training images
        (data / "test" / name).mkdir(parents=True)
        for i in range(2):
            (data / "test" / name / f"t{i}.png").write_bytes((data / "train" / name / f"00{i}.png").read_bytes())
    run = tmp_path / "run"
    assert main(["train", "--data", str(data), *tiny_args, "--epochs", "1", "--dedupe", "--out", str(run)]) == 0
    assert "the final evaluation uses the validation split" in capsys.readouterr().out
    report = json.loads((run / "report.json").read_text())
    assert report["leakage"]["test"]["removed"] == 6 and report["test"]["split"] == "val"
    assert "test" not in report["splits"]

    same = tmp_path / "same"  # every image of a class is the same file, so validation is all copies
    for name in ("cat", "dog", "fox"):
        (same / name).mkdir(parents=True)
        for i in range(6):
            (same / name / f"{i}.png").write_bytes((data / "train" / name / "000.png").read_bytes())
    assert (
        main(["train", "--data", str(same), *tiny_args, "--epochs", "1", "--dedupe", "--out", str(tmp_path / "none")])
        == 2
    )
    assert "--dedupe: all 3 validation images are identical to training images" in capsys.readouterr().err
    assert not (tmp_path / "none" / "last.safetensors").exists()


def test_a_file_that_fails_mid_epoch_in_a_worker_is_named_without_a_traceback(flat_folder, tmp_path, tiny_args, capsys):
    # the header is whole, so only decoding finds the cut: in the file pipeline that happens in a
    # DataLoader worker, mid-epoch, which re-raises with the worker's traceback as the message
    from .test_sources import _add_bad_files

    cut = _add_bad_files(flat_folder)
    for name in ("empty.png", "notes.png"):
        (flat_folder / "dog" / name).unlink()
    assert (
        main(
            [
                "train",
                "--data",
                str(flat_folder),
                *tiny_args,
                "--epochs",
                "1",
                "--in-memory",
                "off",
                "--workers",
                "1",
                "--out",
                str(tmp_path / "run"),
            ]
        )
        == 2
    )  # the last --workers wins
    err = capsys.readouterr().err
    assert f"cannot read image {cut}" in err and "--skip-bad-images" in err
    assert "Traceback" not in err and "worker" not in err


def test_skip_bad_images_trains_on_the_rest_and_counts_them_in_the_report(flat_folder, tmp_path, tiny_args, capsys):
    from .test_sources import _add_bad_files

    _add_bad_files(flat_folder)
    args = ["train", "--data", str(flat_folder), *tiny_args, "--epochs", "1"]
    assert main([*args, "--out", str(tmp_path / "strict")]) == 2
    assert "--skip-bad-images" in capsys.readouterr().err
    assert not (tmp_path / "strict" / "state.safetensors").exists()
    assert main([*args, "--out", str(tmp_path / "run"), "--skip-bad-images"]) == 0
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["skipped_images"]["count"] == 3
    assert sorted(Path(f).name for f in report["skipped_images"]["files"]) == [
        "empty.png",
        "notes.png",
        "truncated.jpg",
    ]
    assert sum(report["splits"].values()) == 30


def test_stem_init_pca_starts_the_stem_from_training_patches(flat_folder, tmp_path, tiny_args, capsys):
    from vitrain.config.files import config_from_dict, load_config_file
    from vitrain.engine.build import build_model
    from vitrain.engine.setup import prepare_run

    run = tmp_path / "run"
    args = ["train", "--data", str(flat_folder), "--out", str(run), *tiny_args, "--epochs", "1", "--stem", "conv"]
    assert main([*args, "--stem-init", "pca"]) == 0
    assert "first convolution from the patches of" in capsys.readouterr().out
    cfg = config_from_dict(load_config_file(run / "config.yaml"))
    assert cfg.stem_init == "pca"
    splits = prepare_run(cfg, resume=True, log=lambda *a: None).splits
    whitened, again = build_model(cfg, None, splits), build_model(cfg, None, splits)
    random = build_model(dataclasses.replace(cfg, stem_init="random"))
    first = [m.patch_embed.first_conv.weight for m in (whitened, again, random)]
    assert torch.equal(first[0], first[1]) and not torch.allclose(first[0], first[2])
    assert torch.equal(whitened.blocks[0].mlp.fc1.weight, random.blocks[0].mlp.fc1.weight)  # the rest as before
    assert main([*args, "--out", str(tmp_path / "b"), "--stem-init", "pca", "--pretrained", str(run)]) == 2
    assert "--stem-init pca is for a model trained from scratch; with --pretrained" in capsys.readouterr().err


def test_stem_width_trains_is_recorded_and_reloads(flat_folder, tmp_path, tiny_args, capsys):
    from vitrain.engine.launch import resolve_config
    from vitrain.models.pretrained import load_pretrained

    run = tmp_path / "run"
    args = ["train", "--data", str(flat_folder), *tiny_args, "--epochs", "1", "--stem", "conv"]
    assert main([*args, "--out", str(run), "--stem-width", "8"]) == 0
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["stem_width"] == 8
    found = load_pretrained(str(run))
    assert found.arch["stem_width"] == 8 and found.arch["stem"] == "conv"
    convs = [m for m in found.model().patch_embed.stem if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [8, 16]  # patch 4: two stride-2 convolutions
    printed = capsys.readouterr()
    assert "patch 4 (conv stem, 8/16 channels), dim" in printed.out + printed.err  # the model line names the widths
    test_accuracy = json.loads((run / "report.json").read_text())["test"]["accuracy"]
    assert main(["eval", str(run)]) == 0  # eval rebuilds the wide stem from the run's own description
    assert f"accuracy {test_accuracy:.4f}" in capsys.readouterr().out
    assert main([*args[:-2], "--out", str(tmp_path / "patch"), "--stem-width", "8"]) == 2
    assert "stem_width 8 needs stem='conv'" in capsys.readouterr().err
    # a recipe's stem width does not stand in the way of a patch stem
    cfg, _ = resolve_config({"recipe": "cifar10-best", "stem": "patch", "data": "digits"}, command="train")
    assert (cfg.stem, cfg.stem_width) == ("patch", None)
    cfg, _ = resolve_config({"recipe": "cifar10-best", "data": "digits"}, command="train")
    assert (cfg.stem, cfg.stem_width) == ("conv", 32)
