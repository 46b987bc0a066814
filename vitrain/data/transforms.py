"""Training and evaluation pipelines built from torchvision transforms v2.

Both take (C, H, W) uint8 tensors from :mod:`vitrain.data.sources` and return float
tensors of the model's input size, normalized.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch.utils.data import Dataset
from torchvision.transforms import v2

AUGMENTATIONS = ("none", "flip-crop", "autoaugment", "randaugment", "trivialaugment")
CROPS = ("auto", "resized", "pad")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SMALL_IMAGE = 64  # at or below this native size, pad-and-crop replaces random resized crop


def resize_and_center(img_size: int, crop_pct: float) -> list[v2.Transform]:
    """Resize the shorter side to ``img_size / crop_pct`` and take the central square."""
    return [v2.Resize(int(round(img_size / crop_pct)), antialias=True), v2.CenterCrop(img_size)]


def uses_resized_crop(native_size: int, crop: str) -> bool:
    """Whether flip-crop takes random resized crops (vs pad-and-crop) for data of this native size."""
    return crop == "resized" or (crop == "auto" and native_size > SMALL_IMAGE)


def policy_transform(augment: str) -> v2.Transform | None:
    """The automatic-augmentation policy ``augment`` names, or None for ``none``/``flip-crop``."""
    if augment == "autoaugment":
        return v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10)
    if augment == "randaugment":
        return v2.RandAugment()
    if augment == "trivialaugment":
        return v2.TrivialAugmentWide()
    return None


def _to_float_normalized(mean: Sequence[float], std: Sequence[float]) -> list[v2.Transform]:
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]


def build_train_transform(
    img_size: int,
    augment: str,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    native_size: int,
    hflip: float = 0.5,
    crop_scale: tuple[float, float] = (0.08, 1.0),
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3),
    crop_pct: float = 1.0,
    random_erasing: float = 0.0,
    crop: str = "auto",
) -> v2.Compose:
    """The training pipeline.

    Args:
        augment: ``none`` (resize only), ``flip-crop`` (random horizontal flip plus a
            random resized crop, or pad-and-crop for images of at most 64 px),
            ``autoaugment`` (the CIFAR-10 policy), ``randaugment`` or ``trivialaugment``
            (each on top of flip-crop).
        native_size: the data's typical image side; with ``crop="auto"`` it decides
            pad-and-crop (at most 64 px) vs random resized crop.
        crop: ``auto``, ``resized`` (random resized crop) or ``pad`` (pad by 1/8, random crop).
        hflip: probability of a horizontal flip (0 for data where a flip changes the label).
        random_erasing: probability of random erasing, applied after normalization.
    """
    if augment not in AUGMENTATIONS:
        raise ValueError(f"--augment must be one of {', '.join(AUGMENTATIONS)}, got {augment!r}")
    if crop not in CROPS:
        raise ValueError(f"--crop must be one of {', '.join(CROPS)}, got {crop!r}")
    steps: list[v2.Transform] = []
    if augment == "none":
        steps += resize_and_center(img_size, crop_pct)
    else:
        if uses_resized_crop(native_size, crop):
            steps.append(v2.RandomResizedCrop(img_size, scale=crop_scale, ratio=crop_ratio, antialias=True))
        else:
            steps += [
                v2.Resize(img_size, antialias=True),
                v2.CenterCrop(img_size),
                v2.RandomCrop(img_size, padding=max(1, img_size // 8)),
            ]
        if hflip > 0:
            steps.append(v2.RandomHorizontalFlip(hflip))
        policy = policy_transform(augment)
        if policy is not None:
            steps.append(policy)
    steps += _to_float_normalized(mean, std)
    if random_erasing > 0:
        steps.append(v2.RandomErasing(p=random_erasing, value=0))
    return v2.Compose(steps)


def build_eval_transform(
    img_size: int, mean: Sequence[float], std: Sequence[float], crop_pct: float = 1.0
) -> v2.Compose:
    """Resize (shorter side to ``img_size / crop_pct``), center crop, normalize."""
    return v2.Compose(resize_and_center(img_size, crop_pct) + _to_float_normalized(mean, std))


def eval_decode_side(img_size: int, crop_pct: float) -> int:
    """The ``max_side`` at which evaluation images decode (:func:`vitrain.data.images.read_image`).

    Training's evaluation (either pipeline), ``vitrain eval`` and ``vitrain predict`` all use
    it, so a big JPEG gives the same pixels, and a checkpoint the same score, in each.
    """
    return int(img_size / crop_pct) + 1


def eval_decode_side_for(meta: dict, img_size: int) -> int:
    """:func:`eval_decode_side` for a checkpoint's metadata (its ``crop_pct``)."""
    return eval_decode_side(img_size, meta.get("crop_pct", 1.0))


