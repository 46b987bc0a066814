"""Convert foreign ViT state dicts (timm, torchvision, Hugging Face) into vitrain's, and adapt them.

One converter per layout, each returning a state dict in vitrain's parameter names:

* timm: vitrain's names are timm's, so only unsupported variants are refused;
* torchvision: a key map; the fused q|k|v projection has the same order;
* Hugging Face ``transformers`` (ViT and DeiT, both the classic ``encoder.layer.N`` names
  of Hub checkpoints and the ``layers.N`` names of transformers 5): separate q, k, v
  projections are concatenated into one.

:func:`infer_arch` reads the architecture back from tensor shapes, and :func:`adapt`
fits weights to a model of another input size, patch size or channel count (bicubic
position-embedding resampling, pseudo-inverse patch-kernel resizing, summed RGB kernels).
"""

from __future__ import annotations

import math
import re
from typing import Any

import torch
import torch.nn.functional as F

from .stem import stem_channels

StateDict = dict[str, torch.Tensor]

_TORCHVISION_BLOCK = {
    "ln_1": "norm1",
    "ln_2": "norm2",
    "self_attention.in_proj_weight": "attn.qkv.weight",
    "self_attention.in_proj_bias": "attn.qkv.bias",
    "self_attention.out_proj": "attn.proj",
    # torchvision >= 0.13 names the MLP layers by index; older releases used linear_1/2
    "mlp.0": "mlp.fc1",
    "mlp.3": "mlp.fc2",
    "mlp.linear_1": "mlp.fc1",
    "mlp.linear_2": "mlp.fc2",
}
_TORCHVISION_TOP = {
    "conv_proj": "patch_embed.proj",
    "class_token": "cls_token",
    "encoder.pos_embedding": "pos_embed",
    "encoder.ln": "norm",
    "heads.head": "head",
}
# Hugging Face names -> vitrain's, inside one encoder layer; q/k/v are fused separately
_HF_BLOCK = {
    "layernorm_before": "norm1",
    "layernorm_after": "norm2",
    "attention.output.dense": "attn.proj",  # Hub checkpoints (transformers < 5)
    "attention.o_proj": "attn.proj",  # transformers 5
    "intermediate.dense": "mlp.fc1",
    "output.dense": "mlp.fc2",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}
_HF_QKV = {
    "attention.attention.query": "q",
    "attention.attention.key": "k",
    "attention.attention.value": "v",
    "attention.q_proj": "q",
    "attention.k_proj": "k",
    "attention.v_proj": "v",
}
_HF_TOP = {
    "embeddings.cls_token": "cls_token",
    "embeddings.distillation_token": "dist_token",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.patch_embeddings.projection": "patch_embed.proj",
    "layernorm": "norm",
    "classifier": "head",
    "cls_classifier": "head",
    "distillation_classifier": "head_dist",
}
_HF_DROPPED = ("pooler.", "embeddings.mask_token")  # not used by image classification


def detect_format(state_dict: StateDict) -> str:
    """Name the layout of a ViT state dict from its keys.

    Returns ``"vitrain"`` (timm's names plus vitrain-only parts such as the conv stem or
    an MLP head), ``"timm"``, ``"torchvision"``, ``"huggingface"`` or ``"unknown"``.
    """
    keys = set(state_dict)
    if "conv_proj.weight" in keys and "encoder.pos_embedding" in keys:
        return "torchvision"
    if any(re.fullmatch(r"((vit|deit)\.)?embeddings\.patch_embeddings\.projection\.weight", k) for k in keys):
        return "huggingface"
    if "pos_embed" in keys and ("patch_embed.proj.weight" in keys):
        if any(k.startswith(("patch_embed.stem.", "head.0.")) for k in keys):
            return "vitrain"
        return "timm"
    return "unknown"


def _rename(name: str, table: dict[str, str]) -> str | None:
    """``name`` with the first matching prefix (a whole dotted part) of ``table`` replaced, or None."""
    for old, new in table.items():
        if name == old or name.startswith(old + "."):
            return new + name[len(old) :]
    return None


