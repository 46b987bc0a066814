"""Strong augmentation for self-supervised pretraining, on whole batches of uint8 images.

Random resized crops (small scales allowed) and flips come from
:class:`vitrain.data.memory.BatchAugment`; then, drawn independently for every image, a
color distortion (brightness, contrast, saturation, hue: each with probability ``color``),
grayscale (``gray``) and a Gaussian blur (``blur``; sigma scaled to the input size, as
0.1-2.0 px at 224 px). Everything is tensor arithmetic over the batch, so it runs on the
training device and costs a small fraction of a ViT step.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF

from .memory import BatchAugment

# RGB -> YIQ; a hue shift is a rotation of the (I, Q) plane
_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_LUMA = torch.tensor([0.299, 0.587, 0.114])


def _uniform(n: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return torch.empty(n).uniform_(low, high, generator=generator)


def _gray(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 1:
        return x
    return torch.einsum("bchw,c->bhw", x, _LUMA.to(x))[:, None]


def color_jitter(
    x: torch.Tensor,
    generator: torch.Generator,
    p: float = 0.8,
    strength: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1),
) -> torch.Tensor:
    """Per-image brightness, contrast, saturation and hue jitter on (B, C, H, W) floats in [0, 1]."""
    b = x.shape[0]
    on = torch.rand(b, generator=generator) < p
    bright, contrast, sat, hue = strength

    def factor(s: float) -> torch.Tensor:
        return _uniform(b, 1 - s, 1 + s, generator).to(x)[:, None, None, None]

    original = x
    x = (x * factor(bright)).clamp(0, 1)
    mean = _gray(x).mean(dim=(1, 2, 3), keepdim=True)
    x = ((x - mean) * factor(contrast) + mean).clamp(0, 1)
    if x.shape[1] == 3:
        gray = _gray(x)
        x = ((x - gray) * factor(sat) + gray).clamp(0, 1)
        angle = _uniform(b, -hue, hue, generator) * 2 * math.pi
        cos, sin = torch.cos(angle), torch.sin(angle)
        rot = torch.zeros(b, 3, 3)
        rot[:, 0, 0] = 1
        rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = cos, -sin, sin, cos
        matrix = (torch.linalg.inv(_YIQ) @ rot @ _YIQ).to(x)  # (B, 3, 3)
        x = torch.einsum("bij,bjhw->bihw", matrix, x).clamp(0, 1)
    return torch.where(on.to(x.device)[:, None, None, None], x, original)


def random_grayscale(x: torch.Tensor, generator: torch.Generator, p: float = 0.2) -> torch.Tensor:
    """Replace each RGB image by its luminance (on every channel) with probability ``p``."""
    if x.shape[1] != 3 or p <= 0:
        return x
    chosen = (torch.rand(x.shape[0], generator=generator) < p).to(x.device)[:, None, None, None]
    return torch.where(chosen, _gray(x).expand_as(x), x)


def random_blur(
    x: torch.Tensor, generator: torch.Generator, p: float = 0.5, sigma: tuple[float, float] = (0.1, 2.0)
) -> torch.Tensor:
    """Gaussian blur with a per-image sigma in ``sigma`` (pixels), each image with probability ``p``."""
    b, c, h, w = x.shape
    if p <= 0:
        return x
    sigmas = _uniform(b, *sigma, generator)
    chosen = torch.rand(b, generator=generator) < p
    radius = max(1, math.ceil(3 * sigma[1]))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernels = torch.exp(-(offsets[None] ** 2) / (2 * sigmas[:, None] ** 2))
    kernels = kernels / kernels.sum(1, keepdim=True)
    identity = (offsets == 0).float()[None].expand(b, -1)
    kernels = torch.where(chosen[:, None], kernels, identity).to(x)
    weight = kernels.repeat_interleave(c, 0)  # (B*C, k): one kernel per image channel
    flat = F.pad(x.reshape(1, b * c, h, w), (radius, radius, radius, radius), mode="reflect")
    flat = F.conv2d(flat, weight[:, None, None, :], groups=b * c)  # along rows
    flat = F.conv2d(flat, weight[:, None, :, None], groups=b * c)  # along columns
    return flat.reshape(b, c, h, w)


class StrongAugment:
    """Views for instance discrimination: resized crop + flip, color distortion, grayscale, blur."""

    def __init__(
        self,
        img_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        *,
        crop_scale: tuple[float, float] = (0.08, 1.0),
        hflip: float = 0.5,
        color: float = 0.8,
        gray: float = 0.2,
        blur: float = 0.5,
    ) -> None:
        channels = len(mean)
        self.crop = BatchAugment(
            img_size,
            "flip-crop",
            [0.0] * channels,
            [1.0] * channels,
            resized_crop=True,
            hflip=hflip,
            crop_scale=crop_scale,
        )
        self.mean, self.std = list(mean), list(std)
        self.color, self.gray, self.blur = color, gray, blur
        self.sigma = (0.1 * img_size / 224, 2.0 * img_size / 224)

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """(B, C, S, S) uint8 -> (B, C, img_size, img_size) normalized floats."""
        x = self.crop(images, generator)  # floats in [0, 1]
        x = color_jitter(x, generator, self.color)
        x = random_grayscale(x, generator, self.gray)
        x = random_blur(x, generator, self.blur, self.sigma)
        return TF.normalize(x, self.mean, self.std)
