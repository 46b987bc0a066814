"""--pretrained: every format's converter reproduces the source model's logits; weights are fitted
to new sizes, patches and channels; freezing, heads and layer decay; offline and unsafe input."""

from __future__ import annotations

import json
import math
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from vitrain.cli import main
from vitrain.config import TrainConfig
from vitrain.engine.finetune import apply_freeze
from vitrain.engine.optim import build_optimizer
from vitrain.models import convert
from vitrain.models.pretrained import PretrainedError, load_pretrained
from vitrain.models.registry import create_model

timm = pytest.importorskip("timm")
torchvision = pytest.importorskip("torchvision")

SMALL = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2)


def _images(n: int = 2, size: int = 32, channels: int = 3) -> torch.Tensor:
    return torch.randn(n, channels, size, size, generator=torch.Generator().manual_seed(0))


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


def _timm_vit(**kw) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.models.vision_transformer.VisionTransformer(**{**SMALL, "num_classes": 5, **kw}).eval()


@torch.no_grad()
def test_timm_weights_from_pth_and_safetensors_give_the_same_logits(tmp_path):
    source = _timm_vit()
    torch.save(source.state_dict(), tmp_path / "timm.pth")
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(tmp_path / "timm.safetensors"))
    x = _images()
    for name in ("timm.pth", "timm.safetensors"):
        found = load_pretrained(str(tmp_path / name), num_heads=2)
        assert found.layout == "timm" and found.arch["num_heads"] == 2
        assert _max_diff(found.model().eval()(x), source(x)) < 1e-4


@torch.no_grad()
def test_timm_deit_with_a_distillation_token(tmp_path):
    torch.manual_seed(0)
    source = timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False, img_size=32, num_classes=5).eval()
    torch.save(source.state_dict(), tmp_path / "deit.pth")
    found = load_pretrained(str(tmp_path / "deit.pth"))
    assert found.arch["distilled"] and found.arch["num_heads"] == 3  # DeiT-tiny: 192 dims, 64 per head
    model = found.model().eval()
    assert model.num_prefix_tokens == 2
    assert _max_diff(model(_images()), source(_images())) < 1e-4


@torch.no_grad()
def test_torchvision_weights(tmp_path):
    torch.manual_seed(0)
    source = torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=64, mlp_dim=128, num_classes=5
    ).eval()
    torch.save(source.state_dict(), tmp_path / "tv.pth")
    found = load_pretrained(str(tmp_path / "tv.pth"), num_heads=2)
    assert found.layout == "torchvision"
    assert _max_diff(found.model().eval()(_images()), source(_images())) < 1e-4


