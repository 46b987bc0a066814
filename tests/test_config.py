"""The training configuration (``vitrain/config.py``): ``--config`` YAML files, flags over them, and their errors."""

from __future__ import annotations

import yaml

from vitrain.cli import main

from .conftest import _metrics, _without_timing


def test_config_file_holds_flags_and_flags_win(flat_folder, tmp_path, tiny_args):
    config = tmp_path / "exp.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "data": str(flat_folder),
                "epochs": 1,
                "lr": 0.002,
                "label-smoothing": 0.2,
                "classes": ["cat", "fox"],
                "schedule": "step",
                "betas": [0.9, 0.95],
            }
        )
    )
    run = tmp_path / "run"
    assert main(["train", "--config", str(config), "--out", str(run), *tiny_args, "--epochs", "2"]) == 0
    saved = yaml.safe_load((run / "config.yaml").read_text())["train"]
    assert saved["epochs"] == 2 and saved["lr"] == 0.002 and saved["label_smoothing"] == 0.2
    assert saved["classes"] == ["cat", "fox"] and saved["betas"] == [0.9, 0.95]
    # a saved config.yaml is itself a valid --config
    again = tmp_path / "again"
    assert main(["train", "--config", str(run / "config.yaml"), "--out", str(again), "--no-progress"]) == 0
    assert _without_timing(_metrics(run)) == _without_timing(_metrics(again))


def test_bad_config_file_is_named(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: [1, 2\n")
    assert main(["train", "--config", str(bad)]) == 2
    assert "not valid YAML" in capsys.readouterr().err
    bad.write_text("epochz: 3\n")
    assert main(["train", "--config", str(bad)]) == 2
    assert f"--config {bad}: unknown option(s): epochz" in capsys.readouterr().err
    bad.write_text("epochs: two\n")
    assert main(["train", "--config", str(bad)]) == 2
    assert f"--config {bad}: epochs: expected int, got 'two'" in capsys.readouterr().err
