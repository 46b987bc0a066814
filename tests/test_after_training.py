"""``vitrain eval``, ``predict`` and ``export`` on a tiny trained run, from the checkpoint alone."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import vitrain
from vitrain.checkpoint import save_model
from vitrain.cli import main
from vitrain.data.images import read_image
from vitrain.data.transforms import eval_transform_for

from .conftest import TINY_MODEL, write_class_folders


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """(run folder, data folder): a tiny model trained a few epochs on 3 classes."""
    root = tmp_path_factory.mktemp("after")
    data = write_class_folders(root / "pets", per_class=10)
    args = [
        "train",
        "--data",
        str(data),
        "--out",
        str(root / "run"),
        "--epochs",
        "4",
        "--batch-size",
        "8",
        "--lr",
        "3e-3",
        "--no-progress",
        "--workers",
        "0",
    ]
    for key, value in TINY_MODEL.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    assert main(args) == 0
    return root / "run", data


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_samples_png_is_in_the_run_folder(trained):
    run, _ = trained
    with Image.open(run / "samples.png") as img:
        assert img.width > 100 and img.height > 100


def test_eval_on_a_flat_folder_uses_every_image(trained, tmp_path):
    run, data = trained
    other = shutil.copytree(data, tmp_path / "new-pets")  # not the folder the run trained on
    assert main(["eval", str(run), "--data", str(other), "--out", str(tmp_path / "ev")]) == 0
    report = json.loads((tmp_path / "ev" / "report.json").read_text())
    assert report["split"] == "all images" and report["images"] == 30
    assert set(report["per_class"]) == {"cat", "dog", "fox"}
    assert all(set(v) == {"precision", "recall", "f1", "support"} for v in report["per_class"].values())
    matrix = np.array(report["confusion_matrix"])
    assert matrix.sum() == 30 and report["accuracy"] == pytest.approx(np.trace(matrix) / 30)
    assert report["top5"] is None and report["loss"] > 0
    for name in ("confusion_matrix.png", "confusion_matrix_normalized.png"):
        assert (tmp_path / "ev" / name).is_file()


def test_eval_on_the_training_folder_scores_only_the_runs_test_split(trained, tmp_path, capsys):
    # the run trained on 24 of these 30 images: by default they are not scored, --split all scores them
    run, data = trained
    assert main(["eval", str(run), "--data", str(data), "--out", str(tmp_path / "ev")]) == 0
    assert (
        f"--data {data} is the data this checkpoint was trained on: evaluating the run's test split, "
        "not the images it trained on (--split all scores every image)"
    ) in capsys.readouterr().out
    report = json.loads((tmp_path / "ev" / "report.json").read_text())
    training = json.loads((run / "report.json").read_text())
    assert report["split"] == "test" and report["images"] == training["test"]["images"] == 3
    assert report["confusion_matrix"] == training["test"]["confusion_matrix"]
    assert main(["eval", str(run), "--data", str(data), "--split", "all", "--out", str(tmp_path / "all")]) == 0
    assert "was trained on" not in capsys.readouterr().out
    report = json.loads((tmp_path / "all" / "report.json").read_text())
    assert report["split"] == "all images" and report["images"] == 30
    # a folder of the same name elsewhere (the run moved, or new images): the same default, said differently
    moved = shutil.copytree(data, tmp_path / "elsewhere" / data.name)
    assert main(["eval", str(run), "--data", str(moved), "--out", str(tmp_path / "moved")]) == 0
    assert (
        f"--data {moved} has the name of the data this checkpoint was trained on ({data}): evaluating the test "
        "split carved as in training, not the images it would have trained on; if these are new images, "
        "--split all scores every one"
    ) in capsys.readouterr().out
    assert json.loads((tmp_path / "moved" / "report.json").read_text())["images"] == 3


def test_eval_split_all_needs_a_folder_without_split_folders(trained, split_folder, tmp_path, capsys):
    run, _ = trained
    for data in (str(split_folder), "digits"):
        assert main(["eval", str(run), "--data", data, "--split", "all", "--out", str(tmp_path / "ev")]) == 2
        assert (
            f"--split all means every image of a folder without split folders, and --data {data} has split "
            "folders or is a built-in set: give --split train, val or test"
        ) in capsys.readouterr().err


def test_eval_split_matches_the_training_report(trained, tmp_path):
    run, data = trained
    assert main(["eval", str(run), "--data", str(data), "--split", "test", "--out", str(tmp_path / "ev")]) == 0
    report = json.loads((tmp_path / "ev" / "report.json").read_text())
    training = json.loads((run / "report.json").read_text())
    assert report["images"] == training["test"]["images"] == 3
    assert report["accuracy"] == training["test"]["accuracy"]
    assert report["confusion_matrix"] == training["test"]["confusion_matrix"]


def test_eval_matches_classes_by_name_for_a_reordered_subset(trained, tmp_path):
    run, data = trained
    subset = tmp_path / "subset"
    for name, new in (("fox", "fox"), ("cat", "cat")):  # copied in an order that sorts differently
        shutil.copytree(data / name, subset / new)
    assert main(["eval", str(run), "--data", str(subset), "--out", str(tmp_path / "ev")]) == 0
    report = json.loads((tmp_path / "ev" / "report.json").read_text())
    assert report["images"] == 20 and set(report["per_class"]) == {"cat", "fox"}
    matrix = np.array(report["confusion_matrix"])
    assert matrix[1].sum() == 0  # no dog images: the dog row is empty, columns still cover all classes
    model = vitrain.load_model(run)
    tf = eval_transform_for(model.meta, 16)
    fox = torch.stack([tf(read_image(p, 3)) for p in sorted((subset / "fox").iterdir())])
    with torch.inference_mode():
        predicted_fox = (model(fox).argmax(1) == 2).sum().item()
    assert matrix[2, 2] == predicted_fox


def test_eval_refuses_unknown_classes_listing_them(trained, tmp_path, capsys):
    run, data = trained
    other = write_class_folders(
        tmp_path / "zoo", per_class=2, classes={"cat": (1, 2, 3), "emu": (9, 9, 9), "yak": (5, 5, 5)}
    )
    assert main(["eval", str(run), "--data", str(other), "--out", str(tmp_path / "ev")]) == 2
    err = capsys.readouterr().err
    assert "classes the checkpoint does not know: emu, yak" in err and "checkpoint classes: cat, dog, fox" in err


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


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_has_dynamic_batch_metadata_and_parity(trained, tmp_path, fmt, capsys):
    run, _ = trained
    out = tmp_path / f"model.{fmt}"
    assert main(["export", str(run), "--format", fmt, "--out", str(out)]) == 0
    assert "max abs diff" in capsys.readouterr().out
    model = vitrain.load_model(run)
    batch = torch.randn(5, 3, 16, 16)
    with torch.inference_mode():
        expected = model(batch).numpy()
    if fmt == "onnx":
        onnx = pytest.importorskip("onnx")
        ort = pytest.importorskip("onnxruntime")
        meta = json.loads({p.key: p.value for p in onnx.load(str(out)).metadata_props}["vitrain"])
        got = ort.InferenceSession(str(out)).run(None, {"images": batch.numpy()})[0]
    else:
        extra = {"vitrain.json": ""}
        loaded = torch.jit.load(str(out), _extra_files=extra)
        meta = json.loads(extra["vitrain.json"])
        got = loaded(batch).detach().numpy()
    assert np.abs(got - expected).max() < 1e-4
    assert meta["classes"] == ["cat", "dog", "fox"] and meta["mean"] == model.meta["mean"]
    assert "center-crop 16x16" in meta["steps"] and "img.draft(None, (17, 17))" in meta["steps"][0]


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


@pytest.mark.parametrize("in_memory", ["on", "off"])
def test_eval_and_predict_reproduce_the_test_score_on_big_jpegs(in_memory, tmp_path):
    """Big JPEGs decode at reduced size (PIL's draft mode); eval and predict must decode them
    exactly as training's evaluation did, or the same checkpoint scores differently."""
    from .conftest import CLASS_COLORS, make_image

    data = tmp_path / "photos"
    for c, (name, color) in enumerate(CLASS_COLORS.items()):
        (data / name).mkdir(parents=True)
        for i in range(10):
            make_image(color, seed=c * 1000 + i, size=320).save(data / name / f"{i:03d}.jpg", quality=90)
    run = tmp_path / "run"
    split = ["--test-fraction", "0.2", "--val-fraction", "0.2"]
    args = [
        "train",
        "--data",
        str(data),
        "--out",
        str(run),
        "--epochs",
        "3",
        "--batch-size",
        "8",
        "--lr",
        "3e-3",
        "--no-progress",
        "--workers",
        "0",
        "--in-memory",
        in_memory,
        *split,
    ]
    for key, value in TINY_MODEL.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    assert main(args) == 0
    training = json.loads((run / "report.json").read_text())["test"]

    # no split flags: the checkpoint says how the run carved its test set; without --data
    # (one case each), its training data and test split are the default
    which = ["--data", str(data), "--split", "test"] if in_memory == "off" else []
    assert main(["eval", str(run), *which, "--out", str(tmp_path / "ev")]) == 0
    report = json.loads((tmp_path / "ev" / "report.json").read_text())
    assert report["split_options"] == {"val_fraction": 0.2, "test_fraction": 0.2, "split_seed": 0}
    assert report["images"] == training["images"] == 6
    assert report["loss"] == pytest.approx(training["loss"], rel=1e-5)
    assert report["confusion_matrix"] == training["confusion_matrix"]

    from vitrain.data.sources import load_data

    test_files = [str(p) for p in load_data(str(data), val_fraction=0.2, test_fraction=0.2).test.paths]
    assert main(["predict", str(run), *test_files, "--top-k", "3", "--out", str(tmp_path / "p")]) == 0
    rows = _read_csv(tmp_path / "p" / "predictions.csv")
    assert len(rows) == 6
    assert sum(r["correct"] == "true" for r in rows) / 6 == pytest.approx(training["accuracy"])
    true_probability = [
        float(next(r[f"top{i}_probability"] for i in (1, 2, 3) if r[f"top{i}_label"] == r["true_label"])) for r in rows
    ]
    assert -np.log(true_probability).mean() == pytest.approx(training["loss"], rel=1e-4)


def test_eval_without_data_needs_the_training_data_where_the_checkpoint_says(trained, tmp_path, capsys):
    run, data = trained
    assert main(["eval", str(run), "--out", str(tmp_path / "ev")]) == 0
    assert f"data: {data}, the checkpoint's training data" in capsys.readouterr().out
    report = json.loads((tmp_path / "ev" / "report.json").read_text())
    training = json.loads((run / "report.json").read_text())["test"]
    assert report["split"] == "test" and report["images"] == training["images"] == 3  # not all 30 images
    assert report["confusion_matrix"] == training["confusion_matrix"]
    model = vitrain.load_model(run)
    save_model(tmp_path / "moved.safetensors", model, data=str(tmp_path / "gone"))
    assert main(["eval", str(tmp_path / "moved.safetensors")]) == 2
    err = capsys.readouterr().err
    assert f"trained on --data {tmp_path / 'gone'}, which is not found" in err and "give --data" in err


def test_eval_split_options_come_from_the_run_unless_given_or_the_data_differs():
    from vitrain.engine.evaluate import SPLIT_DEFAULTS, split_options

    run = {"val_fraction": 0.15, "test_fraction": 0.1, "split_seed": 3}
    meta = {"data": "~/data/flowers17.tar", "split": run}
    nothing = dict.fromkeys(SPLIT_DEFAULTS)
    assert split_options(meta, "/elsewhere/flowers17.tar", nothing) == (run, True)
    assert split_options(meta, "~/data/flowers17.tar", {**nothing, "split_seed": 1}) == ({**run, "split_seed": 1}, True)
    assert split_options(meta, "~/data/flowers17.tar", {**run, "val_fraction": 0.2}) == (
        {**run, "val_fraction": 0.2},
        False,
    )
    assert split_options(meta, "~/data/butterflies", nothing) == (SPLIT_DEFAULTS, False)
    assert split_options({"data": "digits"}, "digits", nothing) == (
        SPLIT_DEFAULTS,
        False,
    )  # older checkpoints have no "split"


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


def test_eval_of_a_run_trained_on_some_classes_uses_its_classes_and_test_split(tmp_path, capsys):
    data = write_class_folders(tmp_path / "pets", per_class=10)
    run = tmp_path / "run"
    args = [
        "train",
        "--data",
        str(data),
        "--classes",
        "fox,cat",
        "--test-fraction",
        "0.2",
        "--out",
        str(run),
        "--epochs",
        "2",
        "--batch-size",
        "8",
        "--no-progress",
        "--workers",
        "0",
    ]
    for key, value in TINY_MODEL.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    assert main(args) == 0
    training = json.loads((run / "report.json").read_text())["test"]
    assert main(["eval", str(run), "--out", str(tmp_path / "own")]) == 0  # its data, its classes, its test split
    own = json.loads((tmp_path / "own" / "report.json").read_text())
    assert own["images"] == training["images"] == 4 and own["confusion_matrix"] == training["confusion_matrix"]
    capsys.readouterr()
    assert main(["eval", str(run), "--data", str(data), "--split", "test", "--out", str(tmp_path / "same")]) == 0
    assert "in its order, as its training run carved its splits; leaving out dog" in capsys.readouterr().out
    same = json.loads((tmp_path / "same" / "report.json").read_text())
    assert same["confusion_matrix"] == training["confusion_matrix"] and same["classes"] == ["fox", "cat"]
    other = shutil.copytree(data, tmp_path / "other-pets")  # not the run's data: no silent restriction
    assert main(["eval", str(run), "--data", str(other), "--split", "test"]) == 2
    err = capsys.readouterr().err
    assert "does not know: dog" in err and "with --classes fox,cat" in err  # the run's order carves its splits
    assert (
        main(
            [
                "eval",
                str(run),
                "--data",
                str(other),
                "--split",
                "test",
                "--classes",
                "fox,cat",
                "--test-fraction",
                "0.2",
                "--out",
                str(tmp_path / "given"),
            ]
        )
        == 0
    )
    given = json.loads((tmp_path / "given" / "report.json").read_text())
    assert given["confusion_matrix"] == training["confusion_matrix"]


def test_eval_on_digits_does_not_claim_split_options_it_ignores(tmp_path, capsys):
    from vitrain.models import create_model

    model = create_model("vit-digits", num_classes=10)
    model.meta = {
        "classes": [str(i) for i in range(10)],
        "mean": [0.3],
        "std": [0.2],
        "crop_pct": 1.0,
        "data": "digits",
        "split": {"val_fraction": 0.25, "test_fraction": 0.3, "split_seed": 4},
    }
    save_model(tmp_path / "digits.safetensors", model)
    assert main(["eval", str(tmp_path / "digits.safetensors"), "--data", "digits", "--out", str(tmp_path / "ev")]) == 0
    assert "split options" not in capsys.readouterr().out  # digits has one fixed 70/10/20 split
    report = json.loads((tmp_path / "ev" / "report.json").read_text())
    assert report["split"] == "test" and report["images"] == 359 and "split_options" not in report


def test_eval_reports_only_the_split_options_that_carved_the_split(split_folder, tmp_path, capsys):
    # Training/ and Testing/ folders: the test split is Testing/ whatever the options; the validation
    # split is carved from Training/ by --val-fraction and --split-seed (never --test-fraction)
    from vitrain.models import create_model

    model = create_model("vit", **{k: v for k, v in TINY_MODEL.items() if k != "model"}, num_classes=3)
    model.meta = {
        "classes": ["cat", "dog", "fox"],
        "mean": [0.5] * 3,
        "std": [0.25] * 3,
        "crop_pct": 1.0,
        "data": str(split_folder),
        "split": {"val_fraction": 0.3, "test_fraction": 0.2, "split_seed": 2},
    }
    save_model(tmp_path / "m.safetensors", model)
    assert main(["eval", str(tmp_path / "m.safetensors"), "--split", "test", "--out", str(tmp_path / "test")]) == 0
    assert "split options" not in capsys.readouterr().out
    report = json.loads((tmp_path / "test" / "report.json").read_text())
    assert report["split"] == "test" and report["images"] == 12 and "split_options" not in report
    assert main(["eval", str(tmp_path / "m.safetensors"), "--split", "val", "--out", str(tmp_path / "val")]) == 0
    assert "split options of the training run: --val-fraction 0.3 --split-seed 2\n" in capsys.readouterr().out
    report = json.loads((tmp_path / "val" / "report.json").read_text())
    assert report["split_options"] == {"val_fraction": 0.3, "split_seed": 2} and report["images"] == 9  # 3 per class


def test_eval_on_a_folder_holding_one_class_folder(trained, tmp_path):
    run, data = trained
    shutil.copytree(data / "fox", tmp_path / "only-foxes" / "fox")
    assert main(["eval", str(run), "--data", str(tmp_path / "only-foxes"), "--out", str(tmp_path / "ev")]) == 0
    report = json.loads((tmp_path / "ev" / "report.json").read_text())
    assert report["images"] == 10 and set(report["per_class"]) == {"fox"}