@pytest.mark.parametrize("kind", ["vit", "deit"])
@torch.no_grad()
def test_hugging_face_folders_with_their_config(tmp_path, kind):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    settings = dict(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        image_size=32,
        patch_size=8,
        num_labels=5,
    )
    if kind == "vit":
        source = transformers.ViTForImageClassification(transformers.ViTConfig(**settings))
    else:
        source = transformers.DeiTForImageClassificationWithTeacher(transformers.DeiTConfig(**settings))
    source.eval().save_pretrained(tmp_path / "hf")
    (tmp_path / "hf" / "preprocessor_config.json").write_text(
        json.dumps({"image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "do_center_crop": False, "size": 32})
    )
    found = load_pretrained(str(tmp_path / "hf"))  # the folder: config.json says 2 heads and eps 1e-12
    assert found.layout == "huggingface" and found.arch["num_heads"] == 2 and found.arch["norm_eps"] == 1e-12
    assert found.mean == [0.5, 0.5, 0.5] and found.crop_pct == 1.0
    assert found.arch["distilled"] == (kind == "deit")
    logits = source(pixel_values=_images()).logits
    assert _max_diff(found.model().eval()(_images()), logits) < 1e-4


def test_hugging_face_hub_key_names_are_read_too():
    # Hub checkpoints written by transformers < 5 name things encoder.layer.N.attention.attention.query ...
    dim, hidden = 8, 16
    sd = {
        "vit.embeddings.cls_token": torch.zeros(1, 1, dim),
        "vit.embeddings.position_embeddings": torch.zeros(1, 5, dim),
        "vit.embeddings.patch_embeddings.projection.weight": torch.zeros(dim, 3, 4, 4),
        "vit.embeddings.patch_embeddings.projection.bias": torch.zeros(dim),
        "vit.layernorm.weight": torch.ones(dim),
        "vit.layernorm.bias": torch.zeros(dim),
        "classifier.weight": torch.zeros(3, dim),
        "classifier.bias": torch.zeros(3),
        "vit.pooler.dense.weight": torch.zeros(dim, dim),
    }
    for part, shape in {
        "attention.attention.query": (dim, dim),
        "attention.attention.key": (dim, dim),
        "attention.attention.value": (dim, dim),
        "attention.output.dense": (dim, dim),
        "intermediate.dense": (hidden, dim),
        "output.dense": (dim, hidden),
        "layernorm_before": (dim,),
        "layernorm_after": (dim,),
    }.items():
        sd[f"vit.encoder.layer.0.{part}.weight"] = torch.randn(shape)
        sd[f"vit.encoder.layer.0.{part}.bias"] = torch.randn(shape[0])
    out, layout = convert.to_vitrain(sd)
    assert layout == "huggingface"
    q, k, v = (sd[f"vit.encoder.layer.0.attention.attention.{n}.weight"] for n in ("query", "key", "value"))
    assert torch.equal(out["blocks.0.attn.qkv.weight"], torch.cat([q, k, v]))
    assert torch.equal(out["blocks.0.mlp.fc1.weight"], sd["vit.encoder.layer.0.intermediate.dense.weight"])
    assert not any("pooler" in k for k in out)
    assert convert.infer_arch(out)["mlp_dim"] == hidden


def test_vitrain_checkpoints_and_run_folders_carry_their_preprocessing(tmp_path):
    from vitrain.checkpoint import save_model

    model = create_model("vit-digits", num_classes=10, stem="conv")
    model.meta = {
        "classes": [str(i) for i in range(10)],
        "mean": [0.3],
        "std": [0.2],
        "crop_pct": 1.0,
        "data": "digits",
    }
    (tmp_path / "run").mkdir()
    save_model(tmp_path / "run" / "best.safetensors", model)
    found = load_pretrained(str(tmp_path / "run"))
    assert found.layout == "vitrain" and found.arch == model.config.to_dict()
    assert found.mean == [0.3] and found.std == [0.2]
    x = _images(channels=1, size=8)
    assert torch.equal(found.model().eval()(x), model.eval()(x))


def test_position_embeddings_resample_to_larger_and_smaller_grids():
    # a smooth function of the patch position survives bicubic resampling
    def ramp(grid: int) -> torch.Tensor:
        centers = (torch.arange(grid) + 0.5) / grid
        yy, xx = torch.meshgrid(centers, centers, indexing="ij")
        return torch.stack([yy, xx], -1).reshape(1, grid * grid, 2)

    cls = torch.full((1, 1, 2), 7.0)
    for old, new in ((14, 24), (14, 8)):  # 224 -> 384 px at patch 16, and a 14x14 -> 8x8 grid
        out = convert.resample_pos_embed(torch.cat([cls, ramp(old)], 1), new, num_prefix=1)
        assert out.shape == (1, 1 + new * new, 2) and torch.equal(out[:, :1], cls)
        assert _max_diff(out[:, 1:], ramp(new)) < 0.02
    # a whole ViT-Ti/16 moves from 224 to 384 px
    base = create_model("vit-ti16", num_classes=3)
    sd = {k: v for k, v in base.state_dict().items()}
    adapted = convert.adapt(sd, base.config.to_dict(), {**base.config.to_dict(), "img_size": 384})
    assert adapted["pos_embed"].shape == (1, 1 + 24 * 24, 192)


def test_patch_kernels_resize_so_that_resized_patches_project_the_same():
    weight = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    bigger = convert.resample_patch_embed(weight, 16)
    patch = torch.randn(5, 3, 8, 8, dtype=torch.float64)
    upsampled = torch.nn.functional.interpolate(patch, size=(16, 16), mode="bilinear", align_corners=False)
    original = torch.einsum("ncij,dcij->nd", patch, weight)
    assert torch.allclose(torch.einsum("ncij,dcij->nd", upsampled, bigger), original, atol=1e-8)
    # a model changes patch size 8 -> 4 and still runs
    source = _timm_vit()
    found = convert.infer_arch(convert.from_timm(source.state_dict()), num_heads=2)
    adapted = convert.adapt(source.state_dict(), found, {**found, "patch_size": 4})
    assert adapted["patch_embed.proj.weight"].shape == (64, 3, 4, 4) and adapted["pos_embed"].shape[1] == 1 + 64


@torch.no_grad()
def test_a_gray_model_from_rgb_weights_sees_gray_images_as_the_rgb_model_does(tmp_path):
    source = _timm_vit()
    torch.save(source.state_dict(), tmp_path / "timm.pth")
    found = load_pretrained(str(tmp_path / "timm.pth"), num_heads=2)
    gray = found.model(in_chans=1).eval()
    x = _images(channels=1)
    assert _max_diff(gray(x), source(x.expand(-1, 3, -1, -1))) < 1e-4


def test_mismatched_weights_and_unknown_files_are_refused_clearly(tmp_path):
    source = _timm_vit()
    torch.save(source.state_dict(), tmp_path / "timm.pth")
    found = load_pretrained(str(tmp_path / "timm.pth"), num_heads=2)
    with pytest.raises(PretrainedError, match="embed_dim=64, the model embed_dim=32"):
        found.model(embed_dim=32, num_heads=2)
    torch.save({"conv.weight": torch.zeros(2)}, tmp_path / "other.pth")
    with pytest.raises(PretrainedError, match="not a ViT state dict"):
        load_pretrained(str(tmp_path / "other.pth"))
    with pytest.raises(PretrainedError, match="no such file"):
        load_pretrained(str(tmp_path / "missing.pth"))
    (tmp_path / "weights.txt").write_text("x")
    with pytest.raises(PretrainedError, match="expected a .safetensors"):
        load_pretrained(str(tmp_path / "weights.txt"))


class _Payload:
    def __reduce__(self):
        return (Path.touch, (Path(_Payload.target),))


def test_a_pickle_that_would_run_code_is_refused_and_never_runs(tmp_path):
    _Payload.target = str(tmp_path / "pwned")
    with open(tmp_path / "evil.pth", "wb") as f:
        pickle.dump({"patch_embed.proj.weight": _Payload()}, f)
    with pytest.raises(PretrainedError, match="weights_only=True"):
        load_pretrained(str(tmp_path / "evil.pth"))
    assert not (tmp_path / "pwned").exists()


def test_offline_downloads_fail_at_once_and_say_how_to_pass_a_file(monkeypatch, tmp_path):
    import urllib.error

    import huggingface_hub.constants

    from vitrain.models import pretrained

    monkeypatch.setattr(pretrained, "reachable", lambda *a, **k: False)  # as on a machine without internet
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    with pytest.raises(PretrainedError, match=r"pass --pretrained deit_tiny_patch16_224\.pth"):
        load_pretrained("timm:deit_tiny_patch16_224")
    with pytest.raises(PretrainedError, match="pass --pretrained vit-base-patch16-224"):
        load_pretrained("hf:google/vit-base-patch16-224")

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "torch-hub"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    with pytest.raises(PretrainedError, match=r"torch.save\(torchvision.models.get_model\('vit_b_16'"):
        load_pretrained("torchvision:vit_b_16")
    with pytest.raises(PretrainedError, match="timm has no model called"):
        load_pretrained("timm:no_such_model")


def test_freezing_keeps_frozen_parameters_unchanged_after_a_step():
    model = create_model("vit", **SMALL, mlp_dim=128, num_classes=3, head_hidden=16, head_dropout=0.1)
    for freeze, trained in (("backbone", ("head.",)), ("1", ("head.", "blocks.1.", "norm."))):
        trainable, total = apply_freeze(model, freeze)
        assert 0 < trainable < total
        before = {k: v.clone() for k, v in model.state_dict().items()}
        optimizer = build_optimizer(model, TrainConfig(lr=0.1, weight_decay=0.5), torch.device("cpu"))
        model.train()
        torch.nn.functional.cross_entropy(model(_images(4)), torch.tensor([0, 1, 2, 0])).backward()
        optimizer.step()
        after = model.state_dict()
        for key in before:
            changed = not torch.equal(before[key], after[key])
            assert changed == key.startswith(trained), key
    with pytest.raises(ValueError, match="only 2 blocks"):
        apply_freeze(model, "3")


def test_layer_decay_and_head_lr_set_each_groups_rate():
    model = create_model("vit", **SMALL, mlp_dim=128, num_classes=3)
    cfg = TrainConfig(lr=1.0, layer_decay=0.5, head_lr=0.01)
    optimizer = build_optimizer(model, cfg, torch.device("cpu"))
    rate = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert rate[id(named["head.weight"])] == 0.01
    assert rate[id(named["norm.weight"])] == 1.0  # depth 2: the final norm sits at layer 3 = depth + 1
    assert rate[id(named["blocks.1.mlp.fc1.weight"])] == 0.5
    assert rate[id(named["blocks.0.mlp.fc1.weight"])] == 0.25
    assert rate[id(named["pos_embed"])] == 0.125 and rate[id(named["patch_embed.proj.weight"])] == 0.125


def test_fine_tune_from_a_timm_file_end_to_end(flat_folder, tmp_path):
    source = _timm_vit()
    torch.save(source.state_dict(), tmp_path / "timm.pth")
    run = tmp_path / "run"
    args = [
        "train",
        "--data",
        str(flat_folder),
        "--pretrained",
        str(tmp_path / "timm.pth"),
        "--num-heads",
        "2",
        "--img-size",
        "16",
        "--freeze",
        "backbone",
        "--head",
        "mlp:32:0.3",
        "--optimizer",
        "adam",
        "--epochs",
        "2",
        "--batch-size",
        "8",
        "--workers",
        "0",
        "--out",
        str(run),
        "--no-progress",
    ]
    assert main(args) == 0
    report = json.loads((run / "report.json").read_text())
    assert report["model"]["head_hidden"] == 32 and report["model"]["img_size"] == 16
    config = (run / "config.yaml").read_text()
    assert "pretrained: " in config and "freeze: backbone" in config
    # the backbone in the checkpoint is the pretrained one, resampled to a 2x2 grid
    from vitrain.checkpoint import read_model_checkpoint

    weights, meta = read_model_checkpoint(run / "best.safetensors")
    assert torch.equal(weights["blocks.0.attn.qkv.weight"], source.state_dict()["blocks.0.attn.qkv.weight"])
    assert meta["mean"] == [0.485, 0.456, 0.406] and meta["pretrained"] == str(tmp_path / "timm.pth")
    assert math.isclose(meta["crop_pct"], 0.875)


def test_pretrained_weights_fix_the_width(flat_folder, tmp_path, capsys):
    source = _timm_vit()
    torch.save(source.state_dict(), tmp_path / "timm.pth")
    code = main(
        [
            "train",
            "--data",
            str(flat_folder),
            "--pretrained",
            str(tmp_path / "timm.pth"),
            "--embed-dim",
            "32",
            "--out",
            str(tmp_path / "run"),
            "--no-progress",
        ]
    )
    assert code == 2
    assert "--embed-dim 32: the weights of --pretrained" in capsys.readouterr().err


def test_the_deit_tutorial_recipe_runs_with_a_local_file(flat_folder, tmp_path):
    torch.manual_seed(0)
    deit = timm.create_model("deit_tiny_patch16_224", pretrained=False)
    torch.save(deit.state_dict(), tmp_path / "deit_tiny_patch16_224.pth")
    run = tmp_path / "run"
    # the recipe names timm:deit_tiny_patch16_224; offline, the saved file stands in for it
    assert (
        main(
            [
                "train",
                "--recipe",
                "finetune-deit",
                "--data",
                str(flat_folder),
                "--pretrained",
                str(tmp_path / "deit_tiny_patch16_224.pth"),
                "--img-size",
                "32",
                "--epochs",
                "1",
                "--workers",
                "0",
                "--out",
                str(run),
                "--no-progress",
            ]
        )
        == 0
    )
    import yaml

    cfg = yaml.safe_load((run / "config.yaml").read_text())["train"]
    assert (cfg["freeze"], cfg["head"], cfg["optimizer"], cfg["lr"]) == ("backbone", "mlp:512:0.3", "adam", 1e-3)
    assert (cfg["schedule"], cfg["step_size"], cfg["gamma"], cfg["label_smoothing"]) == ("step", 3, 0.97, 0.1)
    assert cfg["mean"] == [0.485, 0.456, 0.406] and (cfg["embed_dim"], cfg["depth"], cfg["num_heads"]) == (192, 12, 3)
    report = json.loads((run / "report.json").read_text())
    assert report["model"]["head_hidden"] == 512 and report["model"]["head_dropout"] == 0.3
