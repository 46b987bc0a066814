"""Everything ``--data`` accepts, turned into train/val/test datasets of uint8 images.

* ``digits``: scikit-learn's bundled 8x8 handwritten digits (offline; the default).
* ``cifar10``, ``cifar100``, ``mnist``, ``fashion-mnist``: torchvision datasets in ``--data-root``.
* a folder of class folders, flat or with split folders (``train``, ``val``/``valid``/
  ``validation``, ``test``, and the ``Training``/``Testing`` spelling of Kaggle sets).
* a ``.zip`` or ``.tar`` of such a folder, extracted once into a cache.

Every dataset yields ``(image, label)`` with ``image`` a (C, H, W) uint8 tensor that
already has the requested channel count; resizing and augmentation are the transforms' job.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .archive import default_cache_dir, extract_archive, is_archive
from .images import ImageReadError, image_mode, is_image_file, read_image

BUILTIN = ("digits", "cifar10", "cifar100", "mnist", "fashion-mnist")
SKIP_BAD_IMAGES_HINT = "--skip-bad-images leaves unreadable images out"  # appended to unreadable-image errors
SPLIT_NAMES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
}
_IGNORED_DIRS = {"__MACOSX"}
PARALLEL_CHECK_MIN = 2048  # more files than this are checked in worker processes
_GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}


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
        self, paths: Sequence[Path], targets: Sequence[int], channels: int, max_side: int | None = None
    ) -> None:
        self.paths = list(paths)
        self.targets = [int(t) for t in targets]
        self.channels = channels
        self.max_side = max_side  # set by the loader to decode big JPEGs at reduced size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return read_image(self.paths[index], self.channels, self.max_side), self.targets[index]

    def subset(self, indices: Sequence[int]) -> "FileImageDataset":
        return FileImageDataset(
            [self.paths[i] for i in indices], [self.targets[i] for i in indices], self.channels, self.max_side
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
        for path in getattr(dataset, "paths", []):
            digest.update(os.path.relpath(path, splits.name).encode() + b"\0")
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


def _check_class_count(classes: list[str], where: str) -> None:
    if len(classes) < 2:
        loose = _loose_images(Path(where))
        hint = (
            f"; its {loose} image(s) lie directly in it, and class folders are what name the labels: "
            f"put each class's images in a sub-folder named after the class ({where}/CLASS/IMAGE)"
            if loose
            else ""
        )
        raise DataError(
            f"{where}: found {len(classes)} class ({', '.join(classes) or 'none'}); "
            "a classifier needs at least 2 class folders" + hint
        )


# ---------------------------------------------------------------------------- built-in sets


def digits_splits(channels: int | None = None, classes: Sequence[str] | None = None) -> DataSplits:
    """scikit-learn's 1,797 8x8 digits, split 70/10/20 (train/val/test) with a fixed seed."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.from_numpy(np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8))[:, None]
    names = [str(d) for d in range(10)]
    dataset = ArrayImageDataset(images, bunch.target.tolist(), channels or 1)
    dataset, names = _filter_array_classes(dataset, names, classes, "digits")
    test_idx, val_idx, train_idx = stratified_split(dataset.targets, [0.2, 0.1], seed=0)
    return DataSplits(
        "digits",
        names,
        dataset.channels,
        dataset.subset(train_idx),
        dataset.subset(val_idx),
        dataset.subset(test_idx),
        native_size=8,
        hflip_ok=False,
        notes=["digits: fixed stratified split 70/10/20 (seed 0)"],
    )


def _filter_array_classes(
    dataset: ArrayImageDataset, names: list[str], wanted: Sequence[str] | None, where: str
) -> tuple[ArrayImageDataset, list[str]]:
    chosen = _select_classes(names, wanted, where)
    if chosen == names:
        return dataset, names
    remap = {names.index(c): i for i, c in enumerate(chosen)}
    keep = [i for i, t in enumerate(dataset.targets) if t in remap]
    subset = dataset.subset(keep)
    subset.targets = [remap[t] for t in subset.targets]
    return subset, chosen


