"""Freezing parts of a pretrained ViT for fine-tuning (``--freeze``).

* ``none``: everything trains;
* ``backbone``: only the classifier head(s) train (linear probing, or an MLP head);
* ``N``: the last N encoder blocks, the final norm and the head(s) train.

Frozen parameters get ``requires_grad = False``, so the optimizer never sees them and
autograd builds no graph through a frozen backbone. Frozen BatchNorm layers (in a conv
stem) are kept in eval mode, so their running statistics do not drift either.
"""

from __future__ import annotations

from torch import nn

HEAD_PREFIXES = ("head.", "head_dist.")


def trainable(name: str, freeze: str, depth: int) -> bool:
    """Whether parameter ``name`` trains under ``freeze`` in a model of ``depth`` blocks."""
    if freeze == "none" or name.startswith(HEAD_PREFIXES):
        return True
    if freeze == "backbone":
        return False
    last = int(freeze)
    if name.startswith("blocks."):
        return int(name.split(".")[1]) >= depth - last
    return last > 0 and name.startswith("norm.")


def apply_freeze(model: nn.Module, freeze: str) -> tuple[int, int]:
    """Set ``requires_grad`` as ``freeze`` says; returns (trainable, total) parameter counts."""
    depth = len(model.blocks)
    if freeze not in ("none", "backbone") and int(freeze) > depth:
        raise ValueError(f"--freeze {freeze}: the model has only {depth} blocks")
    n_train = total = 0
    for name, param in model.named_parameters():
        param.requires_grad_(trainable(name, freeze, depth))
        total += param.numel()
        n_train += param.numel() if param.requires_grad else 0
    return n_train, total


def train_mode(model: nn.Module) -> nn.Module:
    """``model.train()``, except normalization layers whose parameters are all frozen stay in eval mode."""
    model.train()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            if not any(p.requires_grad for p in module.parameters()):
                module.eval()
    return model
