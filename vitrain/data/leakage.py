"""Finding images that appear in both the training split and an evaluation split.

A leaked image inflates validation and test accuracy: the model has seen it. Image files
are compared by their bytes (SHA-256), in-memory images by their pixels.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass

from torch.utils.data import Dataset

from .datasets import ArrayImageDataset, FileImageDataset


def content_hashes(dataset: Dataset) -> list[str]:
    """One digest per image: of the file's bytes, or of the decoded uint8 pixels held in memory."""
    if hasattr(dataset, "hashes"):  # shards: digests of the images' bytes, made as they were scanned
        return list(dataset.hashes)
    if isinstance(dataset, FileImageDataset):
        return [hashlib.sha256(p.read_bytes()).hexdigest() for p in dataset.paths]
    if isinstance(dataset, ArrayImageDataset):
        return [hashlib.sha256(img.numpy().tobytes()).hexdigest() for img in dataset.images]
    raise TypeError(f"cannot hash images of {type(dataset).__name__}")


@dataclass
class LeakReport:
    """Images of an evaluation split that are identical to a training image."""

    split: str
    leaked: list[int]  # indices into the evaluation split
    total: int

    def to_dict(self) -> dict:
        return {"images": self.total, "identical_to_train": len(self.leaked)}


def find_leaks(train: Dataset, evaluation: Dataset, split: str, train_hashes: set[str] | None = None) -> LeakReport:
    """Indices of ``evaluation`` whose content equals some training image's."""
    known = train_hashes if train_hashes is not None else set(content_hashes(train))
    hashes = content_hashes(evaluation)
    return LeakReport(split, [i for i, h in enumerate(hashes) if h in known], len(hashes))


def duplicate_count(dataset: Dataset) -> int:
    """How many images are extra copies of another image in the same split."""
    return sum(n - 1 for n in Counter(content_hashes(dataset)).values() if n > 1)


def without(dataset: Dataset, indices: list[int]) -> Dataset:
    """``dataset`` minus the images at ``indices``."""
    drop = set(indices)
    return dataset.subset([i for i in range(len(dataset)) if i not in drop])