def torchvision_splits(
    name: str,
    root: Path,
    download: bool,
    val_fraction: float,
    split_seed: int,
    channels: int | None = None,
    classes: Sequence[str] | None = None,
) -> DataSplits:
    """CIFAR-10/100, MNIST or Fashion-MNIST from torchvision, held in memory.

    The official test set is the test split; the validation split is carved (stratified)
    out of the official training set.
    """
    import torchvision.datasets as tvd

    cls = {"cifar10": tvd.CIFAR10, "cifar100": tvd.CIFAR100, "mnist": tvd.MNIST, "fashion-mnist": tvd.FashionMNIST}[
        name
    ]
    files = {
        "cifar10": "cifar-10-python.tar.gz (or its extracted cifar-10-batches-py/)",
        "cifar100": "cifar-100-python.tar.gz (or its extracted cifar-100-python/)",
        "mnist": "MNIST/raw/ with the four uncompressed *-ubyte files",
        "fashion-mnist": "FashionMNIST/raw/ with the four uncompressed *-ubyte files",
    }[name]
    root = Path(root).expanduser()
    try:
        train_set = cls(str(root), train=True, download=download)
        test_set = cls(str(root), train=False, download=download)
    except (RuntimeError, OSError) as err:
        how = "downloading failed" if download else "downloading is off (--no-download)"
        raise DataError(
            f"--data {name}: not found under --data-root {root} and {how} ({err}). "
            f"Put {files} in {root}, or run once with internet access."
        ) from None

    def as_images(data) -> torch.Tensor:
        array = torch.as_tensor(np.asarray(data))
        return array.permute(0, 3, 1, 2).contiguous() if array.ndim == 4 else array[:, None]

    if name.startswith("cifar"):
        names = list(train_set.classes)
    else:  # MNIST's class names read '0 - zero'; the digit is the name users expect
        names = [c.split(" - ")[0] for c in train_set.classes]
    train_all = ArrayImageDataset(as_images(train_set.data), list(map(int, train_set.targets)), channels)
    test = ArrayImageDataset(as_images(test_set.data), list(map(int, test_set.targets)), channels)
    train_all, chosen = _filter_array_classes(train_all, names, classes, name)
    test, _ = _filter_array_classes(test, names, classes, name)
    val_idx, train_idx = stratified_split(train_all.targets, [val_fraction], split_seed)
    return DataSplits(
        name,
        chosen,
        train_all.channels,
        train_all.subset(train_idx),
        train_all.subset(val_idx),
        test,
        native_size=int(train_all.images.shape[-1]),
        hflip_ok=name.startswith(("cifar", "fashion")),
        notes=[f"{name}: validation = {val_fraction:.0%} of the official training set (seed {split_seed})"],
        split_options={"val_fraction": val_fraction, "split_seed": split_seed},
    )


# ---------------------------------------------------------------------------- image folders


def _subdirs(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name not in _IGNORED_DIRS
    )


def _has_images(folder: Path) -> bool:
    return any(is_image_file(p) for p in folder.iterdir() if p.is_file())


def _loose_images(folder: Path) -> int:
    """How many images lie directly in ``folder``, outside any class folder (they have no label)."""
    return sum(1 for p in folder.iterdir() if p.is_file() and is_image_file(p)) if folder.is_dir() else 0


def find_dataset_root(folder: Path) -> Path:
    """Descend through single wrapper folders (``dataset.zip`` -> ``dataset/`` -> classes).

    A single sub-folder that holds images itself, or no folders, is a class folder, not a
    wrapper: a folder with one class in it stays the root (``vitrain eval`` on one class).
    """
    while True:
        subdirs = _subdirs(folder)
        if (
            len(subdirs) == 1
            and not _has_images(folder)
            and subdirs[0].name.lower() not in SPLIT_NAMES
            and _subdirs(subdirs[0])
            and not _has_images(subdirs[0])
        ):
            folder = subdirs[0]
        else:
            return folder


def _scan_classes(folder: Path) -> tuple[dict[str, list[Path]], int]:
    """Class name -> sorted image paths (recursively); also count ignored non-image files."""
    found: dict[str, list[Path]] = {}
    ignored = 0
    for class_dir in _subdirs(folder):
        files = [p for p in class_dir.rglob("*") if p.is_file()]
        images = sorted(p for p in files if is_image_file(p))
        ignored += len(files) - len(images)
        found[class_dir.name] = images
    return found, ignored


def _check_nonempty(found: dict[str, list[Path]], classes: list[str], folder: Path) -> None:
    empty = [c for c in classes if not found.get(c)]
    if empty:
        raise DataError(
            f"{folder}: class folder(s) {', '.join(empty)} contain no images "
            "(remove them, or pick classes with --classes)"
        )


