"""Instance-discrimination pretraining: the loss, InfoNCE and mixing against hand computations;
the strong augmentation; pretrain -> train round trips through the CLI."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from vitrain.cli import main
from vitrain.data.strong import StrongAugment, color_jitter, random_blur, random_grayscale
from vitrain.engine.pretrain import InstanceHead, info_nce, instance_loss, mix_instances, mixed_targets
from vitrain.models.convert import resample_pos_embed

from .conftest import at_call


def test_instance_loss_is_the_cross_entropy_of_the_right_instance():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    targets = torch.tensor([0, 1])
    by_hand = (-math.log(math.exp(2) / (math.exp(2) + 2)) - math.log(math.e / (math.e + 2))) / 2
    assert instance_loss(logits, targets).item() == pytest.approx(by_hand, rel=1e-6)
    # the blog's version -- softmax, then the sum of the logs of all probabilities -- is a different number
    wrong = -torch.log_softmax(logits, 1).sum(1).mean()
    assert abs(wrong.item() - by_hand) > 1


def test_mixed_instance_targets_sum_to_one_and_match_the_two_term_loss():
    logits = torch.randn(6, 10, generator=torch.Generator().manual_seed(0))
    a, b = torch.tensor([0, 1, 2, 3, 4, 5]), torch.tensor([5, 4, 3, 2, 1, 0])
    targets = mixed_targets(a, b, 0.3, 10)
    assert torch.allclose(targets.sum(1), torch.ones(6))
    assert targets[0, 0] == pytest.approx(0.3) and targets[0, 5] == pytest.approx(0.7)
    dense = F.cross_entropy(logits, targets)  # soft-target cross entropy over the N instances
    assert instance_loss(logits, a, b, 0.3).item() == pytest.approx(dense.item(), rel=1e-6)


def test_smoothed_instance_targets_match_the_dense_cross_entropy():
    logits = torch.randn(4, 6, generator=torch.Generator().manual_seed(3))
    a, b = torch.tensor([0, 1, 2, 3]), torch.tensor([3, 2, 1, 0])
    eps, lam = 0.1, 0.7
    targets = (1 - eps) * mixed_targets(a, b, lam, 6) + eps / 6  # smoothing spreads eps over all 6 instances
    assert torch.allclose(targets.sum(1), torch.ones(4))
    by_hand = -(targets * torch.log_softmax(logits, 1)).sum(1).mean()
    assert instance_loss(logits, a, b, lam, smoothing=eps).item() == pytest.approx(by_hand.item(), rel=1e-6)
    assert instance_loss(logits, a, smoothing=0.0).item() == pytest.approx(F.cross_entropy(logits, a).item())


def test_info_nce_matches_the_formula_with_in_batch_negatives():
    g = torch.Generator().manual_seed(1)
    z1 = F.normalize(torch.randn(5, 8, generator=g), dim=1)
    z2 = F.normalize(torch.randn(5, 8, generator=g), dim=1)
    t = 0.5
    terms = []
    for x, y in ((z1, z2), (z2, z1)):
        for i in range(5):
            sims = [math.exp(float(x[i] @ y[j]) / t) for j in range(5)]
            terms.append(-math.log(sims[i] / sum(sims)))
    assert info_nce(z1, z2, t).item() == pytest.approx(sum(terms) / len(terms), rel=1e-5)


def test_mixing_keeps_the_views_of_an_image_views_of_the_same_mixture():
    g = torch.Generator().manual_seed(2)
    views = torch.rand(2, 6, 3, 8, 8, generator=g)
    mixed, perm, lam = mix_instances(views, mixup=1.0, cutmix=0.0, generator=g)
    assert 0 <= lam <= 1 and sorted(perm.tolist()) == list(range(6))
    assert torch.allclose(mixed, lam * views + (1 - lam) * views[:, perm])
    mixed, perm, lam = mix_instances(views, mixup=0.0, cutmix=1.0, generator=g)
    own = (mixed == views).all(dim=2).float().mean(dim=(-1, -2))  # the share of pixels each image kept
    moved = perm != torch.arange(6)
    assert torch.allclose(own[:, moved], torch.full_like(own[:, moved], lam))
    unmixed, none, one = mix_instances(views, 0.0, 0.0, g)
    assert unmixed is views and none is None and one == 1.0


def test_instance_head_is_a_cosine_classifier():
    head = InstanceHead(16, n_instances=50, temperature=0.1)
    z = head.embed(torch.randn(4, 16))
    assert torch.allclose(z.norm(dim=1), torch.ones(4))
    logits = head(z)
    assert logits.shape == (4, 50) and logits.abs().max() <= 1 / 0.1 + 1e-4


def test_raw_feature_initialization_starts_as_a_nearest_neighbour_classifier():
    head = InstanceHead(16, n_instances=5, temperature=0.2)
    z = head.embed(torch.randn(5, 16, generator=torch.Generator().manual_seed(4)))
    head.init_from_features(z.detach())
    logits = head(z)
    assert torch.equal(logits.argmax(1), torch.arange(5))  # each image is already its own best class
    assert torch.allclose(logits.diagonal(), torch.full((5,), 1 / 0.2))  # cosine 1 with its own row
    with pytest.raises(ValueError, match=r"\(4, 128\) projections for a \(5, 128\) classifier"):
        head.init_from_features(torch.zeros(4, 128))


def test_strong_augmentation_is_per_image_and_reproducible():
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    augment = StrongAugment(16, [0.5] * 3, [0.25] * 3)
    one = augment(images, torch.Generator().manual_seed(7))
    two = augment(images, torch.Generator().manual_seed(7))
    assert one.shape == (16, 3, 16, 16) and torch.equal(one, two)
    x = images.float() / 255
    g = torch.Generator().manual_seed(0)
    assert torch.equal(color_jitter(x, g, p=0.0), x)
    assert not torch.equal(color_jitter(x, g, p=1.0), x)
    assert torch.allclose(random_blur(x, g, p=0.0), x)
    flat = torch.full((4, 3, 16, 16), 0.4)
    assert torch.allclose(random_blur(flat, g, p=1.0, sigma=(1.0, 2.0)), flat, atol=1e-6)  # kernels sum to 1
    gray = random_grayscale(x[:4], g, p=1.0)
    assert torch.equal(gray[:, 0], gray[:, 1]) and torch.equal(gray[:, 1], gray[:, 2])


def test_pretrain_then_fine_tune_from_the_backbone(flat_folder, tmp_path, tiny_args):
    pre = tmp_path / "pre"
    args = [
        "--data",
        str(flat_folder),
        *tiny_args,
        "--epochs",
        "2",
        "--mixup",
        "0.8",
        "--cutmix",
        "1.0",
        "--infonce",
        "0.5",
    ]
    assert main(["pretrain", *args, "--out", str(pre)]) == 0
    report = json.loads((pre / "report.json").read_text())
    assert report["method"] == "instance-discrimination" and report["images"] == 24  # the training split only
    assert report["epochs"] == 2 and (pre / "loss.png").is_file()
    backbone = load_file(str(pre / "backbone.safetensors"))
    # the same seed on CPU gives the same backbone
    assert main(["pretrain", *args, "--out", str(tmp_path / "again")]) == 0
    again = load_file(str(tmp_path / "again" / "backbone.safetensors"))
    assert all(torch.equal(backbone[k], again[k]) for k in backbone)
    # fine-tuning starts from it: with the backbone frozen, the blocks stay exactly the pretrained ones
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--data",
                str(flat_folder),
                *tiny_args,
                "--init",
                str(pre),
                "--freeze",
                "backbone",
                "--out",
                str(run),
            ]
        )
        == 0
    )
    tuned = load_file(str(run / "best.safetensors"))
    assert torch.equal(tuned["blocks.1.mlp.fc2.weight"], backbone["blocks.1.mlp.fc2.weight"])
    assert not torch.equal(tuned["head.weight"], backbone["head.weight"])


def test_one_command_chains_pretraining_and_fine_tuning(flat_folder, tmp_path, tiny_args):
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--data",
                str(flat_folder),
                *tiny_args,
                "--epochs",
                "4",
                "--pretrain",
                "instance-discrimination",
                "--out",
                str(run),
            ]
        )
        == 0
    )
    assert (run / "pretrain" / "backbone.safetensors").is_file()
    report = json.loads((run / "report.json").read_text())
    assert report["pretraining"]["epochs"] == 2 and report["epochs"] == 2  # --pretrain-share 0.5 of 4 epochs
    assert report["total_seconds"] > report["fine_tuning_seconds"] + report["pretraining"]["total_seconds"] * 0.99
    assert f"pretrained: {run / 'pretrain'}" in (run / "config.yaml").read_text()


def test_the_first_stage_can_run_at_a_smaller_input_size(flat_folder, tmp_path, tiny_args, capsys):
    # pretrain at 8 px (a 2x2 grid), fine-tune at 16 px (4x4): the position embeddings are resampled
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--data",
                str(flat_folder),
                *tiny_args,
                "--epochs",
                "2",
                "--pretrain",
                "instance-discrimination",
                "--pretrain-img-size",
                "8",
                "--freeze",
                "backbone",
                "--out",
                str(run),
            ]
        )
        == 0
    )
    report = json.loads((run / "report.json").read_text())
    assert report["pretraining"]["model"]["img_size"] == 8 and report["model"]["img_size"] == 16
    backbone = load_file(str(run / "pretrain" / "backbone.safetensors"))
    tuned = load_file(str(run / "best.safetensors"))
    assert backbone["pos_embed"].shape == (1, 1 + 2 * 2, 32) and tuned["pos_embed"].shape == (1, 1 + 4 * 4, 32)
    assert "note: the pretraining stage runs at" not in capsys.readouterr().out
    # frozen, so the fine-tuned position embeddings are exactly the resampled pretrained ones
    torch.testing.assert_close(tuned["pos_embed"], resample_pos_embed(backbone["pos_embed"], 4, 1))
    assert torch.equal(tuned["blocks.0.attn.qkv.weight"], backbone["blocks.0.attn.qkv.weight"])
    # a larger first stage is honoured as given, with a note (a recipe's 32 px with --img-size 16, say)
    assert (
        main(
            [
                "train",
                "--data",
                str(flat_folder),
                *tiny_args,
                "--epochs",
                "2",
                "--pretrain",
                "instance-discrimination",
                "--pretrain-img-size",
                "32",
                "--out",
                str(tmp_path / "larger"),
            ]
        )
        == 0
    )
    assert (
        "note: the pretraining stage runs at --pretrain-img-size 32, larger than --img-size 16"
        in capsys.readouterr().out
    )


def test_a_labels_first_stage_trains_small_then_fine_tunes_at_full_size(flat_folder, tmp_path, tiny_args, capsys):
    # --pretrain labels: the first stage is supervised training at 8 px, the second continues it at 16 px
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--data",
                str(flat_folder),
                *tiny_args,
                "--epochs",
                "4",
                "--pretrain",
                "labels",
                "--pretrain-img-size",
                "8",
                "--out",
                str(run),
            ]
        )
        == 0
    )
    report = json.loads((run / "report.json").read_text())
    first = report["pretraining"]
    assert first["model"]["img_size"] == 8 and report["model"]["img_size"] == 16
    assert first["epochs"] == 2 and report["epochs"] == 2 and 0 <= first["test"]["accuracy"] <= 1
    assert (run / "pretrain" / "best.safetensors").is_file() and not (
        run / "pretrain" / "backbone.safetensors"
    ).exists()
    assert f"pretrained: {run / 'pretrain'}" in (run / "config.yaml").read_text()
    first_weights = load_file(str(run / "pretrain" / "best.safetensors"))
    tuned = load_file(str(run / "best.safetensors"))
    assert first_weights["pos_embed"].shape == (1, 1 + 2 * 2, 32) and tuned["pos_embed"].shape == (1, 1 + 4 * 4, 32)
    assert "note: the first (labels) stage runs at --img-size" not in capsys.readouterr().out
    # the options of the instance task are refused by name, not ignored
    assert (
        main(
            [
                "train",
                "--data",
                str(flat_folder),
                *tiny_args,
                "--pretrain",
                "labels",
                "--views",
                "4",
                "--pretrain-mixup",
                "0.2",
                "--out",
                str(tmp_path / "x"),
            ]
        )
        == 2
    )
    assert "--views, --pretrain-mixup only apply to --pretrain instance-discrimination" in capsys.readouterr().err
    # and vitrain pretrain has one method
    (tmp_path / "labels.yaml").write_text("pretrain: labels\n")
    assert (
        main(
            [
                "pretrain",
                "--data",
                str(flat_folder),
                *tiny_args,
                "--config",
                str(tmp_path / "labels.yaml"),
                "--out",
                str(tmp_path / "y"),
            ]
        )
        == 2
    )
    assert "a first stage on the labels is vitrain train --pretrain labels" in capsys.readouterr().err


def test_a_preset_model_fine_tunes_at_its_own_size_after_a_smaller_first_stage(flat_folder, tmp_path):
    # a preset name is the first stage's model; the second stage takes its weights (no "leave --model
    # out" refusal after a whole first stage) and, without --img-size, the preset's own input size
    args = [
        "train",
        "--data",
        str(flat_folder),
        "--model",
        "vit-digits",
        "--epochs",
        "2",
        "--batch-size",
        "8",
        "--workers",
        "0",
        "--no-progress",
    ]
    for method in ("labels", "instance-discrimination"):
        run = tmp_path / method
        assert main([*args, "--pretrain", method, "--pretrain-img-size", "4", "--out", str(run)]) == 0, method
        report = json.loads((run / "report.json").read_text())
        assert report["pretraining"]["model"]["img_size"] == 4 and report["model"]["img_size"] == 8, method


def test_a_first_stage_of_another_kind_leaves_nothing_behind(flat_folder, tmp_path, tiny_args):
    # --overwrite with the other --pretrain: the second stage must load the new first stage's weights,
    # never a best.safetensors the old supervised first stage left in OUT/pretrain
    run = tmp_path / "run"
    args = ["train", "--data", str(flat_folder), *tiny_args, "--out", str(run)]
    assert main([*args, "--pretrain", "labels", "--pretrain-img-size", "8"]) == 0
    assert main([*args, "--pretrain", "instance-discrimination", "--overwrite"]) == 0
    left = {p.name for p in (run / "pretrain").glob("*.safetensors")}
    assert "backbone.safetensors" in left and not left & {"best.safetensors", "last.safetensors"}
    assert json.loads((run / "report.json").read_text())["pretraining"]["model"]["img_size"] == 16
    assert main([*args, "--pretrain", "labels", "--pretrain-img-size", "8", "--overwrite"]) == 0
    assert not (run / "pretrain" / "backbone.safetensors").exists()


def test_a_dynamic_size_model_is_the_model_built_for_that_size():
    from vitrain.models.vit import VisionTransformer, ViTConfig

    torch.manual_seed(0)
    model = VisionTransformer(
        ViTConfig(img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2, mlp_dim=64, num_classes=3, stem="conv")
    ).eval()
    small = torch.randn(2, 3, 8, 8)
    with pytest.raises(ValueError, match=r"expected input of shape \(B, 3, 16, 16\)"):
        model(small)  # off unless asked for
    model.dynamic_img_size = True
    at_8 = VisionTransformer(ViTConfig(**{**model.config.to_dict(), "img_size": 8})).eval()
    state = model.state_dict()
    state["pos_embed"] = resample_pos_embed(state["pos_embed"], 2, 1)
    at_8.load_state_dict(state)
    torch.testing.assert_close(model(small), at_8(small))
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 3)  # its own size still works
    with pytest.raises(ValueError):
        model(torch.randn(2, 3, 10, 10))  # not a multiple of the patch


def test_multi_crop_pretraining_adds_small_crops(flat_folder, tmp_path, tiny_args):
    args = ["pretrain", "--data", str(flat_folder), *tiny_args, "--epochs", "2", "--infonce", "1"]
    assert main([*args, "--local-crops", "3", "--out", str(tmp_path / "multi")]) == 0
    report = json.loads((tmp_path / "multi" / "report.json").read_text())
    assert report["local_crops"] == 3 and report["local_crop_size"] == 8  # half of 16 px, two 4-px patches
    assert math.isfinite(report["final_loss"])
    multi = load_file(str(tmp_path / "multi" / "backbone.safetensors"))
    assert multi["pos_embed"].shape == (1, 1 + 4 * 4, 32)  # the backbone keeps its own grid
    assert main([*args, "--out", str(tmp_path / "plain")]) == 0
    plain = load_file(str(tmp_path / "plain" / "backbone.safetensors"))
    assert not torch.equal(multi["blocks.0.attn.qkv.weight"], plain["blocks.0.attn.qkv.weight"])


def test_pretraining_options_are_checked(flat_folder, tmp_path, tiny_args, capsys):
    assert (
        main(
            [
                "pretrain",
                "--data",
                str(flat_folder),
                *tiny_args,
                "--views",
                "1",
                "--infonce",
                "1",
                "--out",
                str(tmp_path / "x"),
            ]
        )
        == 2
    )
    assert "--views must be at least 1 (2 with --infonce)" in capsys.readouterr().err
    assert (
        main(
            [
                "train",
                "--data",
                str(flat_folder),
                *tiny_args,
                "--pretrain",
                "instance-discrimination",
                "--pretrain-img-size",
                "10",
                "--out",
                str(tmp_path / "y"),
            ]
        )
        == 2
    )
    assert "--pretrain-img-size must be a positive multiple of --patch-size (4)" in capsys.readouterr().err
    assert (
        main(
            [
                "pretrain",
                "--data",
                str(flat_folder),
                *tiny_args,
                "--local-crops",
                "2",
                "--local-crop-size",
                "6",
                "--out",
                str(tmp_path / "z"),
            ]
        )
        == 2
    )
    assert "--local-crop-size must be a positive multiple of --patch-size (4)" in capsys.readouterr().err
    assert (
        main(
            [
                "pretrain",
                "--data",
                str(flat_folder),
                *tiny_args,
                "--local-crop-scale",
                "0.5,0.1",
                "--out",
                str(tmp_path / "w"),
            ]
        )
        == 2
    )
    assert "--local-crop-scale needs MIN,MAX with 0 < MIN <= MAX <= 1" in capsys.readouterr().err
    assert (
        main(
            [
                "pretrain",
                "--data",
                str(flat_folder),
                *tiny_args,
                "--instance-smoothing",
                "1",
                "--out",
                str(tmp_path / "t"),
            ]
        )
        == 2
    )
    assert "--instance-smoothing must be in [0, 1)" in capsys.readouterr().err
    # options of training that pretraining has no use for are refused, not silently ignored
    assert (
        main(
            [
                "pretrain",
                "--data",
                str(flat_folder),
                *tiny_args,
                "--ema",
                "0.99",
                "--label-smoothing",
                "0.1",
                "--out",
                str(tmp_path / "v"),
            ]
        )
        == 2
    )
    assert "vitrain pretrain does not use --label-smoothing, --ema" in capsys.readouterr().err
    # and the other way round: first-stage options without a first stage
    assert (
        main(
            [
                "train",
                "--data",
                str(flat_folder),
                *tiny_args,
                "--views",
                "4",
                "--knn-every",
                "1",
                "--out",
                str(tmp_path / "u"),
            ]
        )
        == 2
    )
    assert "--views, --knn-every only apply to pretraining" in capsys.readouterr().err


def test_vitrain_pretrain_runs_a_recipes_first_stage(flat_folder, tmp_path, tiny_args):
    from vitrain.cli import build_parser, train_config_from_args

    def config(*flags: str):
        return train_config_from_args(build_parser().parse_args(["pretrain", "--recipe", "small-data", *flags]))[0]

    # the recipe's first stage: 32 px, no mixing of instances (its --mixup/--cutmix are the second stage's)
    cfg = config()
    assert (cfg.img_size, cfg.mixup, cfg.cutmix) == (32, 0.0, 0.0)
    cfg = config("--img-size", "48", "--mixup", "0.4")  # flags still win
    assert (cfg.img_size, cfg.mixup, cfg.cutmix) == (48, 0.4, 0.0)
    run = tmp_path / "pre"
    assert (
        main(
            [
                "pretrain",
                "--data",
                str(flat_folder),
                *tiny_args,
                "--instance-init",
                "features",
                "--instance-smoothing",
                "0.1",
                "--out",
                str(run),
            ]
        )
        == 0
    )
    report = json.loads((run / "report.json").read_text())
    assert report["instance_init"] == "features" and report["instance_smoothing"] == 0.1


def test_pretrain_none_drops_the_first_stage_of_a_recipe(flat_folder, tmp_path, tiny_args):
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--recipe",
                "small-data",
                "--data",
                str(flat_folder),
                *tiny_args,
                "--epochs",
                "2",
                "--pretrain",
                "none",
                "--out",
                str(run),
            ]
        )
        == 0
    )
    assert not (run / "pretrain").exists()
    report = json.loads((run / "report.json").read_text())
    assert "pretraining" not in report and report["epochs"] == 2


def test_pretraining_skips_or_stops_on_a_non_finite_loss(flat_folder, tmp_path, tiny_args, monkeypatch, capsys):
    from vitrain.engine.pretrain import task as pretrain_module

    real = pretrain_module.instance_loss
    calls = {"n": 0}

    def inf_in_epoch_two(*args, **kwargs):  # 3 steps per epoch: global steps 4 and 5 give an infinite loss
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * float("inf") if calls["n"] in (4, 5) else loss

    monkeypatch.setattr(pretrain_module, "instance_loss", inf_in_epoch_two)
    args = ["pretrain", "--data", str(flat_folder), *tiny_args, "--epochs", "3"]
    assert main([*args, "--skip-nonfinite", "2", "--out", str(tmp_path / "skips")]) == 0
    report = json.loads((tmp_path / "skips" / "report.json").read_text())
    assert [b["step"] for b in report["skipped_batches"]] == [4, 5] and math.isfinite(report["final_loss"])
    calls["n"] = 0
    assert main([*args, "--out", str(tmp_path / "stops")]) == 1
    err = capsys.readouterr().err
    assert "at epoch 2, step 1 of the epoch (global step 4): the loss was inf" in err
    assert str(tmp_path / "stops" / "backbone.safetensors") in err


def test_an_interrupted_pretraining_resumes_to_the_same_backbone(flat_folder, tmp_path, tiny_args, monkeypatch, capsys):
    import shutil

    from vitrain.engine.pretrain import task as pretrain_module

    args = ["pretrain", "--data", str(flat_folder), *tiny_args, "--epochs", "3"]
    assert main([*args, "--out", str(tmp_path / "reference")]) == 0
    reference = load_file(str(tmp_path / "reference" / "backbone.safetensors"))

    run = tmp_path / "run"
    with monkeypatch.context() as patch:  # 3 steps per epoch: the 5th loss is in epoch 2
        at_call(patch, pretrain_module, "instance_loss", 5)
        assert main([*args, "--out", str(run)]) == 130
    assert f"Continue with: vitrain pretrain --resume {run}" in capsys.readouterr().err
    assert len((run / "metrics.csv").read_text().splitlines()) == 2  # the header and epoch 1
    shutil.copytree(run, tmp_path / "copy")

    assert main(["pretrain", "--resume", str(run)]) == 0
    assert "resuming pretraining after epoch 1 (step 3 of 9)" in capsys.readouterr().out
    resumed = load_file(str(run / "backbone.safetensors"))
    assert all(torch.equal(reference[k], resumed[k]) for k in reference)  # as if never interrupted
    report = json.loads((run / "report.json").read_text())
    assert report["epochs"] == 3 and report["steps"] == 9
    assert len((run / "metrics.csv").read_text().splitlines()) == 4

    # the instance classifier has a row per training image: other images cannot continue it
    first = sorted(p for p in flat_folder.iterdir() if p.is_dir())[0]
    (first / "extra.png").write_bytes((first / "000.png").read_bytes())
    assert main(["pretrain", "--resume", str(tmp_path / "copy")]) == 2
    assert "the training images are not the ones pretraining started on" in capsys.readouterr().err
    assert main(["pretrain", "--resume", str(tmp_path / "nothing")]) == 2


@pytest.mark.parametrize("method", ["instance-discrimination", "labels"])
def test_a_chained_run_resumes_in_either_stage(flat_folder, tmp_path, tiny_args, monkeypatch, capsys, method):
    from vitrain.engine import train as train_module
    from vitrain.engine.pretrain import task as pretrain_module

    args = ["train", "--data", str(flat_folder), *tiny_args, "--epochs", "4", "--pretrain", method]
    if method == "labels":
        args += ["--pretrain-img-size", "8"]
    assert main([*args, "--out", str(tmp_path / "reference")]) == 0
    reference = load_file(str(tmp_path / "reference" / "last.safetensors"))

    interrupts = {  # (module, function, which call raises); train writes metrics.csv once per epoch
        "instance-discrimination": {
            "first": (pretrain_module, "instance_loss", 5),  # pretraining epoch 2
            "second": (train_module, "metrics_csv_bytes", 1),
        },  # after epoch 1
        "labels": {
            "first": (train_module, "metrics_csv_bytes", 2),  # the first stage's epoch 2
            "second": (train_module, "metrics_csv_bytes", 3),
        },  # the second stage's epoch 1
    }[method]
    for stage, (module, name, call) in interrupts.items():
        run = tmp_path / stage
        with monkeypatch.context() as patch:
            at_call(patch, module, name, call)
            assert main([*args, "--out", str(run)]) == 130, stage
        assert f"Continue with: vitrain train --resume {run}" in capsys.readouterr().err
        assert main(["train", "--resume", str(run)]) == 0, stage
        resumed = load_file(str(run / "last.safetensors"))
        assert all(torch.equal(reference[k], resumed[k]) for k in reference), stage
        report = json.loads((run / "report.json").read_text())
        assert report["pretraining"]["epochs"] == 2 and report["epochs"] == 2, stage


def test_pretraining_compiles_the_backbone_when_asked(flat_folder, tmp_path, tiny_args, monkeypatch, capsys):
    compiled = []

    def fake_compile(model, **kwargs):  # the wiring, without paying for a real compilation on CPU
        compiled.append(type(model).__name__)
        return lambda *a, **k: model(*a, **k)

    monkeypatch.setattr(torch, "compile", fake_compile)
    assert (
        main(["pretrain", "--data", str(flat_folder), *tiny_args, "--compile", "on", "--out", str(tmp_path / "run")])
        == 0
    )
    assert compiled == ["VisionTransformer"] and ", torch.compile" in capsys.readouterr().out


def test_pretraining_compile_auto_measures_as_training_does(flat_folder, tmp_path, tiny_args, monkeypatch, capsys):
    from vitrain.engine import compiling

    compiled = []
    monkeypatch.setattr(torch, "compile", lambda model, **kw: compiled.append(model) or model)
    args = ["pretrain", "--data", str(flat_folder), *tiny_args, "--compile", "auto"]
    assert main([*args, "--out", str(tmp_path / "short")]) == 0  # a tiny run: too short to compile
    assert re.search(r"compile: off \(auto: about \d+s of steps, too short to win back", capsys.readouterr().out)
    assert json.loads((tmp_path / "short" / "report.json").read_text())["compile"]["on"] is False
    # as if its eager steps took 100 s, and compiled ones 50 s after 1 s of compiling
    monkeypatch.setattr(compiling, "eager_step_seconds", lambda *a: 100.0)
    timing = {"eager": 100.0, "compiled": 50.0, "compile": 1.0}
    monkeypatch.setattr(compiling, "cached", lambda kind, key, measure: (timing, False))
    assert main([*args, "--precision", "fp32", "--out", str(tmp_path / "long")]) == 0
    out = capsys.readouterr().out
    assert "compile: on (auto: compiled float32 steps ran 2.00x as fast as eager float32 ones" in out
    assert compiled and json.loads((tmp_path / "long" / "report.json").read_text())["compile"]["on"] is True


def test_the_compiling_first_epoch_does_not_shrink_the_pretraining_plan(flat_folder, tmp_path, tiny_args, monkeypatch):
    from .test_train import slow_first_call_compile

    monkeypatch.setattr(torch, "compile", slow_first_call_compile(3.0))
    run = tmp_path / "run"
    assert (
        main(
            [
                "pretrain",
                "--data",
                str(flat_folder),
                *tiny_args,
                "--epochs",
                "100000",
                "--time-budget",
                "0.2",
                "--compile",
                "on",
                "--out",
                str(run),
            ]
        )
        == 0
    )
    budget = json.loads((run / "report.json").read_text())["time_budget"]
    assert budget["replans"] and all(r["after_epoch"] >= 2 for r in budget["replans"])
    # no plan read the 3 s epoch as a speed (over a second per step of this tiny model)
    assert all(r["seconds_per_step"] < 0.5 for r in budget["replans"])


def test_knn_votes_are_weighted_by_similarity():
    from vitrain.engine.pretrain import knn_predict

    bank = torch.tensor([[0.0, 1.0], [0.6, 0.8], [0.8, 0.6], [-1.0, 0.0]])  # unit vectors
    labels = torch.tensor([1, 0, 0, 1])
    query = torch.tensor([[0.0, 1.0]])  # similarities 1.0, 0.8, 0.6, 0.0
    # k=3 at temperature 0.07: exp(1/0.07) for class 1 outweighs exp(0.8/0.07) + exp(0.6/0.07) for class 0
    assert knn_predict(bank, labels, query, 2, k=3, temperature=0.07).tolist() == [1]
    # at temperature 10 the weights are nearly equal, so the two class-0 neighbours win: e^0.1 < e^0.08 + e^0.06
    assert knn_predict(bank, labels, query, 2, k=3, temperature=10.0).tolist() == [0]
    assert knn_predict(bank, labels, query, 2, k=1).tolist() == [1]
    assert knn_predict(bank, labels, query, 3, k=99).shape == (1,)  # k larger than the bank: all of it


def test_the_knn_report_reads_the_backbone_and_never_changes_it(flat_folder, tmp_path, tiny_args, capsys):
    args = ["pretrain", "--data", str(flat_folder), *tiny_args, "--epochs", "3"]
    assert main([*args, "--knn-every", "2", "--out", str(tmp_path / "knn")]) == 0
    out = capsys.readouterr().out
    assert "kNN validation accuracy of the untrained backbone:" in out and "kNN val acc" in out
    report = json.loads((tmp_path / "knn" / "report.json").read_text())
    knn = report["knn"]
    assert knn["k"] == 20 and knn["every"] == 2 and knn["val_images"] == 3
    assert 0 <= knn["before"] <= 1 and 0 <= knn["val_accuracy"] <= 1
    rows = (tmp_path / "knn" / "metrics.csv").read_text().splitlines()
    column = rows[0].split(",").index("val_accuracy")
    filled = [bool(row.split(",")[column]) for row in rows[1:]]
    assert filled == [False, True, True]  # epoch 2, and the last epoch
    assert float(rows[-1].split(",")[column]) == pytest.approx(knn["val_accuracy"], abs=1e-6)
    assert main([*args, "--out", str(tmp_path / "plain")]) == 0
    with_knn = load_file(str(tmp_path / "knn" / "backbone.safetensors"))
    plain = load_file(str(tmp_path / "plain" / "backbone.safetensors"))
    assert all(torch.equal(with_knn[k], plain[k]) for k in plain)
    assert "knn" not in json.loads((tmp_path / "plain" / "report.json").read_text())
    assert main([*args, "--knn-every", "-1", "--out", str(tmp_path / "bad")]) == 2
    assert "--knn-every must be >= 0" in capsys.readouterr().err
