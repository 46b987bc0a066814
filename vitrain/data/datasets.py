"""The types every data source returns: the datasets of uint8 images, the resolved splits
(:class:`DataSplits`), :class:`DataError`, and the helpers that split and fingerprint them.

Every dataset yields ``(image, label)`` with ``image`` a (C, H, W) uint8 tensor that
already has the requested channel count; resizing and augmentation are the transforms' job.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from .images import read_image

SKIP_BAD_IMAGES_HINT = "--skip-bad-images leaves unreadable images out"  # appended to unreadable-image errors


class DataError(ValueError):
    """The data given with ``--data`` (or a related option) cannot be used; says why."""


class ArrayImageDataset(Dataset):
    """Images held in memory as one (N, C, H, W) uint8 tensor."""

    def __init__(self, images: torch.Tensor, targets: Sequence[int], channels: int | None = None) -> None:
        if images.ndim == 3:
            images = images[:, None]
        self.images = images
        self.targets = [int(t) for t in targets]
        self.channels = channels or images.shape[1]

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return convert_tensor_channels(self.images[index], self.channels), self.targets[index]

    def subset(self, indices: Sequence[int]) -> "ArrayImageDataset":
        idx = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        return ArrayImageDataset(self.images[idx], [self.targets[i] for i in idx.tolist()], self.channels)


class FileImageDataset(Dataset):
    """Images decoded from files on every access."""

    def __init__(
        self,
        paths: Sequence[Path],
        targets: Sequence[int],
        channels: int,
        max_side: int | None = None,
        bit_depth: str | int = "auto",
    ) -> None:
        self.paths = list(paths)
        self.targets = [int(t) for t in targets]
        self.channels = channels
        self.max_side = max_side  # set by the loader to decode big JPEGs at reduced size
        self.bit_depth = bit_depth  # how 16-bit images become 8-bit (--bit-depth)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return read_image(self.paths[index], self.channels, self.max_side, self.bit_depth), self.targets[index]

    def subset(self, indices: Sequence[int]) -> "FileImageDataset":
        return FileImageDataset(
            [self.paths[i] for i in indices],
            [self.targets[i] for i in indices],
            self.channels,
            self.max_side,
            self.bit_depth,
        )


def convert_tensor_channels(image: torch.Tensor, channels: int) -> torch.Tensor:
    """(C, H, W) uint8 with C in {1, 3} -> ``channels`` channels (luma for RGB -> gray)."""
    if image.shape[0] == channels:
        return image
    if channels == 3:
        return image.expand(3, -1, -1).contiguous()
    weights = torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)  # ITU-R 601, as PIL's 'L'
    return (image.float() * weights).sum(0, keepdim=True).round().clamp(0, 255).to(torch.uint8)


@dataclass
class DataSplits:
    """The resolved data: class names, datasets per split, and facts the rest of vitrain uses."""

    name: str
    classes: list[str]
    channels: int
    train: Dataset
    val: Dataset
    test: Dataset | None
    native_size: int  # typical shorter image side, used to pick a default model
    hflip_ok: bool = True  # whether a horizontal flip keeps the label (not for digits)
    notes: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # unreadable files left out: path -> reason
    # the options that carved these splits, as used (val_fraction, test_fraction, split_seed); empty
    # where the data's own split folders or a fixed split decide everything (digits)
    split_options: dict[str, Any] = field(default_factory=dict)

    def decode_bits(self, bit_depth: str | int) -> None:
        """Decode 16-bit images as ``bit_depth`` says (``--bit-depth``; see :func:`~.images.read_image`)."""
        for dataset in (self.train, self.val, self.test):
            if hasattr(dataset, "bit_depth"):
                dataset.bit_depth = bit_depth

    def sizes(self) -> dict[str, int]:
        return {k: len(v) for k, v in (("train", self.train), ("val", self.val), ("test", self.test)) if v is not None}


def split_digest(splits: DataSplits) -> str:
    """A fingerprint of which images each split holds: files by their path below the data
    folder (so a moved folder keeps it) and their labels; in-memory sets by size and labels.

    A resumed run compares it with the one it started with: a file added to or removed from
    a flat folder re-deals the seeded split, which would move trained-on images into test.
    """
    digest = hashlib.sha256()
    for part, dataset in (("train", splits.train), ("val", splits.val), ("test", splits.test)):
        digest.update(f"|{part}:{0 if dataset is None else len(dataset)}|".encode())
        if dataset is None:
            continue
        for path in getattr(dataset, "paths", getattr(dataset, "shards", [])):  # files, or shards
            digest.update(os.path.relpath(path, splits.name).encode() + b"\0")
        if hasattr(dataset, "dropped"):  # a split carved out of shards: which of their samples it holds
            digest.update(np.asarray(sorted(dataset.dropped), dtype=np.int64).tobytes())
        digest.update(np.asarray(getattr(dataset, "targets", []), dtype=np.int64).tobytes())
    return digest.hexdigest()


def stratified_split(targets: Sequence[int], fractions: Sequence[float], seed: int) -> list[np.ndarray]:
    """Split indices per class, seeded, so every part keeps the class proportions.

    Returns ``len(fractions) + 1`` index arrays: one per fraction, then the remainder.
    A nonzero fraction takes at least one sample per class; every class keeps at least one
    sample in the remainder.
    """
    rng = np.random.default_rng(seed)
    targets = np.asarray(targets)
    parts: list[list[int]] = [[] for _ in range(len(fractions) + 1)]
    for cls in np.unique(targets):
        idx = np.flatnonzero(targets == cls)
        rng.shuffle(idx)
        start = 0
        for part, fraction in zip(parts, fractions):
            n = int(round(len(idx) * fraction))
            if fraction > 0 and n == 0:
                n = 1  # tiny classes still get one image in every requested split
            n = min(n, len(idx) - start - 1)
            part.extend(idx[start : start + max(n, 0)].tolist())
            start += max(n, 0)
        parts[-1].extend(idx[start:].tolist())
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


def _select_classes(classes: list[str], wanted: Sequence[str] | None, where: str) -> list[str]:
    if not wanted:
        return classes
    unknown = [c for c in wanted if c not in classes]
    if unknown:
        raise DataError(f"--classes: {', '.join(unknown)} not found in {where}; available: {', '.join(classes)}")
    twice = [c for c in dict.fromkeys(wanted) if list(wanted).count(c) > 1]
    if twice:
        raise DataError(f"--classes names {', '.join(twice)} more than once")
    return list(wanted)


def class_counts(dataset: Dataset) -> Counter:
    """Images per class index."""
    return Counter(dataset.targets)