def from_torchvision(state_dict: StateDict) -> StateDict:
    """Map a torchvision ``VisionTransformer`` state dict onto vitrain's names."""
    out: StateDict = {}
    block = re.compile(r"^encoder\.layers\.encoder_layer_(\d+)\.(.+)$")
    for key, value in state_dict.items():
        match = block.match(key)
        if match:
            index, rest = match.groups()
            renamed = _rename(rest, _TORCHVISION_BLOCK)
            if renamed is None:
                raise KeyError(f"unexpected torchvision ViT key {key!r}")
            out[f"blocks.{index}.{renamed}"] = value
            continue
        renamed = _rename(key, _TORCHVISION_TOP)
        if renamed is None:
            if key.startswith("heads.pre_logits"):
                raise KeyError("torchvision ViTs with a representation layer (heads.pre_logits) are not supported")
            raise KeyError(f"unexpected torchvision ViT key {key!r}")
        out[renamed] = value
    return out


def from_timm(state_dict: StateDict) -> StateDict:
    """Check and return the state dict of a timm ``VisionTransformer`` (its names are vitrain's).

    DeiT's distilled models (``dist_token``, ``head_dist``) map one to one. timm variants
    vitrain's ViT does not have (post-pooling ``fc_norm``, attention pooling, register
    tokens, layer scale, q/k norms, a pre-norm) are refused rather than converted into a
    different model.
    """
    extras = sorted(
        k
        for k in state_dict
        if k.startswith(("fc_norm.", "attn_pool.", "reg_token", "norm_pre."))
        or re.search(r"\.(ls1|ls2|q_norm|k_norm)\.", k)
    )
    if extras:
        raise KeyError(f"timm ViT variant not supported by vitrain's ViT (keys {extras[:3]})")
    return dict(state_dict)


