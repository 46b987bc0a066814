"""The resumable state (vitrain/engine/state.py): runs written by earlier versions keep resuming."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file

from vitrain.cli import main
from vitrain.engine.evaluate import EvalResult
from vitrain.engine.state import Progress, new_best, update_best

FIXTURE = Path(__file__).parent / "fixtures" / "resume-run"  # written by tests/fixtures/make_resume_run.py


def _rows(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv") as f:
        return list(csv.DictReader(f))


def test_a_run_folder_written_by_an_earlier_version_resumes_to_an_uninterrupted_runs_weights(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(FIXTURE, run)
    before = _rows(run)
    assert len(before) == 2  # stopped after epoch 2 of 3

    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    report = json.loads((run / "report.json").read_text())
    assert report["epochs"] == 3
    after = _rows(run)
    assert after[:2] == before and len(after) == 3

    full = tmp_path / "full"  # the same settings, never stopped, with today's code
    assert main(["train", "--config", str(FIXTURE / "config.yaml"), "--out", str(full), "--no-progress"]) == 0
    resumed, uninterrupted = load_file(run / "last.safetensors"), load_file(full / "last.safetensors")
    assert resumed.keys() == uninterrupted.keys()
    for name, tensor in resumed.items():  # epochs 1-2 ran where the fixture was made: allow for another CPU
        torch.testing.assert_close(tensor, uninterrupted[name], atol=1e-4, rtol=1e-3)


def test_progress_round_trips_through_the_state_entries():
    progress = Progress(epoch=3, step=60, history=[{"epoch": 1}], budget={"minutes": 1.0}, train_seconds=2.5)
    progress.best = new_best(higher_is_better=True)
    again = Progress.from_state(progress.to_state())
    assert again == progress


def test_best_follows_the_chosen_metric():
    import numpy as np

    def result(accuracy: float, loss: float) -> EvalResult:
        right = int(accuracy * 10)
        return EvalResult(loss=loss, accuracy=accuracy, top5=None, targets=np.zeros(10, int),
                          predictions=np.array([0] * right + [1] * (10 - right)))  # fmt: skip

    by_loss = Progress(best=new_best(higher_is_better=False))
    assert update_best(by_loss, "loss", result(0.5, 1.0), 1)
    assert not update_best(by_loss, "loss", result(0.9, 1.5), 2)  # more accurate, but a higher loss
    assert by_loss.best["epoch"] == 1
    by_accuracy = Progress(best=new_best(higher_is_better=True))
    assert update_best(by_accuracy, "accuracy", result(0.5, 1.0), 1)
    assert update_best(by_accuracy, "accuracy", result(0.9, 1.5), 2)
    assert by_accuracy.best["epoch"] == 2 and by_accuracy.best["val_accuracy"] == 0.9
