"""``vitrain eval`` (``vitrain/engine/evaluate.py``) from the checkpoint alone: which split and classes it
scores, the split options it reuses, and metrics that match the training report."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

import vitrain
from vitrain.checkpoint import save_model
from vitrain.cli import main
from vitrain.data.images import read_image
from vitrain.data.transforms import eval_transform_for

from .conftest import TINY_MODEL, _read_csv, write_class_folders


def test_balanced_accuracy_is_the_mean_recall_of_the_classes_present():
    from sklearn.metrics import balanced_accuracy_score

    from vitrain.engine.evaluate import EvalResult

    targets = np.array([0, 0, 0, 0, 0, 0, 1, 1])
    some = EvalResult(0.0, 0.875, None, targets, np.array([0, 0, 0, 0, 0, 0, 0, 1]))
    assert some.balanced_accuracy == pytest.approx((6 / 6 + 1 / 2) / 2)  # class 2 has no image here
    always_big = EvalResult(0.0, 0.75, None, targets, np.zeros(8, dtype=np.int64))
    assert always_big.balanced_accuracy == pytest.approx(0.5)  # accuracy 0.75 by answering the large class
    for result in (some, always_big):
        assert result.balanced_accuracy == pytest.approx(balanced_accuracy_score(result.targets, result.predictions))


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


def test_flip_tta_averages_the_probabilities_of_each_image_and_its_mirror(trained, tmp_path):
    from vitrain.engine.evaluate import evaluate

    run, _ = trained
    model = vitrain.load_model(run)
    images = torch.rand(6, 3, model.config.img_size, model.config.img_size)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    with torch.inference_mode():
        mean = (model(images).softmax(-1) + model(images.flip(-1)).softmax(-1)) / 2
    flipped = evaluate(model, [(images, labels)], torch.device("cpu"), 3, tta="flip")
    assert np.array_equal(flipped.predictions, mean.argmax(-1).numpy())
    assert flipped.loss == pytest.approx(float(-mean[torch.arange(6), labels].log().mean()), rel=1e-5)
    plain = evaluate(model, [(images, labels)], torch.device("cpu"), 3)
    assert plain.loss != pytest.approx(flipped.loss)  # the mirror images changed the probabilities
    assert main(["eval", str(run), "--tta", "flip", "--out", str(tmp_path / "tta")]) == 0
    assert json.loads((tmp_path / "tta" / "report.json").read_text())["tta"] == "flip"


def test_a_run_evaluates_its_best_model_with_flip_tta_and_says_so(flat_folder, tmp_path, tiny_args, capsys):
    run = tmp_path / "run"
    assert main(["train", "--data", str(flat_folder), *tiny_args, "--tta", "flip", "--out", str(run)]) == 0
    report = json.loads((run / "report.json").read_text())
    assert report["tta"] == "flip"
    again = vitrain.evaluate(run, tta="flip", out=tmp_path / "again")
    assert again["accuracy"] == report["test"]["accuracy"]
    assert main(["train", "--data", "digits", *tiny_args, "--tta", "flip", "--out", str(tmp_path / "d")]) == 2
    assert "--tta flip: this run trains without flips" in capsys.readouterr().err
