"""Reading vitrain's self-describing weight files, and loading weights into a model strictly.

Below the checkpoint writer (``vitrain.checkpoint``) and the pretrained-weight readers
(``vitrain.models.pretrained``), which both use it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

FORMAT = "vitrain"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable, not vitrain's, or does not fit the model."""


def read_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and the string metadata of a safetensors file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: not a readable safetensors file ({err})") from None
    return tensors, metadata


def read_model_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Weights and metadata of a vitrain model checkpoint."""
    tensors, raw = read_tensors(Path(path))
    if "vitrain" not in raw:
        raise CheckpointError(
            f"{path}: a safetensors file without vitrain metadata (not written by vitrain); "
            "foreign ViT weights are loaded through their converters instead"
        )
    meta = json.loads(raw["vitrain"])
    if meta.get("format") != FORMAT or int(meta.get("format_version", 0)) > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: unsupported checkpoint format {meta.get('format')!r} version {meta.get('format_version')!r}"
        )
    return tensors, meta


def load_weights(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Load ``state_dict`` strictly, with an error that lists mismatching keys and shapes."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    wrong = [
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(state_dict))
        if own[k].shape != state_dict[k].shape
    ]
    if missing or unexpected or wrong:
        parts = []
        if wrong:
            parts.append("shape mismatch: " + "; ".join(wrong[:4]))
        if missing:
            parts.append(f"missing keys: {', '.join(missing[:4])}" + (" ..." if len(missing) > 4 else ""))
        if unexpected:
            parts.append(f"unexpected keys: {', '.join(unexpected[:4])}" + (" ..." if len(unexpected) > 4 else ""))
        raise CheckpointError(f"{source} does not match the model: " + "; ".join(parts))
    model.load_state_dict(state_dict)
