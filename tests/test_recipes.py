"""Recipes: typed, validated, and overridable by config files and flags."""

from __future__ import annotations

import yaml

from vitrain.cli import main
from vitrain.config import TrainConfig, config_from_dict, layered_config
from vitrain.recipes import get_recipe, recipes


def test_every_recipe_is_a_valid_config_with_provenance():
    assert {"cifar10-vit-tutorial", "cifar10-vit224", "folder-vit-b16"} <= set(recipes())
    for recipe in recipes().values():
        config_from_dict(recipe.config).validate()
        assert recipe.reference and recipe.command.startswith(f"vitrain train --recipe {recipe.name}")


def test_the_cifar10_tutorial_recipe_is_the_tutorial():
    cfg = layered_config({"recipe": "cifar10-vit-tutorial"})
    assert (cfg.img_size, cfg.patch_size, cfg.embed_dim, cfg.mlp_dim, cfg.num_heads, cfg.depth) == (
        32,
        4,
        256,
        512,
        8,
        6,
    )
    assert cfg.dropout == 0.2 and cfg.lr == 3e-4 and cfg.weight_decay == 0.01 and cfg.clip_grad == 1.0
    assert cfg.schedule == "multistep" and cfg.milestones == [0.6, 0.85] and cfg.gamma == 0.1
    assert cfg.crop == "resized" and cfg.crop_scale == [0.8, 1.0] and cfg.crop_ratio == [0.9, 1.1]
    assert cfg.batch_size == 128 and cfg.epochs == 200 and cfg.val_fraction == 0.1


def test_the_other_tutorial_recipes():
    vit224 = layered_config({"recipe": "cifar10-vit224"})
    assert (vit224.img_size, vit224.patch_size, vit224.embed_dim, vit224.mlp_dim, vit224.num_heads) == (
        224,
        16,
        288,
        1152,
        6,
    )
    assert vit224.augment == "autoaugment" and vit224.betas == [0.9, 0.95] and vit224.eps == 1e-5
    assert vit224.schedule == "step" and vit224.step_size == 10 and vit224.epochs == 50 and vit224.lr == 5e-4
    b16 = layered_config({"recipe": "folder-vit-b16"})
    assert b16.model == "vit-b16" and b16.augment == "none" and b16.lr == 5e-5 and b16.val_fraction == 0.15
    assert b16.batch_size == 32 and b16.epochs == 20


def test_config_file_and_flags_override_the_recipe_in_that_order():
    cfg = layered_config({"recipe": "cifar10-vit-tutorial", "lr": 1e-3, "epochs": 5}, {"epochs": 7})
    assert cfg.lr == 1e-3 and cfg.epochs == 7 and cfg.embed_dim == 256
    assert layered_config({}).lr == TrainConfig().lr


def test_unknown_recipe_lists_the_known_ones(capsys):
    assert main(["train", "--recipe", "magic"]) == 2
    assert "unknown recipe; choose one of cifar10-best, cifar10-vit-tutorial" in capsys.readouterr().err


def test_training_with_a_recipe_records_it(flat_folder, tmp_path):
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--recipe",
                "cifar10-vit-tutorial",
                "--data",
                str(flat_folder),
                "--out",
                str(run),
                "--img-size",
                "16",
                "--embed-dim",
                "32",
                "--mlp-dim",
                "64",
                "--depth",
                "2",
                "--epochs",
                "2",
                "--batch-size",
                "8",
                "--no-progress",
            ]
        )
        == 0
    )
    saved = yaml.safe_load((run / "config.yaml").read_text())["train"]
    assert saved["recipe"] == "cifar10-vit-tutorial" and saved["lr"] == 3e-4 and saved["crop"] == "resized"
    assert saved["schedule"] == "multistep" and saved["img_size"] == 16 and saved["num_heads"] == 8


def test_recipes_command_lists_references(capsys):
    assert main(["recipes"]) == 0
    out = capsys.readouterr().out
    assert "78.4%" in out and "vitrain train --recipe folder-vit-b16" in out
    assert get_recipe("cifar10-vit224").name == "cifar10-vit224"
