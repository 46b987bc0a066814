"""The ViT itself: shapes for every preset, options, and parity with torchvision and timm."""

from __future__ import annotations

import pytest
import torch
import torchvision

import vitrain
from vitrain.models import PRESETS, ViTConfig, convert, create_model, resolve_config
from vitrain.models.convert import detect_format, from_timm, from_torchvision


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_gives_logits_of_the_right_shape(name):
    cfg = resolve_config(name, num_classes=7)
    model = create_model(name, num_classes=7).eval()
    x = torch.randn(2, cfg.in_chans, cfg.img_size, cfg.img_size)
    with torch.inference_mode():
        assert model(x).shape == (2, 7)
        tokens = model.forward_features(x)
    assert tokens.shape == (2, cfg.grid_size**2 + (cfg.pool == "cls"), cfg.embed_dim)


def test_vit_large_preset_has_the_papers_parameter_count():
    # building ViT-L (300M parameters) on the meta device costs no memory
    with torch.device("meta"):
        model = create_model("vit-l16")
    assert sum(p.numel() for p in model.parameters()) == 304_326_632  # ViT-L/16, 1000 classes


def test_vit_base_parameter_count_matches_torchvision():
    ours = sum(p.numel() for p in create_model("vit-b16").parameters())
    theirs = sum(p.numel() for p in torchvision.models.vit_b_16().parameters())
    assert ours == theirs == 86_567_656


@pytest.mark.parametrize("in_chans", [1, 3])
@pytest.mark.parametrize("pool", ["cls", "avg"])
def test_any_size_patch_channels_and_pooling(in_chans, pool):
    model = create_model(
        "vit",
        img_size=40,
        patch_size=8,
        in_chans=in_chans,
        num_classes=3,
        embed_dim=32,
        depth=2,
        num_heads=4,
        mlp_dim=64,
        pool=pool,
    )
    out = model(torch.randn(3, in_chans, 40, 40))
    assert out.shape == (3, 3)
    assert (model.cls_token is None) == (pool == "avg")
    assert model.pos_embed.shape == (1, 25 + (pool == "cls"), 32)


@pytest.mark.parametrize("patch_size", [2, 4, 8])
def test_conv_stem_gives_the_same_token_grid_as_the_patch_embedding(patch_size):
    kw = dict(img_size=32, patch_size=patch_size, num_classes=5, embed_dim=64, depth=1, num_heads=2, mlp_dim=64)
    conv, patch = create_model("vit", stem="conv", **kw), create_model("vit", **kw)
    x = torch.randn(2, 3, 32, 32)
    assert conv.patch_embed(x).shape == patch.patch_embed(x).shape == (2, (32 // patch_size) ** 2, 64)
    strides = [m.stride for m in conv.patch_embed.modules() if isinstance(m, torch.nn.Conv2d)]
    assert strides == [(2, 2)] * (patch_size.bit_length() - 1) + [(1, 1)]  # then the 1x1 projection
    assert conv(x).shape == (2, 5)
    assert ViTConfig(**conv.config.to_dict()).stem == "conv"


def test_stem_width_sets_the_conv_stems_channels_and_weights_record_it():
    kw = dict(img_size=32, patch_size=8, num_classes=5, embed_dim=128, depth=1, num_heads=2, mlp_dim=64, stem="conv")
    default, wide = create_model("vit", **kw), create_model("vit", stem_width=32, **kw)

    def widths(model):
        return [m.out_channels for m in model.patch_embed.stem if isinstance(m, torch.nn.Conv2d)]

    assert widths(default) == [16, 32, 64] and widths(wide) == [32, 64, 128]
    assert wide(torch.randn(2, 3, 32, 32)).shape == (2, 5)
    assert convert.infer_arch(default.state_dict(), 2)["stem_width"] == 0
    assert convert.infer_arch(wide.state_dict(), 2)["stem_width"] == 32
    with pytest.raises(ValueError, match="stem_width"):  # fitting weights to another stem is refused
        convert.adapt(wide.state_dict(), wide.config.to_dict(), default.config.to_dict())


def test_wrong_input_shape_is_a_clear_error():
    model = create_model("vit-digits", num_classes=10)
    with pytest.raises(ValueError, match=r"expected input of shape \(B, 1, 8, 8\)"):
        model(torch.randn(1, 3, 8, 8))


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"img_size": 30, "patch_size": 4}, "not divisible by patch_size"),
        ({"embed_dim": 30, "num_heads": 4}, "not divisible by num_heads"),
        ({"in_chans": 2}, "in_chans must be 1 or 3"),
        ({"pool": "max"}, "pool must be"),
        ({"drop_path": 1.5}, "drop_path"),
        ({"stem": "resnet"}, "stem must be"),
        ({"stem": "conv", "stem_width": -1}, "stem_width must be >= 0"),
        ({"stem": "patch", "stem_width": 32}, "needs stem='conv'"),
        ({"stem": "conv", "img_size": 24, "patch_size": 3}, "power-of-2 patch_size"),
    ],
)
def test_invalid_architectures_are_refused(overrides, message):
    with pytest.raises(ValueError, match=message):
        create_model("vit-mini4", **overrides)


def test_unknown_names_and_options_are_refused():
    with pytest.raises(ValueError, match="unknown model 'vit-huge'"):
        create_model("vit-huge")
    with pytest.raises(TypeError, match="unknown model option"):
        create_model("vit-ti16", hidden_size=3)


