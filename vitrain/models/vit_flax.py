"""The Vision Transformer of :mod:`vitrain.models.vit`, written in Flax NNX for the JAX backend.

The same architecture, option for option (:class:`~vitrain.models.vit.ViTConfig`): a
patchifying or convolutional stem, a class token (plus DeiT's distillation token) or
average pooling, learnable position embeddings, pre-LayerNorm blocks with dropout and
stochastic depth, a final LayerNorm and a linear or MLP head. Images come in the PyTorch
layout (B, C, H, W) and are turned channels-last inside. Randomness (dropout, drop path)
comes from the ``rngs`` passed to each call, so a jitted step derives it from a key.

:func:`to_torch_state` and :func:`load_torch_state` convert to and from the PyTorch
model's tensor names and layouts (``blocks.0.attn.qkv.weight`` ...), which is what every
vitrain checkpoint holds, whichever backend trained it. Parameters are float32; ``dtype``
is the compute type (bfloat16 on accelerators that have it).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from .vit import ViTConfig

_init = nnx.initializers.truncated_normal(0.02)
_zeros = nnx.initializers.zeros_init()


def _linear(d_in: int, d_out: int, rngs: nnx.Rngs, dtype: Any) -> nnx.Linear:
    return nnx.Linear(d_in, d_out, kernel_init=_init, bias_init=_zeros, dtype=dtype, rngs=rngs)


def _layer_norm(dim: int, eps: float, rngs: nnx.Rngs, dtype: Any) -> nnx.LayerNorm:
    return nnx.LayerNorm(dim, epsilon=eps, use_fast_variance=False, dtype=dtype, rngs=rngs)


class PatchEmbed(nnx.Module):
    """Non-overlapping patches, each projected to ``embed_dim`` (a strided convolution)."""

    def __init__(self, cfg: ViTConfig, rngs: nnx.Rngs, dtype: Any) -> None:
        p = cfg.patch_size
        self.proj = nnx.Conv(
            cfg.in_chans, cfg.embed_dim, (p, p), strides=(p, p), padding="VALID",
            kernel_init=_init, bias_init=_zeros, dtype=dtype, rngs=rngs,
        )  # fmt: skip

    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        """(B, H, W, C) -> (B, patches, embed_dim)."""
        x = self.proj(x)
        return x.reshape(x.shape[0], -1, x.shape[-1])


class BatchNorm(nnx.Module):
    """``torch.nn.BatchNorm2d`` over channels-last maps: normalizes with the batch's (biased) variance and keeps
    running statistics with the unbiased one, momentum 0.1, as PyTorch does (Flax's BatchNorm keeps the biased one).
    """

    def __init__(self, channels: int, dtype: Any, eps: float = 1e-5, momentum: float = 0.1) -> None:
        self.eps, self.momentum, self.dtype = eps, momentum, dtype
        self.scale, self.bias = nnx.Param(jnp.ones(channels)), nnx.Param(jnp.zeros(channels))
        self.mean, self.var = nnx.BatchStat(jnp.zeros(channels)), nnx.BatchStat(jnp.ones(channels))

    def __call__(self, x: jax.Array, use_running_average: bool) -> jax.Array:
        if use_running_average:
            mean, var = self.mean[...], self.var[...]
        else:
            x32 = x.astype(jnp.float32)
            mean = x32.mean(axis=(0, 1, 2))
            var = ((x32 - mean) ** 2).mean(axis=(0, 1, 2))
            n = x.size // x.shape[-1]
            m = self.momentum
            self.mean[...] = (1 - m) * self.mean[...] + m * mean
            self.var[...] = (1 - m) * self.var[...] + m * var * n / max(n - 1, 1)
        y = (x.astype(jnp.float32) - mean) * jax.lax.rsqrt(var + self.eps) * self.scale[...] + self.bias[...]
        return y.astype(self.dtype)


class ConvStem(nnx.Module):
    """``log2(patch_size)`` stride-2 3x3 convolutions (``cfg.stem_channels()`` wide) with BatchNorm and ReLU,
    then a 1x1 projection."""

    def __init__(self, cfg: ViTConfig, rngs: nnx.Rngs, dtype: Any) -> None:
        channels, convs, norms = cfg.in_chans, [], []
        for out in cfg.stem_channels():
            convs.append(
                nnx.Conv(
                    channels,
                    out,
                    (3, 3),
                    strides=(2, 2),
                    padding=((1, 1), (1, 1)),
                    use_bias=False,
                    kernel_init=_init,
                    dtype=dtype,
                    rngs=rngs,
                )  # fmt: skip
            )
            norms.append(BatchNorm(out, dtype))
            channels = out
        self.convs, self.norms = nnx.List(convs), nnx.List(norms)
        self.frozen = False  # True: the norms keep their running statistics while training (a frozen stem)
        self.proj = nnx.Conv(
            channels, cfg.embed_dim, (1, 1), kernel_init=_init, bias_init=_zeros, dtype=dtype, rngs=rngs
        )

    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        """(B, H, W, C) -> (B, patches, embed_dim)."""
        for conv, norm in zip(self.convs, self.norms):
            x = jax.nn.relu(norm(conv(x), use_running_average=not train or self.frozen))
        x = self.proj(x)
        return x.reshape(x.shape[0], -1, x.shape[-1])


def _keep(key: jax.Array, keep_prob: float, shape: tuple[int, ...]) -> jax.Array:
    """A Bernoulli(``keep_prob``) mask from 16 random bits per element (``keep_prob`` to within 1/65536).

    Making random bits is most of what dropout costs on a CPU; ``jax.random.bernoulli`` spends
    32 bits per element, this half of that.
    """
    threshold = round(keep_prob * 65536)
    if threshold >= 65536:  # a rate below 1/131072: nothing is dropped
        return jnp.ones(shape, bool)
    n = int(np.prod(shape))
    bits = jax.random.bits(key, ((n + 1) // 2,), jnp.uint32)
    halves = jax.lax.bitcast_convert_type(bits, jnp.uint16).reshape(-1)[:n]
    return (halves < threshold).reshape(shape)


def _dropout(x: jax.Array, rate: float, train: bool, rngs: nnx.Rngs | None) -> jax.Array:
    """Inverted dropout, as ``torch.nn.functional.dropout``."""
    if not train or rate == 0.0:
        return x
    keep = _keep(rngs.dropout(), 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0).astype(x.dtype)


def _drop_path(x: jax.Array, rate: float, train: bool, rngs: nnx.Rngs | None) -> jax.Array:
    """Stochastic depth per sample ("row" mode): the whole residual branch is dropped or rescaled."""
    if not train or rate == 0.0:
        return x
    keep = jax.random.bernoulli(rngs.dropout(), 1.0 - rate, (x.shape[0],) + (1,) * (x.ndim - 1))
    return jnp.where(keep, x / (1.0 - rate), 0).astype(x.dtype)


class Attention(nnx.Module):
    """Multi-head self-attention with a fused qkv projection (q|k|v, then heads, as in PyTorch)."""

    def __init__(self, dim: int, num_heads: int, dropout: float, rngs: nnx.Rngs, dtype: Any) -> None:
        self.num_heads, self.dropout = num_heads, dropout
        self.qkv = _linear(dim, 3 * dim, rngs, dtype)
        self.proj = _linear(dim, dim, rngs, dtype)

    def __call__(self, x: jax.Array, train: bool, rngs: nnx.Rngs | None, rows: int | None = None) -> jax.Array:
        """(B, N, C) -> (B, N, C), or only the first ``rows`` tokens' outputs (keys and values of all)."""
        B, N, C = x.shape
        heads, head_dim = self.num_heads, C // self.num_heads
        # the projections go straight to and from the heads' layout (3, B, heads, N, head_dim): XLA's CPU backend
        # otherwise copies the activations and their gradients through transposes, which cost more than the dots
        kernel = self.qkv.kernel[...].reshape(C, 3, heads, head_dim).astype(x.dtype)
        bias = self.qkv.bias[...].reshape(3, 1, heads, 1, head_dim).astype(x.dtype)
        qkv = jnp.einsum("bnc,cthd->tbhnd", x, kernel) + bias
        q, k, v = qkv[0], qkv[1], qkv[2]
        if rows is not None:
            q = q[:, :, :rows]
        scores = jnp.einsum("bhqd,bhkd->bhqk", q * head_dim**-0.5, k)
        weights = jax.nn.softmax(scores.astype(jnp.float32), axis=-1).astype(x.dtype)  # float32 statistics
        weights = _dropout(weights, self.dropout, train, rngs)
        out = jnp.einsum("bhqk,bhkd->bhqd", weights, v)
        proj = self.proj.kernel[...].reshape(heads, head_dim, C).astype(x.dtype)
        out = jnp.einsum("bhqd,hdc->bqc", out, proj) + self.proj.bias[...].astype(x.dtype)
        return _dropout(out, self.dropout, train, rngs)


class Mlp(nnx.Module):
    """Linear - GELU (exact) - dropout - Linear - dropout."""

    def __init__(self, dim: int, hidden: int, dropout: float, rngs: nnx.Rngs, dtype: Any) -> None:
        self.dropout = dropout
        self.fc1 = _linear(dim, hidden, rngs, dtype)
        self.fc2 = _linear(hidden, dim, rngs, dtype)

    def __call__(self, x: jax.Array, train: bool, rngs: nnx.Rngs | None) -> jax.Array:
        x = _dropout(jax.nn.gelu(self.fc1(x), approximate=False), self.dropout, train, rngs)
        return _dropout(self.fc2(x), self.dropout, train, rngs)


class Block(nnx.Module):
    """A pre-LayerNorm encoder block with stochastic depth on both branches."""

    def __init__(self, cfg: ViTConfig, drop_path: float, rngs: nnx.Rngs, dtype: Any) -> None:
        dim = cfg.embed_dim
        self.drop_path = drop_path
        self.norm1 = _layer_norm(dim, cfg.norm_eps, rngs, dtype)
        self.attn = Attention(dim, cfg.num_heads, cfg.dropout, rngs, dtype)
        self.norm2 = _layer_norm(dim, cfg.norm_eps, rngs, dtype)
        self.mlp = Mlp(dim, cfg.mlp_dim, cfg.dropout, rngs, dtype)

    def __call__(self, x: jax.Array, train: bool, rngs: nnx.Rngs | None, rows: int | None = None) -> jax.Array:
        branch = self.attn(self.norm1(x), train, rngs, rows)
        x = (x if rows is None else x[:, :rows]) + _drop_path(branch, self.drop_path, train, rngs)
        return x + _drop_path(self.mlp(self.norm2(x), train, rngs), self.drop_path, train, rngs)


class Head(nnx.Module):
    """A linear classifier, or (``hidden`` > 0) Linear - ReLU - dropout - Linear."""

    def __init__(self, cfg: ViTConfig, rngs: nnx.Rngs, dtype: Any) -> None:
        self.dropout = cfg.head_dropout
        if cfg.head_hidden > 0:
            self.fc1 = _linear(cfg.embed_dim, cfg.head_hidden, rngs, dtype)
            self.fc2 = _linear(cfg.head_hidden, cfg.num_classes, rngs, dtype)
        else:
            self.fc1, self.fc2 = None, _linear(cfg.embed_dim, cfg.num_classes, rngs, dtype)

    def __call__(self, x: jax.Array, train: bool, rngs: nnx.Rngs | None) -> jax.Array:
        if self.fc1 is not None:
            x = _dropout(jax.nn.relu(self.fc1(x)), self.dropout, train, rngs)
        return self.fc2(x)


class FlaxViT(nnx.Module):
    """A ViT classifier: images (B, in_chans, img_size, img_size) -> logits (B, num_classes), float32."""

    def __init__(self, config: ViTConfig, rngs: nnx.Rngs, dtype: Any = jnp.float32) -> None:
        self.config, self.dtype = config, dtype
        dim = config.embed_dim
        self.num_prefix_tokens = (1 + config.distilled) if config.pool == "cls" else 0
        self.patch_embed = (ConvStem if config.stem == "conv" else PatchEmbed)(config, rngs, dtype)
        grid = config.img_size // config.patch_size
        key = rngs.params
        self.cls_token = nnx.Param(_init(key(), (1, 1, dim))) if config.pool == "cls" else None
        self.dist_token = nnx.Param(_init(key(), (1, 1, dim))) if config.distilled else None
        self.pos_embed = nnx.Param(_init(key(), (1, grid * grid + self.num_prefix_tokens, dim)))
        rates = [config.drop_path * i / max(config.depth - 1, 1) for i in range(config.depth)]
        self.blocks = nnx.List([Block(config, r, rngs, dtype) for r in rates])
        self.norm = _layer_norm(dim, config.norm_eps, rngs, dtype)
        self.head = Head(config, rngs, dtype)
        self.head_dist = Head(config, rngs, dtype) if config.distilled else None

    def __call__(self, images: jax.Array, train: bool = False, rngs: nnx.Rngs | None = None) -> jax.Array:
        """Logits; ``train`` turns on dropout and drop path (drawn from ``rngs``) and batch statistics."""
        cfg = self.config
        x = self.patch_embed(jnp.transpose(images, (0, 2, 3, 1)).astype(self.dtype), train)
        prefix = [
            jnp.broadcast_to(t[...], (x.shape[0], 1, x.shape[-1]))
            for t in (self.cls_token, self.dist_token)
            if t is not None
        ]
        x = jnp.concatenate([*[p.astype(x.dtype) for p in prefix], x], axis=1) if prefix else x
        x = _dropout(x + self.pos_embed[...].astype(x.dtype), cfg.dropout, train, rngs)
        rows = self.num_prefix_tokens or None  # the last block computes only what the head reads
        for i, block in enumerate(self.blocks):
            x = block(x, train, rngs, rows if i == len(self.blocks) - 1 else None)
        x = self.norm(x)
        if self.head_dist is not None:
            logits = (self.head(x[:, 0], train, rngs) + self.head_dist(x[:, 1], train, rngs)) / 2
        else:
            logits = self.head(x[:, 0] if self.cls_token is not None else x.mean(axis=1), train, rngs)
        return logits.astype(jnp.float32)


# ---------------------------------------------------------------- PyTorch names and layouts


def _modules(model: FlaxViT) -> list[tuple[str, nnx.Module]]:
    """(PyTorch name prefix, module) of every layer that holds weights."""
    found: list[tuple[str, nnx.Module]] = []
    stem = model.patch_embed
    if isinstance(stem, ConvStem):
        for i, (conv, norm) in enumerate(zip(stem.convs, stem.norms)):
            found += [(f"patch_embed.stem.{3 * i}", conv), (f"patch_embed.stem.{3 * i + 1}", norm)]
    found.append(("patch_embed.proj", stem.proj))
    for i, block in enumerate(model.blocks):
        b = f"blocks.{i}"
        found += [(f"{b}.norm1", block.norm1), (f"{b}.attn.qkv", block.attn.qkv), (f"{b}.attn.proj", block.attn.proj)]
        found += [(f"{b}.norm2", block.norm2), (f"{b}.mlp.fc1", block.mlp.fc1), (f"{b}.mlp.fc2", block.mlp.fc2)]
    found.append(("norm", model.norm))
    for name, head in (("head", model.head), ("head_dist", model.head_dist)):
        if head is not None:
            found += [(f"{name}.0", head.fc1), (f"{name}.3", head.fc2)] if head.fc1 is not None else [(name, head.fc2)]
    return found


def _variables(module: nnx.Module) -> dict[str, nnx.Variable]:
    """A layer's variables under PyTorch's leaf names."""
    if isinstance(module, (nnx.Linear, nnx.Conv)):
        found = {"weight": module.kernel}
        return found if module.bias is None else {**found, "bias": module.bias}
    found = {"weight": module.scale, "bias": module.bias}  # LayerNorm
    if isinstance(module, BatchNorm):
        found.update(running_mean=module.mean, running_var=module.var)
    return found


def torch_names(model: FlaxViT) -> dict[tuple, str]:
    """The PyTorch name of each of the model's variables, by its NNX path (``nnx.to_flat_state``)."""
    by_id = {id(v): n for n, v in (("cls_token", model.cls_token), ("dist_token", model.dist_token)) if v is not None}
    by_id[id(model.pos_embed)] = "pos_embed"
    for prefix, module in _modules(model):
        by_id.update({id(v): f"{prefix}.{leaf}" for leaf, v in _variables(module).items()})
    return {path: by_id[id(node)] for path, node in nnx.iter_graph(model) if id(node) in by_id}


def _torch_layout(path: tuple, value: np.ndarray) -> np.ndarray:
    """Flax's kernels (in, out) and HWIO -> PyTorch's (out, in) and OIHW."""
    if path[-1] != "kernel":
        return value
    return value.T if value.ndim == 2 else value.transpose(3, 2, 0, 1)


def _flax_layout(path: tuple, value: np.ndarray) -> np.ndarray:
    if path[-1] != "kernel":
        return value
    return value.T if value.ndim == 2 else value.transpose(2, 3, 1, 0)


def state_to_torch(states: list[nnx.State], names: dict[tuple, str]) -> dict[str, np.ndarray]:
    """Split model states (parameters, batch statistics) as PyTorch's state dict (float32 numpy arrays)."""
    found = {}
    for state in states:
        for path, variable in nnx.to_flat_state(state):
            value = np.asarray(variable.get_value(), dtype=np.float32)
            found[names[path]] = np.ascontiguousarray(_torch_layout(path, value))
    return found


def to_torch_state(model: FlaxViT) -> dict[str, np.ndarray]:
    """The model's weights under the PyTorch model's names and layouts."""
    return state_to_torch([nnx.state(model)], torch_names(model))


def load_torch_state(model: FlaxViT, state: dict[str, Any]) -> None:
    """Set the model's weights from a PyTorch state dict of the same architecture (tensors or arrays).

    Every tensor the Flax model holds must be there with its shape; PyTorch's extra buffers
    (BatchNorm's ``num_batches_tracked``) are ignored.
    """
    names = torch_names(model)
    for path, variable in nnx.iter_graph(model):
        if path not in names:
            continue
        name = names[path]
        if name not in state:
            raise KeyError(f"the weights have no {name!r}")
        value = state[name]
        # a copy: JAX may share a CPU buffer with the array it is given, and the PyTorch tensors change later
        value = value.detach().cpu().float().numpy() if hasattr(value, "detach") else value
        value = np.array(value, np.float32, copy=True)
        value = _flax_layout(path, value)
        current = variable.get_value()
        if value.shape != current.shape:
            raise ValueError(f"{name}: shape {value.shape} where the model has {current.shape}")
        variable.set_value(jnp.asarray(value, dtype=current.dtype))
