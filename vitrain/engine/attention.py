"""Attention rollout (Abnar & Zuidema, 2020): which patches the prediction draws on."""

from __future__ import annotations

import torch

from ..models.vit import VisionTransformer


def rollout(attentions: list[torch.Tensor], residual: float = 0.5) -> torch.Tensor:
    """Compose per-layer attention into token-to-input-token flow.

    Each layer's matrix is averaged over heads, mixed with the identity for the residual
    connection (``residual * I + (1 - residual) * A``), renormalized to rows of sum 1, and
    the layers are multiplied from the first to the last.

    Args:
        attentions: per layer, (B, heads, N, N) softmax attention.

    Returns:
        (B, N, N): row i says how much each input token flows into output token i.
    """
    result = None
    for layer in attentions:
        a = layer.float().mean(dim=1)
        eye = torch.eye(a.shape[-1], device=a.device).expand_as(a)
        a = residual * eye + (1 - residual) * a
        a = a / a.sum(dim=-1, keepdim=True)
        result = a if result is None else a @ result
    if result is None:
        raise ValueError("rollout needs at least one attention matrix")
    return result


@torch.inference_mode()
def attention_rollout_maps(model: VisionTransformer, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and a (B, grid, grid) rollout map per image.

    The map is the class token's row for class-token models, and the mean over all tokens'
    rows for global-average-pooled ones (their output is the mean of every token).
    """
    logits, attentions = model.forward_with_attention(images)
    flow = rollout(attentions)
    prefix = model.num_prefix_tokens
    rows = flow[:, 0, prefix:] if prefix else flow.mean(dim=1)
    grid = model.config.grid_size
    return logits, rows.reshape(-1, grid, grid)
