"""``vitrain predict`` (``vitrain/engine/predict.py``): inputs, probabilities, the training-data note,
annotated copies and attention maps."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import vitrain
from vitrain.cli import main
from vitrain.data.images import read_image
from vitrain.data.transforms import eval_transform_for

from .conftest import _read_csv


def test_predict_files_folders_and_globs_with_annotations(trained, tmp_path, capsys):
    run, data = trained
    loose = tmp_path / "loose"
    loose.mkdir()
    shutil.copy(data / "dog" / "000.png", loose / "unknown-animal.png")
    broken = loose / "broken.jpg"
    broken.write_bytes(b"not an image")
    out = tmp_path / "pred"
    code = main(
        [
            "predict",
            str(run),
            str(data / "cat"),
            str(data / "fox" / "00*.png"),
            str(loose / "unknown-animal.png"),
            str(broken),
            str(tmp_path / "missing.png"),
            "--out",
            str(out),
            "--top-k",
            "2",
            "--annotate",
        ]
    )
    assert code == 1  # some inputs failed
    captured = capsys.readouterr()
    assert "broken.jpg" in captured.err and "missing.png: no such file" in captured.err
    assert "accuracy" in captured.out
    rows = _read_csv(out / "predictions.csv")
    assert len(rows) == 10 + 10 + 1
    assert list(rows[0])[:7] == [
        "path",
        "label",
        "probability",
        "top1_label",
        "top1_probability",
        "top2_label",
        "top2_probability",
    ]
    assert all(
        r["label"] == r["top1_label"] and float(r["top1_probability"]) >= float(r["top2_probability"]) for r in rows
    )
    cats = [r for r in rows if "/cat/" in r["path"]]
    assert all(r["true_label"] == "cat" and r["correct"] == str(r["label"] == "cat").lower() for r in cats)
    loose_row = next(r for r in rows if "unknown-animal" in r["path"])
    assert loose_row["true_label"] == "" and loose_row["correct"] == ""
    annotated = sorted(p.relative_to(out / "annotated") for p in (out / "annotated").rglob("*.png"))
    # outputs mirror the inputs' paths below their common folder, so same-named files never collide
    assert len(annotated) == 21 and any(p.as_posix().endswith("pets/cat/000.png") for p in annotated)


def test_predict_says_when_its_accuracy_is_on_the_training_data(trained, tmp_path, capsys):
    run, data = trained
    assert main(["predict", str(run), str(data), "--out", str(tmp_path / "p1")]) == 0
    assert (
        f"note: 30 of them lie in {data.resolve()}, the data this checkpoint was trained on, outside any test "
        "or validation folder: it may have trained on them, so this is not a held-out accuracy "
        f"(vitrain eval {run} scores the run's test split)"
    ) in capsys.readouterr().out
    copy = shutil.copytree(data, tmp_path / "new-pets")
    assert main(["predict", str(run), str(copy), "--out", str(tmp_path / "p2")]) == 0
    assert "accuracy" in (out := capsys.readouterr().out) and "trained on" not in out


def test_images_under_a_held_out_split_folder_are_not_counted_as_training_data(tmp_path):
    from vitrain.engine.predict import in_training_data

    paths = [
        tmp_path / "Training" / "cat" / "1.png",
        tmp_path / "Testing" / "cat" / "2.png",
        tmp_path / "valid" / "dog" / "3.png",
        tmp_path / "elsewhere.png",
    ]
    (tmp_path / "Training").mkdir()  # only the training folder must exist
    assert in_training_data(paths, {"data": str(tmp_path)}) == (tmp_path.resolve(), 2)
    assert in_training_data(paths, {"data": str(tmp_path / "Training")}) == ((tmp_path / "Training").resolve(), 1)
    assert in_training_data(paths[1:3], {"data": str(tmp_path)}) is None
    assert in_training_data(paths, {"data": "digits"}) is None


def test_predicted_probability_is_the_models_softmax(trained, tmp_path):
    run, data = trained
    image = data / "dog" / "003.png"
    assert main(["predict", str(run), str(image), "--out", str(tmp_path / "p")]) == 0
    row = _read_csv(tmp_path / "p" / "predictions.csv")[0]
    model = vitrain.load_model(run)
    with torch.inference_mode():
        probs = model(eval_transform_for(model.meta, 16)(read_image(image, 3))[None]).softmax(1)[0]
    best = int(probs.argmax())
    assert row["label"] == model.meta["classes"][best]
    assert float(row["probability"]) == pytest.approx(float(probs[best]), abs=1e-6)


def test_annotated_copy_marks_right_and_wrong(trained, tmp_path):
    run, data = trained
    assert main(["predict", str(run), str(data), "--out", str(tmp_path / "p"), "--annotate"]) == 0
    rows = _read_csv(tmp_path / "p" / "predictions.csv")
    for row in rows[:6]:
        rel = Path(row["path"]).relative_to(data).with_suffix(".png")
        with Image.open(tmp_path / "p" / "annotated" / rel) as img:
            corner = img.convert("RGB").getpixel((img.width - 1, img.height - 1))  # the border
        assert corner == ((30, 160, 60) if row["correct"] == "true" else (210, 40, 40))
        assert min(img.size) >= 224  # small images are enlarged so the text is readable


def test_attention_maps_are_saved_as_overlay_and_array(trained, tmp_path):
    run, data = trained
    assert main(["predict", str(run), str(data / "cat" / "001.png"), "--out", str(tmp_path / "p"), "--attention"]) == 0
    raw = np.load(tmp_path / "p" / "attention" / "001.npy")
    assert raw.shape == (4, 4) and np.all(raw >= 0)  # 16 px / 4 px patches
    with Image.open(tmp_path / "p" / "attention" / "001.png") as img:
        assert img.mode == "RGB"


@pytest.mark.parametrize("true_label", ["bluebell", "a flower with a very long class name indeed"])
def test_annotation_text_fits_inside_a_portrait_image(tmp_path, true_label):
    from vitrain.engine.predict import Prediction, annotate

    Image.new("RGB", (500, 700), "white").save(tmp_path / "tall.png")
    annotate(Prediction(tmp_path / "tall.png", [("crocus", 0.19)], true_label), tmp_path / "out.png")
    with Image.open(tmp_path / "out.png") as img:
        pixels = np.asarray(img.convert("RGB"))
    border = 500 // 40
    assert (pixels[:, -border:] == (210, 40, 40)).all()  # the "wrong" border
    inside = pixels[border:150, border:-border]
    assert (inside == (210, 40, 40)).all(-1).sum() > 1000  # the label's banner...
    assert (inside[:, -1] == 255).all()  # ...ends before the border: the text fits


def test_run_folder_examples_are_test_images_with_the_reports_answers(trained, tmp_path):
    """examples/: 2 test images per class and the misclassified ones, whose files give the same answer again."""
    import json

    run, _ = trained
    rows = _read_csv(run / "examples" / "index.csv")
    report = json.loads((run / "report.json").read_text())
    matrix = np.array(report["test"]["confusion_matrix"])
    wrong = int(matrix.sum() - np.trace(matrix))
    assert wrong <= 48 and sum(r["correct"] == "false" for r in rows) == wrong  # every one, up to 48
    for c in report["classes"]:
        assert sum(r["true_label"] == c for r in rows) >= min(2, int(matrix[report["classes"].index(c)].sum()))
    assert all(r["split"] == "test" for r in rows)
    result = vitrain.predict(run, [str(run / "examples" / r["file"]) for r in rows], top_k=1, out=tmp_path)
    assert [p.label for p in result.predictions] == [r["predicted_label"] for r in rows]
    assert [p.path.suffix for p in result.predictions] == [".png"] * len(rows)  # the files' own bytes


def test_examples_pick_per_class_then_mistakes_and_keep_the_files_bytes(tmp_path):
    import filecmp

    from vitrain.data.datasets import FileImageDataset
    from vitrain.engine.final import pick_examples, write_examples

    targets = [0] * 5 + [1] * 5 + [2] * 100
    predictions = [0, 1, 0, 0, 0] + [1] * 5 + [0] * 100  # one mistake in class 0, every class-2 image wrong
    picked = pick_examples(targets, predictions, 3)
    assert picked[:4] == [0, 1, 5, 6] and len(picked) == 2 * 3 + 48  # 1 is both a first and a mistake
    paths = []
    for i in range(4):
        Image.new("RGB", (30, 20), (i * 60, 0, 0)).save(tmp_path / f"{i}.jpg", quality=70)
        paths.append(tmp_path / f"{i}.jpg")
    dataset = FileImageDataset(paths, [0, 0, 1, 1], 3)
    (tmp_path / "run").mkdir()
    folder = write_examples(dataset, "test", [0, 0, 1, 1], [0, 1, 1, 1], ["a", "b"], tmp_path / "run")
    rows = _read_csv(folder / "index.csv")
    assert [r["file"] for r in rows] == ["test-00000.jpg", "test-00001.jpg", "test-00002.jpg", "test-00003.jpg"]
    assert [r["correct"] for r in rows] == ["true", "false", "true", "true"]
    assert all(filecmp.cmp(paths[i], folder / rows[i]["file"], shallow=False) for i in range(4))
    (folder / "stale.png").write_bytes(b"old")  # a second write replaces the folder whole
    write_examples(dataset, "val", [0, 0, 1, 1], [0, 0, 1, 1], ["a", "b"], tmp_path / "run")
    assert not (folder / "stale.png").exists() and not list((tmp_path / "run").glob(".*.tmp"))
