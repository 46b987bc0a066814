"""The tables of ``benchmarks/accuracy.py``: a two-stage run (``--pretrain``) shows both stages' work."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _accuracy_module():
    spec = importlib.util.spec_from_file_location("benchmark_accuracy", ROOT / "benchmarks" / "accuracy.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _report(epochs: int, done: int, planned: int, **more) -> dict:
    return {"test": {"accuracy": 0.5, "images": 10}, "val": {"accuracy": 0.4}, "epochs": epochs,
            "time_budget": {"planned_steps": planned, "done_steps": done}, "model": {"parameters": 840_000}, **more}


def test_a_two_stage_run_lists_its_first_stage_beside_the_second(monkeypatch, tmp_path):
    accuracy = _accuracy_module()
    reports = {"folder-best": _report(148, 2360, 2360),
               "folder-bestpretrainlabels": _report(69, 1096, 1096, pretraining=_report(202, 3231, 3300))}
    monkeypatch.setattr(accuracy, "train_report", lambda run, flags: reports[run.name.split("-", 1)[1]])
    rows = [accuracy.run_one("flowers17", "folder-best", 15, tmp_path),
            accuracy.run_one("flowers17", "folder-best", 15, tmp_path, ["--pretrain", "labels"])]
    assert "first_stage" not in rows[0]
    assert rows[1]["first_stage"] == {"epochs": 202, "planned_steps": 3300, "done_steps": 3231, "test_accuracy": 0.5}
    table = accuracy.markdown(rows, 15, ["--only", "flowers17"]).splitlines()
    assert "| 148 | 2360 / 2360 |" in table[5]
    assert "| 202 + 69 | 3231 / 3300 + 1096 / 1096 |" in table[6]
    assert table[-1].startswith("Two-stage runs (`--pretrain`)")
