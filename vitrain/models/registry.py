"""Named ViT sizes, and :func:`create_model`, the one way to build a model by name."""

from __future__ import annotations

from typing import Any

from .vit import VisionTransformer, ViTConfig

# name -> (architecture, one-line description). Dims follow the ViT and DeiT papers for
# the 224 px models; the small-image presets are sized to train in minutes on a CPU.
PRESETS: dict[str, tuple[dict[str, Any], str]] = {
    "vit-ti16": (
        dict(img_size=224, patch_size=16, embed_dim=192, depth=12, num_heads=3, mlp_dim=768),
        "ViT-Ti/16 (DeiT-tiny), 224 px",
    ),
    "vit-s16": (
        dict(img_size=224, patch_size=16, embed_dim=384, depth=12, num_heads=6, mlp_dim=1536),
        "ViT-S/16 (DeiT-small), 224 px",
    ),
    "vit-b16": (
        dict(img_size=224, patch_size=16, embed_dim=768, depth=12, num_heads=12, mlp_dim=3072),
        "ViT-B/16, 224 px",
    ),
    "vit-b32": (
        dict(img_size=224, patch_size=32, embed_dim=768, depth=12, num_heads=12, mlp_dim=3072),
        "ViT-B/32, 224 px",
    ),
    "vit-l16": (
        dict(img_size=224, patch_size=16, embed_dim=1024, depth=24, num_heads=16, mlp_dim=4096),
        "ViT-L/16, 224 px",
    ),
    "vit-ti4": (
        dict(img_size=32, patch_size=4, embed_dim=192, depth=12, num_heads=3, mlp_dim=768),
        "ViT-Ti dims on 32 px images with 4 px patches (64 tokens)",
    ),
    "vit-cifar": (
        dict(img_size=32, patch_size=4, embed_dim=256, depth=6, num_heads=8, mlp_dim=512),
        "the CIFAR-10 tutorial model: 32 px, patch 4, 6 layers, 256 dim",
    ),
    "vit-mini4": (
        dict(img_size=32, patch_size=4, embed_dim=128, depth=6, num_heads=4, mlp_dim=256),
        "a small 32 px model (patch 4) for quick CPU runs",
    ),
    "vit-digits": (
        dict(img_size=8, patch_size=2, embed_dim=64, depth=4, num_heads=4, mlp_dim=128, in_chans=1, pool="avg"),
        "8 px grayscale images, 2 px patches (16 tokens), average pooling: the default for `digits`",
    ),
}

ALIASES = {
    "vit_tiny_patch16_224": "vit-ti16",
    "deit_tiny_patch16_224": "vit-ti16",
    "vit_small_patch16_224": "vit-s16",
    "deit_small_patch16_224": "vit-s16",
    "vit_base_patch16_224": "vit-b16",
    "vit_b_16": "vit-b16",
    "vit_base_patch32_224": "vit-b32",
    "vit_b_32": "vit-b32",
    "vit_large_patch16_224": "vit-l16",
    "vit_l_16": "vit-l16",
}

OVERRIDE_NAMES = tuple(ViTConfig.__dataclass_fields__)


def model_names() -> list[str]:
    """The preset names, plus ``"vit"`` (explicit dims only)."""
    return ["vit", *PRESETS]


def resolve_config(name: str, **overrides: Any) -> ViTConfig:
    """The :class:`ViTConfig` for a preset name with ``overrides`` applied.

    ``"vit"`` starts from :class:`ViTConfig`'s defaults (ViT-B/16 dims) and uses only the
    overrides given. Overrides set to ``None`` are ignored.
    """
    unknown = set(overrides) - set(OVERRIDE_NAMES)
    if unknown:
        raise TypeError(f"unknown model option(s) {sorted(unknown)}; valid ones are {list(OVERRIDE_NAMES)}")
    key = ALIASES.get(name, name)
    if key == "vit":
        base: dict[str, Any] = {}
    elif key in PRESETS:
        base = dict(PRESETS[key][0])
    else:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(model_names())}")
    base.update({k: v for k, v in overrides.items() if v is not None})
    return ViTConfig(**base)


def create_model(name: str = "vit-ti16", **overrides: Any) -> VisionTransformer:
    """Build a randomly initialized ViT.

    Args:
        name: a preset from :data:`PRESETS` (``vitrain models`` lists them), a timm or
            torchvision alias such as ``"vit_b_16"``, or ``"vit"`` for explicit dims only.
        **overrides: any of ``img_size, patch_size, in_chans, num_classes, embed_dim,
            depth, num_heads, mlp_dim, dropout, drop_path, pool, stem``.

    Example:
        >>> model = create_model("vit-cifar", num_classes=10)
    """
    return VisionTransformer(resolve_config(name, **overrides))
