"""The Python API (``vitrain.train``, ``evaluate``, ``predict``, ``load_model``): the CLI's defaults and errors."""

from __future__ import annotations

import csv
import json

import pytest
import torch

import vitrain
from vitrain.cli import main
from vitrain.config import ConfigError
from vitrain.data.sources import DataError

from .conftest import TINY_RUN

TINY = {**TINY_RUN, "progress": False}


def test_train_returns_the_run_folder_its_report_and_its_model(flat_folder, tmp_path):
    run = vitrain.train(flat_folder, out=tmp_path / "run", **TINY)
    assert run.path == tmp_path / "run"
    assert run.report == json.loads((run.path / "report.json").read_text())
    assert run.report["epochs"] == 2 and run.report["classes"] == ["cat", "dog", "fox"]
    assert run.model.meta["classes"] == ["cat", "dog", "fox"] and not run.model.training
    assert run.model(torch.zeros(1, 3, 16, 16)).shape == (1, 3)
    assert run.report["command"].startswith(f"vitrain.train(data=PosixPath('{flat_folder}'), out=PosixPath(")


def test_train_gives_the_same_numbers_as_the_command_line(flat_folder, tmp_path, tiny_args):
    assert main(["train", "--data", str(flat_folder), "--out", str(tmp_path / "cli"), *tiny_args]) == 0
    run = vitrain.train(str(flat_folder), out=str(tmp_path / "api"), **TINY)
    cli = json.loads((tmp_path / "cli" / "report.json").read_text())
    assert cli["command"] == "vitrain train --data " + str(flat_folder) + " --out " + str(tmp_path / "cli") + (
        " " + " ".join(tiny_args)
    )
    assert run.report["test"]["accuracy"] == cli["test"]["accuracy"]
    assert run.report["val"] == cli["val"] and run.report["test"]["confusion_matrix"] == cli["test"]["confusion_matrix"]


def test_train_raises_the_command_lines_errors_by_option_name(flat_folder, tmp_path):
    with pytest.raises(ConfigError, match="unknown option"):
        vitrain.train(flat_folder, out=tmp_path / "a", epoch=3)  # a typo
    with pytest.raises(ConfigError, match="--lr must be positive"):
        vitrain.train(flat_folder, out=tmp_path / "b", **{**TINY, "lr": -1.0})
    with pytest.raises(ConfigError, match="--views only apply to pretraining"):
        vitrain.train(flat_folder, out=tmp_path / "c", views=3, **TINY)
    with pytest.raises(DataError, match="no such file or folder"):
        vitrain.train(tmp_path / "missing", out=tmp_path / "d", **TINY)
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()


def test_train_takes_a_recipe_and_a_config_file_under_the_options_given(flat_folder, tmp_path):
    config = tmp_path / "exp.yaml"
    config.write_text("epochs: 1\nlr: 0.002\n")
    run = vitrain.train(flat_folder, recipe="folder-best", config=config, out=tmp_path / "run", **TINY)
    saved = (run.path / "config.yaml").read_text()
    assert "recipe: folder-best" in saved and "lr: 0.002" in saved  # the file over the recipe
    assert run.report["epochs"] == 2  # the options over the file
    assert "stem: conv" in saved  # the recipe's own settings underneath


def test_resume_continues_a_run(flat_folder, tmp_path):
    run = vitrain.train(flat_folder, out=tmp_path / "run", **TINY)
    with pytest.raises(ConfigError, match="cannot change: --epochs"):
        vitrain.train(resume=run.path, epochs=5)
    again = vitrain.train(resume=run.path, progress=False)
    assert again.report["epochs"] == 2 and again.path == run.path


def test_evaluate_and_predict_match_the_tools(flat_folder, tmp_path, tiny_args):
    run = vitrain.train(flat_folder, out=tmp_path / "run", **TINY)
    report = vitrain.evaluate(run.path, flat_folder, split="all", out=tmp_path / "eval")
    assert report == json.loads((tmp_path / "eval" / "report.json").read_text())
    assert report["images"] == 30 and set(report["per_class"]) == {"cat", "dog", "fox"}

    result = vitrain.predict(run.path, flat_folder / "cat", top_k=2, out=tmp_path / "pred", annotate=True)
    assert len(result.predictions) == 10 and all(p.true_label == "cat" for p in result.predictions)
    rows = list(csv.DictReader((tmp_path / "pred" / "predictions.csv").open()))
    assert [r["label"] for r in rows] == [p.label for p in result.predictions]
    assert len(list((tmp_path / "pred" / "annotated").rglob("*.png"))) == 10
    assert (
        main(["predict", str(run.path), str(flat_folder / "cat"), "--top-k", "2", "--out", str(tmp_path / "cli")]) == 0
    )
    assert (tmp_path / "cli" / "predictions.csv").read_text() == (tmp_path / "pred" / "predictions.csv").read_text()

    with pytest.raises(ConfigError, match="--top-k must be at least 1"):
        vitrain.predict(run.path, flat_folder, top_k=0)
    with pytest.raises(ConfigError, match="give out=FOLDER"):
        vitrain.predict(run.path, flat_folder, annotate=True)


def test_load_model_takes_every_source_that_pretrained_takes(tmp_path):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    source = timm.models.vision_transformer.VisionTransformer(
        img_size=32, patch_size=8, embed_dim=128, depth=2, num_heads=2, num_classes=5
    ).eval()
    torch.save(source.state_dict(), tmp_path / "deit_tiny_patch16_224.pth")  # a timm state dict, as users save it
    model = vitrain.load_model(tmp_path / "deit_tiny_patch16_224.pth")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert float((model(x) - source(x)).abs().max()) < 1e-4  # its own head kept
    assert model.meta["classes"] is None and model.meta["layout"] == "timm" and len(model.meta["mean"]) == 3
    with pytest.raises(ValueError, match="missing.pth"):
        vitrain.load_model(tmp_path / "missing.pth")
