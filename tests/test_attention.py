"""Attention weights and rollout, checked against direct computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vitrain.engine.attention import attention_rollout_maps, rollout
from vitrain.models import create_model


def _tiny(pool: str):
    torch.manual_seed(0)
    return create_model(
        "vit",
        img_size=8,
        patch_size=2,
        in_chans=1,
        num_classes=3,
        embed_dim=16,
        depth=3,
        num_heads=2,
        mlp_dim=32,
        pool=pool,
    ).eval()


def _direct_attention(model, x: torch.Tensor) -> list[np.ndarray]:
    """Each block's softmax(q k^T / sqrt(d)) written out from the weights, independently of the model's code."""
    maps = []
    tokens = model.embed(x)
    for block in model.blocks:
        h = block.norm1(tokens)
        w, b = block.attn.qkv.weight, block.attn.qkv.bias
        dim, heads = h.shape[-1], block.attn.num_heads
        q = (h @ w[:dim].T + b[:dim]).reshape(*h.shape[:2], heads, -1).transpose(1, 2)
        k = (h @ w[dim : 2 * dim].T + b[dim : 2 * dim]).reshape(*h.shape[:2], heads, -1).transpose(1, 2)
        scores = (q @ k.transpose(-1, -2)).numpy() / np.sqrt(q.shape[-1])
        e = np.exp(scores - scores.max(-1, keepdims=True))
        maps.append(e / e.sum(-1, keepdims=True))
        tokens = block(tokens)
    return maps


@pytest.mark.parametrize("pool", ["cls", "avg"])
def test_rollout_matches_a_direct_computation(pool):
    model = _tiny(pool)
    x = torch.randn(2, 1, 8, 8)
    with torch.inference_mode():
        logits, maps = attention_rollout_maps(model, x)
        direct = _direct_attention(model, x)
    # Abnar & Zuidema: A' = 0.5 A + 0.5 I, rows renormalized, multiplied from the first layer up
    flow = None
    for a in direct:
        a = 0.5 * a.mean(axis=1) + 0.5 * np.eye(a.shape[-1])
        a = a / a.sum(-1, keepdims=True)
        flow = a if flow is None else np.einsum("bij,bjk->bik", a, flow)
    expected = flow[:, 0, 1:] if pool == "cls" else flow.mean(axis=1)
    assert maps.shape == (2, 4, 4)
    np.testing.assert_allclose(maps.reshape(2, -1).numpy(), expected, rtol=1e-5, atol=1e-6)
    assert torch.allclose(logits, model(x), atol=1e-6)


def test_attention_weights_are_what_the_fused_kernel_applies():
    model = _tiny("cls")
    attn = model.blocks[0].attn
    h = torch.randn(2, 17, 16)
    with torch.inference_mode():
        weights = attn.attention_weights(h)
        v = attn.qkv(h)[..., 32:].reshape(2, 17, 2, 8).transpose(1, 2)
        manual = attn.proj((weights @ v).transpose(1, 2).reshape(2, 17, 16))
        assert torch.allclose(manual, attn(h), atol=1e-5)
    assert torch.allclose(weights.sum(-1), torch.ones(2, 2, 17))


def test_rollout_of_identity_attention_is_identity():
    eye = torch.eye(5).expand(1, 3, 5, 5)
    assert torch.allclose(rollout([eye, eye]), torch.eye(5).expand(1, 5, 5))
    with pytest.raises(ValueError):
        rollout([])