def from_huggingface(state_dict: StateDict) -> StateDict:
    """Map a Hugging Face ``ViTFor...``/``DeiTFor...`` (or bare ``ViTModel``) state dict onto vitrain's names."""
    out: StateDict = {}
    qkv: dict[str, dict[str, dict[str, torch.Tensor]]] = {}  # block -> weight/bias -> q/k/v
    block = re.compile(r"^(?:encoder\.layer|layers)\.(\d+)\.(.+)\.(weight|bias)$")
    for key, value in state_dict.items():
        name = re.sub(r"^(vit|deit)\.", "", key)
        if name.startswith(_HF_DROPPED):
            continue
        match = block.match(name)
        if match:
            index, part, kind = match.groups()
            if part in _HF_QKV:
                qkv.setdefault(index, {}).setdefault(kind, {})[_HF_QKV[part]] = value
            elif part in _HF_BLOCK:
                out[f"blocks.{index}.{_HF_BLOCK[part]}.{kind}"] = value
            else:
                raise KeyError(f"unexpected Hugging Face ViT key {key!r}")
            continue
        renamed = _rename(name, _HF_TOP)
        if renamed is None:
            raise KeyError(f"unexpected Hugging Face ViT key {key!r}")
        out[renamed] = value
    for index, kinds in qkv.items():
        for kind, parts in kinds.items():
            if set(parts) != {"q", "k", "v"}:
                raise KeyError(f"Hugging Face ViT layer {index} lacks some of query/key/value {kind}")
            out[f"blocks.{index}.attn.qkv.{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return out


def to_huggingface(state_dict: StateDict, hf_keys) -> StateDict:
    """vitrain's weights under the names of a ``transformers`` ViT whose state dict has ``hf_keys``.

    The inverse of :func:`from_huggingface` for whichever naming the installed ``transformers``
    uses (``encoder.layer.N`` or ``layers.N``): the fused q|k|v projection is split in three.
    """
    out: StateDict = {}
    block = re.compile(r"^(?:encoder\.layer|layers)\.(\d+)\.(.+)\.(weight|bias)$")
    for key in hf_keys:
        name = re.sub(r"^(vit|deit)\.", "", key)
        match = block.match(name)
        if match:
            index, part, kind = match.groups()
            if part in _HF_QKV:
                qkv = state_dict[f"blocks.{index}.attn.qkv.{kind}"]
                out[key] = qkv.chunk(3)["qkv".index(_HF_QKV[part])]
                continue
            ours = f"blocks.{index}.{_HF_BLOCK[part]}.{kind}" if part in _HF_BLOCK else None
        else:
            ours = _rename(name, _HF_TOP)
        if ours is None or ours not in state_dict:
            raise KeyError(f"no vitrain weight for the Hugging Face ViT key {key!r}")
        out[key] = state_dict[ours]
    return out


CONVERTERS = {"timm": from_timm, "vitrain": dict, "torchvision": from_torchvision, "huggingface": from_huggingface}


def timm_args(config: Any) -> dict[str, Any]:
    """The keyword arguments of timm's ``VisionTransformer`` that build the model a
    :class:`~vitrain.models.vit.ViTConfig` describes (same parameter names, same outputs).

    Models with a conv stem or an MLP head have no timm equivalent; callers refuse them first.
    """
    return dict(
        img_size=config.img_size,
        patch_size=config.patch_size,
        in_chans=config.in_chans,
        num_classes=config.num_classes,
        embed_dim=config.embed_dim,
        depth=config.depth,
        num_heads=config.num_heads,
        mlp_ratio=config.mlp_dim / config.embed_dim,
        qkv_bias=True,
        class_token=config.pool == "cls",
        global_pool="token" if config.pool == "cls" else "avg",
        fc_norm=False,  # vitrain normalizes the tokens, then pools
    )


def to_vitrain(state_dict: StateDict) -> tuple[StateDict, str]:
    """Detect the layout and convert; returns (vitrain state dict, layout name)."""
    layout = detect_format(state_dict)
    if layout == "unknown":
        sample = ", ".join(sorted(state_dict)[:5])
        raise KeyError(
            f"not a ViT state dict vitrain can read (timm, torchvision, Hugging Face or vitrain "
            f"layout); its first keys are: {sample}"
        )
    return CONVERTERS[layout](state_dict), layout


def infer_arch(state_dict: StateDict, num_heads: int | None = None) -> dict[str, Any]:
    """The :class:`~vitrain.models.vit.ViTConfig` fields a vitrain-named state dict implies.

    Everything follows from tensor shapes except the number of heads, which no shape
    records: ``num_heads`` when given, else one head per 64 dimensions (true of every
    ViT/DeiT size from Ti to H).
    """
    conv_stem = "patch_embed.stem.0.weight" in state_dict
    blocks = {int(m.group(1)) for k in state_dict if (m := re.match(r"blocks\.(\d+)\.", k))}
    if not blocks or "pos_embed" not in state_dict:
        raise KeyError("no encoder blocks or position embedding in the weights")
    proj = state_dict["patch_embed.proj.weight"]
    dim = proj.shape[0]
    stem_width = 0
    if conv_stem:
        n_convs = len(
            [k for k in state_dict if re.fullmatch(r"patch_embed\.stem\.\d+\.weight", k) and state_dict[k].ndim == 4]
        )
        patch, in_chans = 2**n_convs, state_dict["patch_embed.stem.0.weight"].shape[1]
        stem_width = _stem_width([state_dict[f"patch_embed.stem.{3 * i}.weight"].shape[0] for i in range(n_convs)], dim)
    else:
        patch, in_chans = proj.shape[-1], proj.shape[1]
    distilled = "dist_token" in state_dict
    prefix = ("cls_token" in state_dict) + distilled
    grid = math.isqrt(state_dict["pos_embed"].shape[1] - prefix)
    head_hidden = state_dict["head.0.weight"].shape[0] if "head.0.weight" in state_dict else 0
    head = state_dict.get("head.3.weight", state_dict.get("head.weight"))
    return {
        "img_size": grid * patch,
        "patch_size": patch,
        "in_chans": in_chans,
        "num_classes": head.shape[0] if head is not None else 1000,
        "embed_dim": dim,
        "depth": max(blocks) + 1,
        "num_heads": num_heads or max(1, dim // 64),
        "mlp_dim": state_dict["blocks.0.mlp.fc1.weight"].shape[0],
        "pool": "cls" if prefix else "avg",
        "stem": "conv" if conv_stem else "patch",
        "stem_width": stem_width,
        "distilled": distilled,
        "head_hidden": head_hidden,
    }


def _stem_width(widths: list[int], dim: int) -> int:
    """The ``stem_width`` a conv stem with these convolution widths has (0: the default widths)."""
    if widths == stem_channels(dim, len(widths)):
        return 0
    if widths == stem_channels(dim, len(widths), widths[0]):
        return widths[0]
    raise KeyError(f"a conv stem of widths {widths}: vitrain's conv stems double their width at each convolution")


def resample_pos_embed(pos_embed: torch.Tensor, grid: int, num_prefix: int) -> torch.Tensor:
    """Bicubically resample (1, prefix + g*g, D) position embeddings to a ``grid`` x ``grid`` patch grid."""
    prefix, patches = pos_embed[:, :num_prefix], pos_embed[:, num_prefix:]
    old = math.isqrt(patches.shape[1])
    if old == grid:
        return pos_embed
    dim = patches.shape[-1]
    image = patches.reshape(1, old, old, dim).permute(0, 3, 1, 2).float()
    image = F.interpolate(image, size=(grid, grid), mode="bicubic", align_corners=False, antialias=grid < old)
    patches = image.permute(0, 2, 3, 1).reshape(1, grid * grid, dim).to(pos_embed.dtype)
    return torch.cat([prefix, patches], dim=1)


def resample_patch_embed(weight: torch.Tensor, patch: int) -> torch.Tensor:
    """Resize (D, C, p, p) patch-embedding kernels to ``patch`` x ``patch``.

    Pseudo-inverse resizing (FlexiViT, Beyer et al. 2023): with B the bilinear resize from
    p x p to ``patch`` x ``patch`` patches, the new kernel is pinv(B^T) w, so a resized patch
    projects (nearly) as the original did -- plain interpolation of the kernel would not.
    """
    old = weight.shape[-1]
    if old == patch:
        return weight
    basis = torch.eye(old * old, dtype=torch.float64).reshape(old * old, 1, old, old)
    resize = F.interpolate(basis, size=(patch, patch), mode="bilinear", align_corners=False)
    resize = resize.reshape(old * old, patch * patch).T  # B: new pixels x old pixels
    flat = weight.reshape(-1, old * old).double()  # (D*C, old*old)
    new = flat @ torch.linalg.pinv(resize)  # w' = pinv(B^T) w, written for row vectors
    return new.reshape(*weight.shape[:2], patch, patch).to(weight.dtype)


def adapt(state_dict: StateDict, source: dict[str, Any], target: dict[str, Any]) -> StateDict:
    """Fit weights of architecture ``source`` to a model of architecture ``target`` (both ViTConfig dicts).

    Handles a different input size or patch size (position embeddings resampled; patch
    kernels resized), a 1-channel target from RGB weights (the RGB kernels summed: a gray
    image repeated on three channels gives the same projection), and drops the classifier
    head(s), which the caller replaces for the new classes. Anything else that differs
    (width, depth, stem) is an error.
    """
    for name in ("embed_dim", "depth", "mlp_dim", "stem", "stem_width", "pool", "distilled"):
        if source.get(name) != target.get(name):
            raise ValueError(
                f"the pretrained weights have {name}={source.get(name)!r}, the model "
                f"{name}={target.get(name)!r}; only the input size, patch size and "
                "channels can differ"
            )
    out = {k: v for k, v in state_dict.items() if not k.startswith(("head.", "head_dist."))}
    if source["patch_size"] != target["patch_size"]:
        if source["stem"] == "conv":
            raise ValueError("a conv-stem model's patch size cannot change")
        out["patch_embed.proj.weight"] = resample_patch_embed(out["patch_embed.proj.weight"], target["patch_size"])
    grid = target["img_size"] // target["patch_size"]
    prefix = (target["pool"] == "cls") + bool(target.get("distilled"))
    out["pos_embed"] = resample_pos_embed(out["pos_embed"], grid, prefix)
    first = "patch_embed.stem.0.weight" if source["stem"] == "conv" else "patch_embed.proj.weight"
    if source["in_chans"] != target["in_chans"]:
        if (source["in_chans"], target["in_chans"]) != (3, 1):
            raise ValueError(
                f"cannot turn {source['in_chans']}-channel weights into a {target['in_chans']}-channel model"
            )
        out[first] = out[first].sum(dim=1, keepdim=True)
    return out
