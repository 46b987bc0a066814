"""``--device``: which torch device a command runs on (kept light: ``vitrain predict`` and
``eval`` import it without the training engine)."""

from __future__ import annotations

import torch

from ..config import ConfigError


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; an unavailable CUDA request is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: CUDA is not available on this machine (use --device cpu)")
    return torch.device(name)
