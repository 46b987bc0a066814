"""``--recipe auto``: the recipe and batch size chosen from the data (vitrain/engine/autorecipe.py)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import yaml

from tests.conftest import write_class_folders
from vitrain.config import TrainConfig
from vitrain.engine.autorecipe import apply_recipe, auto_applies, choose_recipe
from vitrain.engine.launch import resolve_config
from vitrain.recipes import get_recipe


def data(side: int, images: int, flips: bool = True) -> SimpleNamespace:
    return SimpleNamespace(native_size=side, train=range(images), hflip_ok=flips)


@pytest.mark.parametrize(
    "side, images, recipe, batch",
    [
        (8, 1_259, None, None),  # digits: the defaults' vit-digits
        (28, 54_000, "cifar10-best", 128),  # MNIST-sized
        (32, 45_000, "cifar10-best", 128),  # CIFAR-10
        (224, 4_852, "folder-best", 64),  # a folder of scans
        (500, 1_000, "folder-best", 64),  # flowers17: 15 steps per epoch at the recipe's batch
        (500, 300, "folder-best", 16),  # 300 images: batch 16 gives 18 steps per epoch
        (500, 100, "folder-best", 8),  # never below 8
    ],
)
def test_the_recipe_and_batch_size_follow_the_images_size_and_count(side, images, recipe, batch):
    chosen = choose_recipe(data(side, images))
    assert (chosen.name, chosen.batch_size) == (recipe, batch)
    assert chosen.reason.startswith(f"auto: {side} px images, {images:,} training images")


def test_naming_a_model_a_recipe_or_pretraining_leaves_the_choice_to_the_user():
    assert auto_applies({"data", "batch_size", "time_budget", "lr"})
    for given in ({"model"}, {"embed_dim"}, {"img_size"}, {"pretrained"}, {"pretrain"}):
        assert not auto_applies(given)
    assert resolve_config({"data": "x"})[0].recipe == "auto"
    assert resolve_config({"data": "x", "recipe": "auto"})[0].recipe == "auto"
    assert resolve_config({"data": "x", "recipe": "auto", "depth": 2})[0].recipe is None
    assert resolve_config({"data": "x", "recipe": "cifar10-best"})[0].recipe == "cifar10-best"
    assert resolve_config({"data": "x"}, command="pretrain")[0].recipe is None


def test_the_users_settings_win_over_the_chosen_recipe_and_flips_are_left_to_the_data(monkeypatch):
    monkeypatch.setitem(get_recipe("cifar10-best").config, "tta", "flip")
    given = TrainConfig(data="mnist", batch_size=32, lr=3e-4, out="runs/x")
    assert apply_recipe(given, {"data"}, choose_recipe(data(28, 54_000))).tta == "flip"
    cfg = apply_recipe(given, {"data", "batch_size", "lr"}, choose_recipe(data(28, 54_000, flips=False)))
    assert cfg.tta == "none"  # the recipe's flip test-time augmentation goes with the flips
    assert cfg.recipe == "cifar10-best" and cfg.stem == "conv" and cfg.embed_dim == 128 and cfg.img_size == 32
    assert cfg.batch_size == 32 and cfg.lr == 3e-4  # given, so kept (32 is also the default)
    assert cfg.data == "mnist" and cfg.out == "runs/x"  # the recipe's data: cifar10 does not replace them
    assert cfg.hflip is None  # decided by the data: no mirrored digits


def test_a_run_without_a_recipe_gets_one_chosen_from_its_data_and_says_why(tmp_path, capsys):
    from vitrain.cli import main

    folder = write_class_folders(tmp_path / "flat", per_class=12)  # 36 images of 20 px
    run = tmp_path / "run"
    flags = ["--epochs", "1", "--workers", "0", "--no-progress", "--out", str(run)]
    assert main(["train", "--data", str(folder), "--lr", "0.003", *flags]) == 0
    out = capsys.readouterr().out
    assert "recipe: cifar10-best (auto: 20 px images, " in out and "batch 8, the recipe's 128 halved" in out
    saved = yaml.safe_load((run / "config.yaml").read_text())["train"]
    assert saved["recipe"] == "cifar10-best" and saved["stem"] == "conv" and saved["batch_size"] == 8
    assert saved["lr"] == 0.003  # the flag, not the recipe's 2e-3
    report = json.loads((run / "report.json").read_text())
    assert report["recipe"]["name"] == "cifar10-best" and report["recipe"]["setting"] == "auto"
    assert main(["train", "--data", str(folder), *flags[:-1], str(tmp_path / "mine"), "--depth", "1"]) == 0
    assert "recipe:" not in capsys.readouterr().out  # a model option: the user's defaults, no recipe


@pytest.mark.parametrize(
    "archive, side, images, recipe",
    [
        ("cifar10.tar", 32, 45_000, "cifar10-best"),
        ("brain-tumor-mri.tar", 224, 4_852, "folder-best"),
        ("flowers17.tar", 500, 1_020, "folder-best"),
    ],
)
def test_on_the_shared_datasets_auto_is_the_best_named_recipe_setting_for_setting(archive, side, images, recipe):
    # docs/benchmarks/accuracy.md: the named recipe that does best on each of them; auto leaves only
    # the flips to the data, which keep them on for these sets (hflip 0.5, as the recipes say)
    given = {"data": archive, "time_budget": 15.0, "out": "runs/x"}
    auto, _ = resolve_config(given)
    chosen = apply_recipe(auto, set(given), choose_recipe(data(side, images)))
    named, _ = resolve_config({**given, "recipe": recipe})
    assert {**chosen.to_dict(), "hflip": 0.5} == named.to_dict()
