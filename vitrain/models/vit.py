"""The Vision Transformer (Dosovitskiy et al., 2021), written from scratch.

One file, one model: convolutional patch embedding, an optional class token,
learnable position embeddings, pre-LayerNorm encoder blocks whose attention runs
through ``torch.nn.functional.scaled_dot_product_attention`` (per head, as batched
matmuls, when training on CPU), a GELU MLP, dropout and stochastic depth, a final
LayerNorm and a linear head. ``forward`` of a class-token model computes only the class
token's row in the last block; logits and gradients are those of the full computation.

Parameter names follow timm's ``VisionTransformer`` (``patch_embed.proj``,
``cls_token``, ``pos_embed``, ``blocks.N.attn.qkv`` ...), so timm weights load with
almost no renaming and torchvision weights through a small key map
(see :mod:`vitrain.models.convert`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import StochasticDepth

from .convert import resample_pos_embed
from .stem import stem_channels

Pool = Literal["cls", "avg"]
Stem = Literal["patch", "conv"]


@dataclass(frozen=True)
class ViTConfig:
    """Every number that defines a ViT's architecture (and nothing about training)."""

    img_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    num_classes: int = 1000
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072
    dropout: float = 0.0
    drop_path: float = 0.0
    pool: Pool = "cls"
    stem: Stem = "patch"  # "conv": stride-2 3x3 convolutions instead of one patchifying convolution
    stem_width: int = 0  # a conv stem's first channels, doubling at each convolution; 0: embed_dim / patch_size (>= 16)
    distilled: bool = False  # DeiT's distillation token and second head (logits: the mean of both heads)
    head_hidden: int = 0  # > 0: the head is Linear - ReLU - Dropout - Linear with this many hidden units
    head_dropout: float = 0.0  # dropout inside that MLP head
    norm_eps: float = 1e-6  # LayerNorm epsilon (timm/torchvision: 1e-6; Hugging Face: 1e-12)

    def __post_init__(self) -> None:
        problems = []
        if self.img_size <= 0 or self.patch_size <= 0:
            problems.append(f"img_size ({self.img_size}) and patch_size ({self.patch_size}) must be positive")
        elif self.img_size % self.patch_size:
            problems.append(f"img_size {self.img_size} is not divisible by patch_size {self.patch_size}")
        if self.in_chans not in (1, 3):
            problems.append(f"in_chans must be 1 or 3, got {self.in_chans}")
        if self.num_classes < 1:
            problems.append(f"num_classes must be at least 1, got {self.num_classes}")
        if min(self.embed_dim, self.depth, self.num_heads, self.mlp_dim) < 1:
            problems.append("embed_dim, depth, num_heads and mlp_dim must be positive")
        elif self.embed_dim % self.num_heads:
            problems.append(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if not 0.0 <= self.dropout < 1.0 or not 0.0 <= self.drop_path < 1.0:
            problems.append("dropout and drop_path must be in [0, 1)")
        if self.stem not in ("patch", "conv"):
            problems.append(f"stem must be 'patch' or 'conv', got {self.stem!r}")
        elif self.stem == "conv" and (self.patch_size < 2 or self.patch_size & (self.patch_size - 1)):
            problems.append(f"a conv stem needs a power-of-2 patch_size (>= 2), got {self.patch_size}")
        if self.stem_width < 0:
            problems.append(f"stem_width must be >= 0, got {self.stem_width}")
        elif self.stem_width and self.stem != "conv":
            problems.append(f"stem_width {self.stem_width} needs stem='conv' (a patch stem has one convolution)")
        if self.pool not in ("cls", "avg"):
            problems.append(f"pool must be 'cls' or 'avg', got {self.pool!r}")
        elif self.distilled and self.pool != "cls":
            problems.append("a distillation token needs pool='cls'")
        if self.head_hidden < 0 or not 0.0 <= self.head_dropout < 1.0:
            problems.append("head_hidden must be >= 0 and head_dropout in [0, 1)")
        if problems:
            raise ValueError("invalid ViT configuration: " + "; ".join(problems))

    @property
    def grid_size(self) -> int:
        """Patches per side."""
        return self.img_size // self.patch_size

    def stem_channels(self) -> list[int]:
        """The output channels of a conv stem's stride-2 convolutions (see :func:`stem_channels`)."""
        return stem_channels(self.embed_dim, self.patch_size.bit_length() - 1, self.stem_width)

    def to_dict(self) -> dict:
        return asdict(self)


class PatchEmbed(nn.Module):
    """Split the image into non-overlapping patches and project each to ``embed_dim``."""

    def __init__(self, img_size: int, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.img_size = img_size
        self.patch_size = patch_size
        self.num_patches = (img_size // patch_size) ** 2
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    @property
    def first_conv(self) -> nn.Conv2d:
        """The convolution that sees the pixels."""
        return self.proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, num_patches, embed_dim)."""
        return self.proj(x).flatten(2).transpose(1, 2)


class ConvStem(nn.Module):
    """A convolutional stem ("Early Convolutions Help Transformers See Better", Xiao et al., 2021).

    ``log2(patch_size)`` 3x3 convolutions with stride 2, each followed by BatchNorm and ReLU
    (``widths`` channels: by default doubling up to ``embed_dim / 2``, see
    :meth:`ViTConfig.stem_channels`), then a 1x1 projection to ``embed_dim``: the same token
    grid as a ``patch_size`` patch embedding, with the locality bias of overlapping
    convolutions. It helps most where data or training time is short.
    """

    def __init__(self, img_size: int, patch_size: int, in_chans: int, embed_dim: int, widths: list[int]) -> None:
        super().__init__()
        self.img_size = img_size
        self.patch_size = patch_size
        self.num_patches = (img_size // patch_size) ** 2
        layers: list[nn.Module] = []
        channels = in_chans
        for out in widths:
            layers += [
                nn.Conv2d(channels, out, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(out),
                nn.ReLU(inplace=True),
            ]
            channels = out
        self.stem = nn.Sequential(*layers)
        self.proj = nn.Conv2d(channels, embed_dim, kernel_size=1)

    @property
    def first_conv(self) -> nn.Conv2d:
        """The convolution that sees the pixels."""
        return self.stem[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, num_patches, embed_dim)."""
        return self.proj(self.stem(x)).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection."""

    def __init__(self, dim: int, num_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.attn_dropout = dropout
        self.proj_drop = nn.Dropout(dropout)

    def attention_weights(self, x: torch.Tensor) -> torch.Tensor:
        """The softmax attention matrix (B, heads, N, N) that ``forward`` applies (without dropout).

        Computed explicitly for explanations; ``forward`` never materializes it for all heads at once.
        """
        q, k, _ = self._split(self.qkv(x), 3, per_head=False)
        return (q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5).softmax(dim=-1)

    def forward(self, x: torch.Tensor, rows: int | None = None) -> torch.Tensor:
        """(B, N, C) -> (B, N, C); with ``rows``, only the first ``rows`` tokens' outputs (B, rows, C).

        ``rows`` is for a last block whose other outputs nobody reads: queries are projected
        and attended for those tokens only, keys and values for all of them.
        """
        C = x.shape[-1]
        # On CPU, autograd through per-head batched matmuls on strided views of the qkv
        # projection is faster than PyTorch's fused SDPA kernel, whose backward pass is slow
        # there and which needs the heads gathered into (B, heads, N, head_dim) copies
        # (benchmarks/throughput.py; equal to float32 rounding). Inference and GPUs use SDPA.
        per_head = x.device.type == "cpu" and torch.is_grad_enabled()
        if rows is None:
            q, k, v = self._split(self.qkv(x), 3, per_head)
        else:
            weight, bias = self.qkv.weight, self.qkv.bias
            (q,) = self._split(F.linear(x[:, :rows], weight[:C], None if bias is None else bias[:C]), 1, per_head)
            k, v = self._split(F.linear(x, weight[C:], None if bias is None else bias[C:]), 2, per_head)
        dropout = self.attn_dropout if self.training else 0.0
        if per_head:
            scale = (C // self.num_heads) ** -0.5
            x = torch.cat(
                [
                    F.dropout(((qh * scale) @ kh.transpose(1, 2)).softmax(dim=-1), dropout, self.training) @ vh
                    for qh, kh, vh in zip(q, k, v)
                ],
                dim=-1,
            )
        else:
            x = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)
            x = x.transpose(1, 2).flatten(2)
        return self.proj_drop(self.proj(x))

    def _split(self, projected: torch.Tensor, groups: int, per_head: bool) -> tuple:
        """(B, N, groups * C) -> ``groups`` of heads (q|k|v order, then head order).

        Per head: each group is a tuple of (B, N, head_dim) views. Otherwise each group is one
        (B, heads, N, head_dim) tensor, the layout of timm and ``nn.MultiheadAttention``.
        """
        B, N, _ = projected.shape
        heads = self.num_heads
        head_dim = projected.shape[-1] // (groups * heads)
        if per_head:
            views = projected.view(B, N, groups * heads, head_dim).unbind(2)
            return tuple(views[i * heads : (i + 1) * heads] for i in range(groups))
        return projected.view(B, N, groups, heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)


class Mlp(nn.Module):
    """Linear - GELU - dropout - Linear - dropout."""

    def __init__(self, dim: int, hidden_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class Block(nn.Module):
    """A pre-LayerNorm transformer encoder block with stochastic depth on both branches."""

    def __init__(
        self, dim: int, num_heads: int, mlp_dim: int, dropout: float, drop_path: float, norm_eps: float = 1e-6
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, dropout)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, mlp_dim, dropout)
        # "row" mode drops the whole residual branch per sample, as in the DeiT paper
        self.drop_path = StochasticDepth(drop_path, mode="row") if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, rows: int | None = None) -> torch.Tensor:
        """(B, N, C) -> (B, N, C), or only the first ``rows`` tokens (see :meth:`Attention.forward`)."""
        branch = self.attn(self.norm1(x), rows)
        x = x + self.drop_path(branch) if rows is None else x[:, :rows] + self.drop_path(branch)
        return x + self.drop_path(self.mlp(self.norm2(x)))


def build_head(dim: int, num_classes: int, hidden: int = 0, dropout: float = 0.0) -> nn.Module:
    """A linear classifier, or (``hidden`` > 0) Linear - ReLU - Dropout - Linear."""
    if hidden <= 0:
        return nn.Linear(dim, num_classes)
    return nn.Sequential(
        nn.Linear(dim, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(hidden, num_classes)
    )


class VisionTransformer(nn.Module):
    """A standard ViT classifier.

    Args:
        config: the architecture; see :class:`ViTConfig`.

    Shapes: input (B, in_chans, img_size, img_size), output (B, num_classes).
    """

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.config = config
        dim = config.embed_dim
        self.num_prefix_tokens = (1 + config.distilled) if config.pool == "cls" else 0
        if config.stem == "conv":
            self.patch_embed = ConvStem(
                config.img_size, config.patch_size, config.in_chans, dim, widths=config.stem_channels()
            )
        else:
            self.patch_embed = PatchEmbed(config.img_size, config.patch_size, config.in_chans, dim)
        num_tokens = self.patch_embed.num_patches + self.num_prefix_tokens
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if config.pool == "cls" else None
        self.dist_token = nn.Parameter(torch.zeros(1, 1, dim)) if config.distilled else None
        self.pos_embed = nn.Parameter(torch.zeros(1, num_tokens, dim))
        self.pos_drop = nn.Dropout(config.dropout)
        # stochastic depth grows linearly with depth (Huang et al., 2016; DeiT)
        rates = [config.drop_path * i / max(config.depth - 1, 1) for i in range(config.depth)]
        self.blocks = nn.Sequential(
            *(Block(dim, config.num_heads, config.mlp_dim, config.dropout, r, config.norm_eps) for r in rates)
        )
        self.norm = nn.LayerNorm(dim, eps=config.norm_eps)
        self.head = build_head(dim, config.num_classes, config.head_hidden, config.head_dropout)
        self.head_dist = (
            build_head(dim, config.num_classes, config.head_hidden, config.head_dropout) if config.distilled else None
        )
        self.meta: dict = {}  # classes and preprocessing, filled in by checkpoints
        # True: square inputs of any multiple of the patch size are accepted, with the position
        # embeddings resampled to their grid (multi-crop pretraining); not part of the architecture
        self.dynamic_img_size = False
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialize as in the ViT/DeiT papers: truncated normal (std 0.02), zero biases."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for token in (self.cls_token, self.dist_token):
            if token is not None:
                nn.init.trunc_normal_(token, std=0.02)
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, (nn.LayerNorm, nn.BatchNorm2d)):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    @torch.no_grad()
    def whiten_stem(self, images: torch.Tensor, eps: float = 5e-4, chunk: int = 256) -> int:
        """Set the filters of the convolution that sees the pixels from ``images`` (B, C, H, W, normalized
        as the model sees them): the leading principal components of the patches it reads, each divided
        by the square root of its variance (plus ``eps``), in pairs of opposite sign, so that its outputs
        start whitened (patch-PCA initialization, as fast CIFAR-10 training runs use). A short run then
        starts from filters matched to the data rather than random ones; the filters still train.

        Returns how many filters were set: ``2 * min(out_channels // 2, C * k * k)``; any others keep
        their random initialization. A bias is set so that the whitened outputs are centered.
        """
        conv = self.patch_embed.first_conv
        dim = conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]
        total = torch.zeros(dim, dtype=torch.float64)
        outer = torch.zeros(dim, dim, dtype=torch.float64)
        count = 0
        for start in range(0, len(images), chunk):  # the patches of a few images at a time
            batch = images[start : start + chunk].to(conv.weight.device, torch.float32)
            cols = F.unfold(batch, conv.kernel_size, padding=conv.padding, stride=conv.stride)
            patches = cols.transpose(1, 2).reshape(-1, dim).double().cpu()
            total += patches.sum(0)
            outer += patches.T @ patches
            count += len(patches)
        if count < 2:
            raise ValueError("whiten_stem needs at least one image")
        mean = total / count
        cov = outer / count - torch.outer(mean, mean)
        variances, vectors = torch.linalg.eigh(cov)  # ascending
        pairs = min(conv.out_channels // 2, dim)
        variances, vectors = variances.flip(0)[:pairs], vectors.flip(1)[:, :pairs]
        filters = (vectors / (variances.clamp_min(0) + eps).sqrt()).T  # (pairs, dim)
        weights = torch.cat([filters, -filters])
        conv.weight[: len(weights)] = weights.reshape(-1, *conv.weight.shape[1:]).to(conv.weight)
        if conv.bias is not None:
            conv.bias[: len(weights)] = -(weights @ mean).to(conv.bias)
        return len(weights)

    def no_weight_decay(self) -> set[str]:
        """Parameter names that should not be weight-decayed (besides biases and norms)."""
        return {"pos_embed", "cls_token", "dist_token"}

    def reset_classifier(self, num_classes: int, hidden: int | None = None, dropout: float | None = None) -> None:
        """Replace the head(s) with freshly initialized ones for ``num_classes`` classes.

        ``hidden``/``dropout`` choose an MLP head (see :func:`build_head`); None keeps the current kind.
        """
        cfg = self.config
        hidden = cfg.head_hidden if hidden is None else hidden
        dropout = cfg.head_dropout if dropout is None else dropout
        self.config = ViTConfig(
            **{**cfg.to_dict(), "num_classes": num_classes, "head_hidden": hidden, "head_dropout": dropout}
        )
        heads = ["head"] + (["head_dist"] if cfg.distilled else [])
        for name in heads:
            head = build_head(cfg.embed_dim, num_classes, hidden, dropout).to(self.pos_embed.device)
            for module in head.modules():
                if isinstance(module, nn.Linear):
                    nn.init.trunc_normal_(module.weight, std=0.02)
                    nn.init.zeros_(module.bias)
            setattr(self, name, head)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) -> input tokens (B, prefix + patches, embed_dim), position-embedded."""
        cfg = self.config
        other_size = (
            x.ndim == 4
            and x.shape[1] == cfg.in_chans
            and x.shape[2] == x.shape[3] != cfg.img_size
            and x.shape[2] % cfg.patch_size == 0
            and self.dynamic_img_size
        )
        if not other_size and (x.ndim != 4 or x.shape[1:] != (cfg.in_chans, cfg.img_size, cfg.img_size)):
            raise ValueError(
                f"expected input of shape (B, {cfg.in_chans}, {cfg.img_size}, {cfg.img_size}), got {tuple(x.shape)}"
            )
        pos_embed = self.pos_embed
        if other_size:
            pos_embed = resample_pos_embed(pos_embed, x.shape[2] // cfg.patch_size, self.num_prefix_tokens)
        x = self.patch_embed(x)
        prefix = [t.expand(x.shape[0], -1, -1) for t in (self.cls_token, self.dist_token) if t is not None]
        if prefix:
            x = torch.cat([*prefix, x], dim=1)
        return self.pos_drop(x + pos_embed)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) -> normalized tokens (B, prefix + patches, embed_dim)."""
        return self.norm(self.blocks(self.embed(x)))

    def forward_with_attention(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits plus every block's attention matrix, each (B, heads, tokens, tokens)."""
        tokens = self.embed(x)
        maps = []
        for block in self.blocks:
            maps.append(block.attn.attention_weights(block.norm1(tokens)))
            tokens = block(tokens)
        return self.forward_head(self.norm(tokens)), maps

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Tokens -> logits (or the pooled embedding when ``pre_logits``).

        A distilled (DeiT) model averages its class-token and distillation-token heads, as
        DeiT does at inference.
        """
        if self.dist_token is not None:
            if pre_logits:
                return (x[:, 0] + x[:, 1]) / 2
            return (self.head(x[:, 0]) + self.head_dist(x[:, 1])) / 2
        x = x[:, 0] if self.cls_token is not None else x.mean(dim=1)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Images (B, C, H, W) -> logits (B, num_classes), or the pooled embedding with ``pre_logits``.

        The result equals ``forward_head(forward_features(x), pre_logits)``, but a class-token
        model computes only the prefix tokens in its last block, since nothing else of that
        block is read (its attention still reads every token). That skips the last block's
        query, output projection and MLP work for every patch token: three quarters of that
        block's matmuls, an eighth of a 6-block model's.
        """
        if not self.num_prefix_tokens:
            return self.forward_head(self.forward_features(x), pre_logits)
        x = self.embed(x)
        *first, last = self.blocks
        for block in first:
            x = block(x)
        return self.forward_head(self.norm(last(x, rows=self.num_prefix_tokens)), pre_logits)
