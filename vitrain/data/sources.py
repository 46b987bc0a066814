"""Everything ``--data`` accepts, turned into train/val/test datasets of uint8 images.

* ``digits``: scikit-learn's bundled 8x8 handwritten digits (offline; the default).
* ``cifar10``, ``cifar100``, ``mnist``, ``fashion-mnist``: torchvision datasets in ``--data-root``.
* a folder of class folders, flat or with split folders (``train``, ``val``/``valid``/
  ``validation``, ``test``, and the ``Training``/``Testing`` spelling of Kaggle sets).
* a ``.zip`` or ``.tar`` of such a folder, extracted once into a cache.

Every dataset yields ``(image, label)`` with ``image`` a (C, H, W) uint8 tensor that
already has the requested channel count; resizing and augmentation are the transforms' job.

This module's one job is the dispatch (:func:`load_data`, :func:`load_split`): the types live
in :mod:`vitrain.data.datasets`, the built-in sets in :mod:`vitrain.data.builtin` and the
image folders in :mod:`vitrain.data.folders`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from torch.utils.data import Dataset

from .archive import default_cache_dir, extract_archive, is_archive
from .builtin import BUILTIN, digits_splits, torchvision_splits
from .datasets import (
    SKIP_BAD_IMAGES_HINT,
    ArrayImageDataset,
    DataError,
    DataSplits,
    FileImageDataset,
    class_counts,
    convert_tensor_channels,
    split_digest,
    stratified_split,
)
from .folders import SPLIT_NAMES, _flat_dataset, _subdirs, find_dataset_root, folder_splits
from .shards import is_shard_folder, shard_splits

# load_data and load_split, and the names code imported from here before this module was split
# by job (re-exported from where they now live)
__all__ = [
    "BUILTIN",
    "SKIP_BAD_IMAGES_HINT",
    "SPLIT_NAMES",
    "ArrayImageDataset",
    "DataError",
    "DataSplits",
    "FileImageDataset",
    "class_counts",
    "convert_tensor_channels",
    "digits_splits",
    "find_dataset_root",
    "folder_splits",
    "load_data",
    "load_split",
    "split_digest",
    "stratified_split",
    "torchvision_splits",
]


def load_data(
    data: str,
    *,
    data_root: str | Path | None = None,
    download: bool = True,
    channels: int | None = None,
    classes: Sequence[str] | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    split_seed: int = 0,
    cache_dir: Path | None = None,
    skip_bad_images: bool = False,
) -> DataSplits:
    """Resolve a ``--data`` value into :class:`DataSplits`.

    Args:
        data: ``digits``, a torchvision set name, a folder, or a .zip/.tar archive.
        data_root: where torchvision sets live (default ``$VITRAIN_CACHE/datasets``).
        download: allow torchvision to download missing sets.
        channels: force 1 or 3 channels (default: the data's own).
        classes: train on these classes only, in this order.
        val_fraction, test_fraction: split fractions where the data has no such split.
        split_seed: seed of those splits (independent of the training seed).
        skip_bad_images: for folders and archives, decode every file first and leave the
            unreadable ones out (listed in ``DataSplits.skipped``) instead of failing.
    """
    for name, value in (("--val-fraction", val_fraction), ("--test-fraction", test_fraction)):
        if not 0 <= value < 1:
            raise DataError(f"{name} must be in [0, 1), got {value}")
    if channels not in (None, 1, 3):
        raise DataError(f"--channels must be 1 or 3, got {channels}")
    key = data.lower()
    if key == "digits":
        return digits_splits(channels, classes)
    if key in BUILTIN:
        root = Path(data_root) if data_root else default_cache_dir() / "datasets"
        return torchvision_splits(key, root, download, val_fraction, split_seed, channels, classes)
    path = Path(data).expanduser()
    if is_shard_folder(path):
        return shard_splits(path, channels, classes, val_fraction, test_fraction, split_seed)
    if path.is_dir():
        return folder_splits(path, channels, classes, val_fraction, test_fraction, split_seed, skip_bad_images)
    if is_archive(path):
        extracted = extract_archive(path, cache_dir)
        splits = folder_splits(extracted, channels, classes, val_fraction, test_fraction, split_seed, skip_bad_images)
        splits.name = str(path)
        return splits
    if path.exists():
        raise DataError(f"--data {data}: not a folder or a .zip/.tar archive")
    raise DataError(f"--data {data}: no such file or folder, and not a built-in set ({', '.join(BUILTIN)})")


def load_split(
    data: str,
    split: str | None = None,
    *,
    channels: int | None = None,
    data_root: str | Path | None = None,
    download: bool = True,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    split_seed: int = 0,
    cache_dir: Path | None = None,
    whole_flat_folder: bool = True,
    classes: Sequence[str] | None = None,
) -> tuple[Dataset, list[str], str, dict[str, Any]]:
    """One split of ``data`` to evaluate: (dataset, class names, which split it is, the split
    options that carved it), with only ``classes`` (in that order, as ``--classes`` does for
    training) when given.

    ``split="all"`` means every image of a folder (or archive) without split folders; so
    does no ``split`` when ``whole_flat_folder`` is True. Otherwise the default is the test
    split, or validation where there is none. The options are those of ``val_fraction``,
    ``test_fraction`` and ``split_seed`` that decided which images the split holds (see
    :attr:`DataSplits.split_options`): none for all images, a split folder or digits.
    """
    if split not in (None, "all", "train", "val", "test"):
        raise DataError(f"--split must be all, train, val or test, got {split!r}")
    path = Path(data).expanduser()
    folder = extract_archive(path, cache_dir) if is_archive(path) else path
    if (split == "all" or (split is None and whole_flat_folder)) and folder.is_dir() and not is_shard_folder(folder):
        root = find_dataset_root(folder)
        if not any(d.name.lower() in SPLIT_NAMES for d in _subdirs(root)):
            # evaluating a folder of a single class is legitimate: no minimum class count
            dataset, names, _, _ = _flat_dataset(root, channels, classes, min_classes=1)
            return dataset, names, "all images", {}
    if split == "all":
        raise DataError(
            f"--split all means every image of a folder without split folders, and --data {data} "
            "has split folders or is a built-in set: give --split train, val or test"
        )
    splits = load_data(
        data,
        data_root=data_root,
        download=download,
        channels=channels,
        classes=classes,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        split_seed=split_seed,
        cache_dir=cache_dir,
    )
    chosen = split or ("test" if splits.test is not None else "val")
    dataset = getattr(splits, chosen)
    if dataset is None:
        raise DataError(f"--data {data} has no {chosen} split")
    # a test split is carved by the options only in a flat folder (else it is a folder or the official set)
    carved = chosen != "test" or "test_fraction" in splits.split_options
    return dataset, splits.classes, chosen, dict(splits.split_options) if carved else {}
