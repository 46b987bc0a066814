"""Convert foreign ViT state dicts (timm, torchvision) into vitrain's parameter names.

vitrain's names are timm's, so timm weights need only their optional extras dropped;
torchvision's ``VisionTransformer`` needs a key map. Both use a fused q|k|v projection in
the same order, so no tensor is reshaped.
"""

from __future__ import annotations

import re

import torch

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


def detect_format(state_dict: StateDict) -> str:
    """Name the layout of a ViT state dict: ``"vitrain"``/``"timm"``, ``"torchvision"``, or ``"unknown"``."""
    keys = set(state_dict)
    if "conv_proj.weight" in keys and "encoder.pos_embedding" in keys:
        return "torchvision"
    if "patch_embed.proj.weight" in keys and "pos_embed" in keys:
        return "timm"
    return "unknown"


def from_torchvision(state_dict: StateDict) -> StateDict:
    """Map a torchvision ``VisionTransformer`` state dict onto vitrain's names."""
    out: StateDict = {}
    block = re.compile(r"^encoder\.layers\.encoder_layer_(\d+)\.(.+)$")
    for key, value in state_dict.items():
        match = block.match(key)
        if match:
            index, rest = match.groups()
            for old, new in _TORCHVISION_BLOCK.items():
                if rest == old or rest.startswith(old + "."):
                    out[f"blocks.{index}.{new}{rest[len(old):]}"] = value
                    break
            else:
                raise KeyError(f"unexpected torchvision ViT key {key!r}")
            continue
        for old, new in _TORCHVISION_TOP.items():
            if key == old or key.startswith(old + "."):
                out[new + key[len(old):]] = value
                break
        else:
            if key.startswith("heads.pre_logits"):
                raise KeyError(
                    "torchvision ViTs with a representation layer (heads.pre_logits) are not supported"
                )
            raise KeyError(f"unexpected torchvision ViT key {key!r}")
    return out


def from_timm(state_dict: StateDict) -> StateDict:
    """Check and return the state dict of a timm ``VisionTransformer`` (its names are vitrain's).

    timm's global-average-pooled models normalize after pooling (``fc_norm``) where vitrain
    normalizes before; such weights are refused rather than converted into a different model.
    """
    extras = sorted(k for k in state_dict if k.startswith(("fc_norm.", "attn_pool.", "reg_token")))
    if extras:
        raise KeyError(f"timm ViT variant not supported by vitrain's ViT (keys {extras[:3]})")
    return dict(state_dict)
