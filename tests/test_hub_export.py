"""``vitrain export --format hf|timm`` (``vitrain/engine/hub_export.py``): folders that transformers and timm
load as their own models, giving vitrain's answers; models they cannot express are refused."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import vitrain
from vitrain.cli import main

from .conftest import TINY_MODEL, _read_csv


@pytest.fixture(scope="session")
def gray_run(tmp_path_factory):
    """A class-token model on digits (1 channel, 8 px): its test images are 8 px grayscale PNGs."""
    out = tmp_path_factory.mktemp("gray") / "run"
    model = {**TINY_MODEL, "img_size": 8, "patch_size": 2, "pool": "cls"}
    args = ["train", "--out", str(out), "--epochs", "2", "--no-progress", "--compile", "off"]
    for key, value in model.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    assert main(args) == 0
    return out


def _examples(run, count=6):
    rows = _read_csv(run / "examples" / "index.csv")[:count]
    return [run / "examples" / r["file"] for r in rows]


def test_hf_pipeline_gives_vitrains_top1_and_probabilities(gray_run, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from transformers import ViTForImageClassification, pipeline

    out = tmp_path / "hf"
    assert main(["export", str(gray_run), "--format", "hf", "--out", str(out), "--license", "mit"]) == 0
    assert "loaded back with transformers" in capsys.readouterr().out
    assert {p.name for p in out.iterdir()} == {
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
        "README.md",
    }
    config = json.loads((out / "config.json").read_text())
    assert config["id2label"] == {str(i): str(i) for i in range(10)}
    assert isinstance(ViTForImageClassification.from_pretrained(out), ViTForImageClassification)
    assert "license: mit" in (out / "README.md").read_text()

    images = _examples(gray_run)
    ours = vitrain.predict(gray_run, [str(p) for p in images], top_k=10, out=tmp_path / "pred")
    rows = _read_csv(gray_run / "examples" / "index.csv")[: len(images)]  # digits' images, saved as PNGs
    assert [p.label for p in ours.predictions] == [r["predicted_label"] for r in rows]
    classify = pipeline("image-classification", model=str(out), top_k=10)
    for prediction in ours.predictions:
        theirs = classify(str(prediction.path))
        assert theirs[0]["label"] == prediction.label
        got = {t["label"]: t["score"] for t in theirs}
        for label, probability in prediction.top:
            assert abs(got[label] - probability) < 1e-5


def test_rgb_model_in_transformers_and_timm_with_equal_logits(trained, tmp_path, monkeypatch):
    """The trained fixture: RGB 20 px images, resized to the 16 px model, as both libraries do."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import timm
    from transformers import pipeline

    run, data = trained
    model = vitrain.load_model(run)
    assert main(["export", str(run), "--format", "timm", "--out", str(tmp_path / "timm")]) == 0
    config = json.loads((tmp_path / "timm" / "config.json").read_text())
    assert config["label_names"] == ["cat", "dog", "fox"]
    loaded = timm.create_model(
        config["architecture"],
        pretrained=True,
        pretrained_cfg_overlay=dict(file=str(tmp_path / "timm" / "model.safetensors"), **config["pretrained_cfg"]),
        **config["model_args"],
    ).eval()
    batch = torch.randn(4, 3, 16, 16)
    with torch.inference_mode():
        assert torch.allclose(loaded(batch), model(batch), atol=1e-5)
        local = timm.create_model(f"local-dir:{tmp_path / 'timm'}", pretrained=True).eval()
        assert torch.allclose(local(batch), model(batch), atol=1e-5)
    assert local.pretrained_cfg["label_names"] == ["cat", "dog", "fox"]

    assert main(["export", str(run), "--format", "hf", "--out", str(tmp_path / "hf")]) == 0
    files = sorted((data / "cat").glob("*.png"))[:3]
    ours = vitrain.predict(run, [str(p) for p in files], top_k=3, out=tmp_path / "pred")
    classify = pipeline("image-classification", model=str(tmp_path / "hf"), top_k=3)
    for prediction in ours.predictions:
        theirs = classify(str(prediction.path))
        assert [t["label"] for t in theirs] == [label for label, _ in prediction.top]
        assert np.allclose([t["score"] for t in theirs], [p for _, p in prediction.top], atol=1e-5)


def test_a_model_the_library_cannot_express_is_refused_naming_onnx(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--out", str(out), "--epochs", "1", "--no-progress", "--compile", "off"]
    model = {**TINY_MODEL, "img_size": 8, "patch_size": 2, "pool": "avg"}
    for key, value in model.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    assert main(args + ["--stem", "conv"]) == 0
    capsys.readouterr()
    for fmt in ("hf", "timm"):
        assert main(["export", str(out), "--format", fmt]) == 2
        err = capsys.readouterr().err
        assert "cannot express this model" in err and "convolutional stem" in err and "--format onnx" in err
        assert not (out / f"export-{fmt}").exists()  # no half-written folder


def test_average_pooling_goes_to_timm_but_not_transformers(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--out", str(out), "--epochs", "1", "--no-progress", "--compile", "off"]
    for key, value in {**TINY_MODEL, "img_size": 8, "patch_size": 2, "pool": "avg"}.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    assert main(args) == 0
    assert main(["export", str(out), "--format", "timm"]) == 0
    assert (out / "export-timm" / "model.safetensors").is_file()
    capsys.readouterr()
    assert main(["export", str(out), "--format", "hf"]) == 2
    assert "average pooling" in capsys.readouterr().err


def test_export_never_replaces_a_folder_holding_other_files(trained, tmp_path, capsys, monkeypatch):
    run, _ = trained
    target = tmp_path / "mine"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    assert main(["export", str(run), "--format", "timm", "--out", str(target)]) == 2
    assert "notes.txt" in capsys.readouterr().err
    assert (target / "notes.txt").read_text() == "keep me"
    theirs = tmp_path / "their-model"  # a model folder of another tool: an export's names, not vitrain's
    theirs.mkdir()
    (theirs / "README.md").write_text("my model")
    (theirs / "config.json").write_text('{"model_type": "vit"}')
    assert main(["export", str(run), "--format", "hf", "--out", str(theirs)]) == 2
    assert "an export of another tool" in capsys.readouterr().err
    assert (theirs / "README.md").read_text() == "my model"
    monkeypatch.chdir(tmp_path)
    for here in (".", "..", str(tmp_path)):
        assert main(["export", str(run), "--format", "timm", "--out", here]) == 2
        assert "give a folder of its own" in capsys.readouterr().err
    # an earlier export in the same place is replaced
    again = tmp_path / "again"
    assert main(["export", str(run), "--format", "timm", "--out", str(again)]) == 0
    assert main(["export", str(run), "--format", "timm", "--out", str(again)]) == 0
    assert not list(tmp_path.glob(".*.tmp"))
