"""Parametric instance discrimination: the instance head, its losses, mixing of instances, and the kNN report.

See :mod:`vitrain.engine.pretrain` for the method as a whole.
"""

from __future__ import annotations

import hashlib
import math
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms.v2 import functional as TF

from ...config import TrainConfig


class InstanceHead(nn.Module):
    """Projection MLP and a cosine classifier over ``n_instances`` images."""

    def __init__(self, dim: int, n_instances: int, proj_dim: int = 128, temperature: float = 0.2) -> None:
        super().__init__()
        self.proj = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, proj_dim))
        self.weight = nn.Parameter(torch.randn(n_instances, proj_dim) / math.sqrt(proj_dim))
        self.temperature = temperature

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        """Backbone features (B, dim) -> unit-length projections (B, proj_dim)."""
        return F.normalize(self.proj(features), dim=-1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Unit projections -> instance logits (B, n_instances): cosine similarity / temperature."""
        return z @ F.normalize(self.weight, dim=-1).T / self.temperature

    @torch.no_grad()
    def init_from_features(self, z: torch.Tensor) -> None:
        """Set each instance's weight to its image's projection (N, proj_dim): "raw-feature
        initialization" (Liu et al. 2021, the one-million-way instance classifier), so the
        classifier starts as a nearest-neighbour one over the images instead of random targets."""
        if z.shape != self.weight.shape:
            raise ValueError(f"{tuple(z.shape)} projections for a {tuple(self.weight.shape)} classifier")
        self.weight.copy_(z)


def mixed_targets(a: torch.Tensor, b: torch.Tensor, lam: float, n: int) -> torch.Tensor:
    """Dense targets ``lam * onehot(a) + (1 - lam) * onehot(b)`` (each row sums to 1)."""
    return lam * F.one_hot(a, n).float() + (1 - lam) * F.one_hot(b, n).float()


def instance_loss(
    logits: torch.Tensor, a: torch.Tensor, b: torch.Tensor | None = None, lam: float = 1.0, smoothing: float = 0.0
) -> torch.Tensor:
    """Cross entropy against instance targets, mixed when ``b`` is given.

    Equals the cross entropy against :func:`mixed_targets` without building the (B, N) matrix:
    ``mean(-(lam * log_softmax[a] + (1 - lam) * log_softmax[b]))``. With ``smoothing`` e, each
    target is ``(1 - e)`` of itself plus ``e / N`` on every instance (label smoothing, as the
    paper uses in this stage): the loss is linear in the target, so mixing and smoothing commute.
    """
    loss = F.cross_entropy(logits, a, label_smoothing=smoothing)
    if b is None or lam >= 1.0:
        return loss
    return lam * loss + (1 - lam) * F.cross_entropy(logits, b, label_smoothing=smoothing)


def info_nce(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE between two views: (B, D) unit vectors; row i of each is the same image.

    ``-log(exp(s_ii / t) / sum_j exp(s_ij / t))`` averaged over both directions, with
    ``s = z1 @ z2.T``: the other images of the batch are the negatives.
    """
    sim = z1 @ z2.T / temperature
    target = torch.arange(z1.shape[0], device=z1.device)
    return (F.cross_entropy(sim, target) + F.cross_entropy(sim.T, target)) / 2


def mix_instances(
    views: torch.Tensor, mixup: float, cutmix: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor | None, float]:
    """MixUp or CutMix between the images of a batch of views (V, B, C, H, W).

    One permutation and one ratio for all views, so the views of an image stay views of
    the same mixture. Returns (mixed views, permutation or None, lam), where lam is the
    share of each image's own instance (for CutMix, the share of pixels it keeps).
    """
    if mixup <= 0 and cutmix <= 0:
        return views, None, 1.0
    rng = np.random.default_rng(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
    use_cutmix = cutmix > 0 and (mixup <= 0 or rng.random() < 0.5)
    alpha = cutmix if use_cutmix else mixup
    lam = float(rng.beta(alpha, alpha))
    perm = torch.randperm(views.shape[1], generator=generator).to(views.device)
    other = views[:, perm]
    if not use_cutmix:
        return lam * views + (1 - lam) * other, perm, lam
    h, w = views.shape[-2:]
    cut_h, cut_w = int(h * math.sqrt(1 - lam)), int(w * math.sqrt(1 - lam))
    cy, cx = int(rng.integers(h)), int(rng.integers(w))
    y1, y2 = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, h)
    x1, x2 = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, w)
    mixed = views.clone()
    mixed[..., y1:y2, x1:x2] = other[..., y1:y2, x1:x2]
    return mixed, perm, 1 - (y2 - y1) * (x2 - x1) / (h * w)


KNN_K, KNN_TEMPERATURE = 20, 0.07


def knn_predict(
    bank: torch.Tensor,
    bank_labels: torch.Tensor,
    queries: torch.Tensor,
    num_classes: int,
    k: int = KNN_K,
    temperature: float = KNN_TEMPERATURE,
) -> torch.Tensor:
    """Weighted k-nearest-neighbour classes of ``queries`` (M, D) among ``bank`` (N, D), all unit vectors.

    Each of the ``k`` most cosine-similar bank rows votes for its label with weight
    ``exp(similarity / temperature)``, as in the kNN evaluation of self-supervised features
    (Wu et al. 2018; DINO). Returns the (M,) classes with the most votes.
    """
    top, idx = (queries @ bank.T).topk(min(k, bank.shape[0]), dim=1)
    votes = torch.zeros(queries.shape[0], num_classes, dtype=top.dtype, device=queries.device)
    return votes.scatter_add_(1, bank_labels[idx], (top / temperature).exp()).argmax(1)


@torch.no_grad()
def backbone_features(
    model: nn.Module,
    images: torch.Tensor,
    size: int,
    mean,
    std,
    batch: int = 256,
    project: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Unit-length backbone features of (N, C, S, S) uint8 images, resized to ``size`` and normalized
    (or, with ``project``, what it makes of the features: an instance head's projections, say)."""
    project = project or (lambda f: F.normalize(f, dim=-1))
    features = []
    for start in range(0, len(images), batch):
        x = images[start : start + batch].float() / 255
        if x.shape[-1] != size:
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        features.append(project(model(TF.normalize(x, mean, std), pre_logits=True)).float())
    return torch.cat(features)


class Pretrainer(nn.Module):
    """The backbone and the instance head as one module, for the optimizer."""

    def __init__(self, backbone: nn.Module, head: InstanceHead) -> None:
        super().__init__()
        self.backbone, self.instance = backbone, head

    def no_weight_decay(self) -> set[str]:
        return {f"backbone.{n}" for n in self.backbone.no_weight_decay()}


def local_crop_size(cfg: TrainConfig) -> int:
    """``--local-crop-size``, else half the pretraining input rounded down to the patch size (at least one patch)."""
    if cfg.local_crop_size:
        return cfg.local_crop_size
    return max(cfg.patch_size, cfg.img_size // 2 // cfg.patch_size * cfg.patch_size)


def images_digest(images: torch.Tensor) -> str:
    """A fingerprint of the decoded training images, in order: the instance head's rows are these images."""
    return hashlib.sha1(images.contiguous().numpy().tobytes()).hexdigest()