class _FileCheck(Dataset):
    """One file per item: ``(mode, "")``, or ``("", why it cannot be read)``; see :func:`_check_files`."""

    def __init__(self, paths: Sequence[Path], decode: bool) -> None:
        self.paths, self.decode = paths, decode

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[str, str]:
        try:
            mode = image_mode(self.paths[index])
            if self.decode:
                read_image(self.paths[index], 1, max_side=32)
            return mode, ""
        except ImageReadError as err:
            return "", str(err)


def _check_files(paths: Sequence[Path], skip_bad: bool = False) -> tuple[int, dict[Path, str]]:
    """Check every image file before training; returns the inferred channel count and the skipped files.

    Without ``skip_bad`` each header is read, so an empty or non-image file fails now, by
    name. With it, each file is also decoded in full (at reduced size where the format
    allows), which finds truncated files too, and unreadable files are returned with their
    reason instead of raised. The channel count is 1 if every readable file is
    single-channel, else 3. Big sets are checked in DataLoader worker processes, one per
    core (at most 8): opening 60,000 files is seconds of Python work per core.
    """
    workers = min(8, os.cpu_count() or 1) if len(paths) > PARALLEL_CHECK_MIN else 0
    loader = DataLoader(_FileCheck(paths, skip_bad), batch_size=256, num_workers=workers, collate_fn=list)
    modes: set[str] = set()
    bad: dict[Path, str] = {}
    checked = 0
    for batch in loader:
        for mode, error in batch:
            if not error:
                modes.add(mode)
            elif skip_bad:
                bad[paths[checked]] = error
            else:
                raise ImageReadError(f"{error} ({SKIP_BAD_IMAGES_HINT})")
            checked += 1
    return (1 if modes <= _GRAY_MODES else 3), bad


def _drop_bad(found: dict[str, list[Path]], bad: dict[Path, str]) -> dict[str, list[Path]]:
    return {c: [p for p in files if p not in bad] for c, files in found.items()} if bad else found


def _skip_note(bad: dict[Path, str]) -> list[str]:
    if not bad:
        return []
    first = next(iter(bad.values()))
    return [f"skipped {len(bad)} unreadable image(s) (--skip-bad-images), e.g. {first}"]