def test_vit_name_uses_only_explicit_dims_and_aliases_resolve():
    cfg = resolve_config("vit", img_size=32, patch_size=4, embed_dim=48, depth=3, num_heads=3, mlp_dim=96)
    assert (cfg.embed_dim, cfg.depth, cfg.num_heads, cfg.mlp_dim, cfg.img_size) == (48, 3, 3, 96, 32)
    assert resolve_config("vit_b_16") == resolve_config("vit-b16")


def test_dropout_and_drop_path_only_act_in_training():
    model = create_model("vit-mini4", num_classes=4, dropout=0.3, drop_path=0.3)
    x = torch.randn(4, 3, 32, 32)
    model.eval()
    assert torch.equal(model(x), model(x))
    model.train()
    assert not torch.equal(model(x), model(x))
    rates = [getattr(b.drop_path, "p", 0.0) for b in model.blocks]
    assert rates[0] == 0 and rates[-1] == pytest.approx(0.3)  # linear in depth


@pytest.mark.parametrize("pool,distilled", [("cls", False), ("cls", True), ("avg", False)])
def test_the_training_path_gives_the_full_computations_logits_and_gradients(pool, distilled):
    # forward() computes only the prefix tokens in the last block and, on CPU with autograd,
    # attention per head; forward_features() runs every row, and under no_grad it uses SDPA
    torch.manual_seed(0)
    model = create_model("vit-mini4", num_classes=4, pool=pool, distilled=distilled)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        reference = model.forward_head(model.forward_features(x))
    logits = model(x)
    torch.testing.assert_close(logits, reference, rtol=1e-5, atol=1e-6)
    logits.square().sum().backward()
    fast = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    model.forward_head(model.forward_features(x)).square().sum().backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(fast[name], p.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_no_weight_decay_and_reset_classifier():
    model = create_model("vit-mini4", num_classes=4)
    assert model.no_weight_decay() == {"pos_embed", "cls_token", "dist_token"}
    model.reset_classifier(9)
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 9)
    assert model.config.num_classes == 9


def test_same_seed_same_weights():
    torch.manual_seed(3)
    a = vitrain.create_model("vit-mini4")
    torch.manual_seed(3)
    b = vitrain.create_model("vit-mini4")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def _randomize_head(linear: torch.nn.Linear) -> None:
    # both libraries may zero-initialize the head, which would make any two models "agree"
    torch.nn.init.normal_(linear.weight, std=0.05)
    torch.nn.init.normal_(linear.bias, std=0.05)


def _torchvision_vit_b_16():
    model = torchvision.models.vit_b_16()
    return model, model.heads.head


def _timm_vit_tiny():
    timm = pytest.importorskip("timm")
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False)
    return model, model.head


@pytest.mark.parametrize(
    "build_reference, fmt, preset, convert",
    [
        (_torchvision_vit_b_16, "torchvision", "vit-b16", from_torchvision),
        (_timm_vit_tiny, "timm", "vit-ti16", from_timm),
    ],
    ids=["torchvision-vit_b_16", "timm-vit_tiny_patch16_224"],
)
def test_parity_with_reference_implementations(build_reference, fmt, preset, convert):
    torch.manual_seed(0)
    reference, head = build_reference()
    _randomize_head(head)
    state = reference.state_dict()
    assert detect_format(state) == fmt
    ours = create_model(preset)
    ours.load_state_dict(convert(state))
    x = torch.randn(2, 3, 224, 224)
    with torch.inference_mode():
        expected, got = reference.eval()(x), ours.eval()(x)
    assert expected.std() > 0.1  # the comparison has signal
    assert (expected - got).abs().max() < 1e-4


def test_timm_variants_that_differ_are_refused_not_converted():
    with pytest.raises(KeyError, match="not supported"):
        from_timm({"fc_norm.weight": torch.zeros(3), "pos_embed": torch.zeros(1)})


def test_config_round_trips_through_dict():
    cfg = resolve_config("vit-cifar", num_classes=10)
    assert ViTConfig(**cfg.to_dict()) == cfg


@pytest.mark.parametrize("stem", ["patch", "conv"])
def test_whiten_stem_starts_the_first_convolution_whitened_and_centered(stem):
    model = create_model("vit", img_size=16, patch_size=4, stem=stem, embed_dim=32, depth=1, num_heads=2, mlp_dim=32)
    # smooth images with correlated channels: patches whose covariance is far from the identity
    base = torch.nn.functional.interpolate(torch.randn(64, 1, 4, 4, generator=torch.Generator().manual_seed(0)), 16)
    images = torch.cat([base, 0.5 * base + 0.1, base.flip(-1)], 1) + 0.3 * torch.randn(64, 3, 16, 16)
    conv = model.patch_embed.first_conv
    count = model.whiten_stem(images, eps=1e-9)
    assert count == min(conv.out_channels, 2 * conv.in_channels * conv.kernel_size[0] ** 2)
    with torch.no_grad():
        out = conv(images)[:, :count].transpose(0, 1).flatten(1).double()  # (filters, positions)
    if conv.bias is not None:
        assert out.mean(1).abs().max() < 1e-3
    half = count // 2
    cov = torch.cov(out[:half])
    assert torch.allclose(cov, torch.eye(half, dtype=cov.dtype), atol=2e-3)
    assert torch.equal(conv.weight[half:count], -conv.weight[:half])