def eval_transform_for(meta: dict, img_size: int) -> v2.Compose:
    """The evaluation pipeline a checkpoint's metadata describes (``mean``, ``std``, ``crop_pct``)."""
    return build_eval_transform(img_size, meta["mean"], meta["std"], meta.get("crop_pct", 1.0))


class TransformedDataset(Dataset):
    """Apply ``transform`` to the images of ``dataset`` (and ``target_map`` to its labels)."""

    def __init__(self, dataset: Dataset, transform: v2.Transform, target_map: Sequence[int] | None = None) -> None:
        self.dataset = dataset
        self.transform = transform
        self.target_map = target_map

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        """The transformed image at ``key``: an index, or ``(index, seed)`` for a training sample whose
        random transform draws from ``seed`` alone (see :mod:`vitrain.data.sampling`)."""
        if isinstance(key, tuple):
            index, seed = key
            image, target = self.dataset[index]
            with torch.random.fork_rng(devices=[]):  # the process's own stream (dropout, when workers=0) stays put
                torch.manual_seed(seed)
                image = self.transform(image)
        else:
            image, target = self.dataset[key]
            image = self.transform(image)
        return image, (target if self.target_map is None else self.target_map[target])


def dataset_mean_std(dataset: Dataset, img_size: int, max_images: int = 1000) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of ``dataset`` at the model's input size, in [0, 1] units.

    Uses up to ``max_images`` evenly spaced images, so large folders stay quick.
    """
    resize = v2.Compose(resize_and_center(img_size, 1.0) + [v2.ToDtype(torch.float32, scale=True)])
    n = len(dataset)
    step = max(1, n // max_images)
    total = total_sq = None
    pixels = 0
    if hasattr(dataset, "first_images"):  # streamed shards: the first images, not evenly spaced ones
        images = dataset.first_images(max_images)
    else:
        images = (dataset[index][0] for index in range(0, n, step))
    for raw in images:
        image = resize(raw).flatten(1).double()
        s, sq = image.sum(1), (image * image).sum(1)
        total = s if total is None else total + s
        total_sq = sq if total_sq is None else total_sq + sq
        pixels += image.shape[1]
    if total is None:
        raise ValueError("cannot compute normalization statistics of an empty training set")
    mean = total / pixels
    std = (total_sq / pixels - mean * mean).clamp_min(1e-12).sqrt()
    return [round(float(m), 4) for m in mean], [round(max(float(s), 1e-3), 4) for s in std]


def normalization(kind: str, dataset: Dataset, img_size: int, channels: int) -> tuple[list[float], list[float]]:
    """Mean and std for ``--normalize dataset|imagenet|none``."""
    if kind == "dataset":
        return dataset_mean_std(dataset, img_size)
    if kind == "imagenet":
        if channels == 1:
            return [round(sum(IMAGENET_MEAN) / 3, 4)], [round(sum(IMAGENET_STD) / 3, 4)]
        return list(IMAGENET_MEAN), list(IMAGENET_STD)
    if kind == "none":
        return [0.0] * channels, [1.0] * channels
    raise ValueError(f"--normalize must be dataset, imagenet or none, got {kind!r}")