def _typical_size(paths: Sequence[Path], sample: int = 32) -> int:
    from PIL import Image

    step = max(1, len(paths) // sample)
    sides = []
    for p in paths[::step][:sample]:
        with Image.open(p) as img:
            sides.append(min(img.size))
    return int(np.median(sides))


def _flat_dataset(
    root: Path, channels: int | None, classes: Sequence[str] | None, min_classes: int, skip_bad: bool = False
) -> tuple[FileImageDataset, list[str], int, dict[Path, str]]:
    """Every image below ``root``'s class folders as one dataset; also the classes, the ignored-file
    count and the unreadable files skipped (see :func:`_check_files`).

    Every file is checked, so a bad file fails here by name; the channel count is inferred
    unless ``channels`` is given.
    """
    found, ignored = _scan_classes(root)
    chosen = _select_classes(sorted(found), classes, str(root))
    if min_classes > 1:
        _check_class_count(chosen, str(root))
    inferred, bad = _check_files([p for c in chosen for p in found[c]], skip_bad)
    found = _drop_bad(found, bad)
    _check_nonempty(found, chosen, root)
    items = [(p, i) for i, c in enumerate(chosen) for p in found[c]]
    return FileImageDataset([p for p, _ in items], [t for _, t in items], channels or inferred), chosen, ignored, bad


def folder_splits(
    folder: Path,
    channels: int | None,
    classes: Sequence[str] | None,
    val_fraction: float,
    test_fraction: float,
    split_seed: int,
    skip_bad_images: bool = False,
) -> DataSplits:
    """A folder of class folders, flat or with split folders; ``skip_bad_images`` leaves unreadable files out."""
    root = find_dataset_root(folder)
    subdirs = _subdirs(root)
    split_dirs = {SPLIT_NAMES[d.name.lower()]: d for d in subdirs if d.name.lower() in SPLIT_NAMES}
    notes: list[str] = []
    options: dict[str, Any] = {}
    if split_dirs and "train" in split_dirs:
        others = [d.name for d in subdirs if d.name.lower() not in SPLIT_NAMES]
        if others:
            warnings.warn(f"{root}: ignoring folder(s) {', '.join(others)} beside the split folders")
        scans = {split: _scan_classes(d) for split, d in split_dirs.items()}
        names = {split: sorted(found) for split, (found, _) in scans.items()}
        chosen = _select_classes(names["train"], classes, str(split_dirs["train"]))
        for split, d in split_dirs.items():
            missing = sorted(set(chosen) - set(names[split]))
            extra = sorted(set(names[split]) - set(names["train"]))
            if missing or (extra and not classes):
                raise DataError(
                    f"{root}: split folders have different classes: {d.name}/ "
                    + (f"lacks {', '.join(missing)}" if missing else f"has extra {', '.join(extra)}")
                    + f" compared to {split_dirs['train'].name}/ (use --classes to pick common ones)"
                )
        _check_class_count(chosen, str(split_dirs["train"]))
        ignored = sum(n for _, n in scans.values())
        inferred, bad = _check_files(
            [p for found, _ in scans.values() for c in chosen for p in found[c]], skip_bad_images
        )
        scans = {split: (_drop_bad(found, bad), n) for split, (found, n) in scans.items()}
        for split, (found, _) in scans.items():
            _check_nonempty(found, chosen, split_dirs[split])
        paths = {split: [(p, i) for i, c in enumerate(chosen) for p in scans[split][0][c]] for split in scans}
        all_paths = [p for items in paths.values() for p, _ in items]
        ch = channels or inferred

        def make(items: list[tuple[Path, int]]) -> FileImageDataset:
            return FileImageDataset([p for p, _ in items], [t for _, t in items], ch)

        train = make(paths["train"])
        test = make(paths["test"]) if "test" in paths else None
        if "val" in paths:
            val = make(paths["val"])
        else:
            val_idx, train_idx = stratified_split(train.targets, [val_fraction], split_seed)
            train, val = train.subset(train_idx), train.subset(val_idx)
            options = {"val_fraction": val_fraction, "split_seed": split_seed}
            notes.append(
                f"validation = {val_fraction:.0%} of {split_dirs['train'].name}/ (stratified, seed {split_seed})"
            )
        if test is None:
            notes.append("no test split folder: the final evaluation uses the validation split")
    else:
        full, chosen, ignored, bad = _flat_dataset(root, channels, classes, min_classes=2, skip_bad=skip_bad_images)
        all_paths, ch = full.paths, full.channels
        if val_fraction + test_fraction >= 1:
            raise DataError(f"--val-fraction {val_fraction} + --test-fraction {test_fraction} leave no training images")
        test_idx, val_idx, train_idx = stratified_split(full.targets, [test_fraction, val_fraction], split_seed)
        train, val, test = full.subset(train_idx), full.subset(val_idx), full.subset(test_idx)
        if len(test) == 0:
            test = None
        options = {"val_fraction": val_fraction, "test_fraction": test_fraction, "split_seed": split_seed}
        notes.append(
            f"flat folder: stratified split {1 - val_fraction - test_fraction:.0%}/"
            f"{val_fraction:.0%}/{test_fraction:.0%} (train/val/test, seed {split_seed})"
        )
    in_splits = list(split_dirs.values()) if split_dirs and "train" in split_dirs else []
    for place in [root, *in_splits]:
        if loose := _loose_images(place):
            notes.append(
                f"left out {loose} image(s) lying directly in {place}, outside any class folder "
                "(a class folder names its images' label)"
            )
    if ignored:
        notes.append(f"ignored {ignored} non-image file(s)")
    notes += _skip_note(bad)
    if len(val) == 0:
        raise DataError(f"{root}: the validation split is empty; add images or raise --val-fraction")
    return DataSplits(
        str(folder),
        chosen,
        ch,
        train,
        val,
        test,
        native_size=_typical_size(all_paths),
        notes=notes,
        skipped={str(p): reason for p, reason in bad.items()},
        split_options=options,
    )


# ---------------------------------------------------------------------------- entry point


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


def class_counts(dataset: Dataset) -> Counter:
    """Images per class index."""
    return Counter(dataset.targets)


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
    if (split == "all" or (split is None and whole_flat_folder)) and folder.is_dir():
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
