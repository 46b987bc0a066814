"""Image folders behind ``--data``: a folder of class folders, flat or with split folders
(``train``, ``val``/``valid``/``validation``, ``test``, and the ``Training``/``Testing``
spelling of Kaggle sets), found below any wrapper folders, with every image file checked
before training.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from torch.utils.data import DataLoader, Dataset

from .datasets import (
    SKIP_BAD_IMAGES_HINT,
    DataError,
    DataSplits,
    FileImageDataset,
    _select_classes,
    stratified_split,
)
from .images import GRAY_MODES, ImageReadError, image_mode, image_side, is_image_file, read_image
from .workers import worker_context

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
    loader = DataLoader(
        _FileCheck(paths, skip_bad is True),  # "headers": unreadable headers listed, nothing decoded
        batch_size=256,
        num_workers=workers,
        collate_fn=list,
        multiprocessing_context=worker_context(workers),
    )
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
    return (1 if modes <= GRAY_MODES else 3), bad


def _drop_bad(found: dict[str, list[Path]], bad: dict[Path, str]) -> dict[str, list[Path]]:
    return {c: [p for p in files if p not in bad] for c, files in found.items()} if bad else found


def _skip_note(bad: dict[Path, str]) -> list[str]:
    if not bad:
        return []
    first = next(iter(bad.values()))
    return [f"skipped {len(bad)} unreadable image(s) (--skip-bad-images), e.g. {first}"]


def _typical_size(paths: Sequence[Path], sample: int = 32) -> int:
    step = max(1, len(paths) // sample)
    return int(np.median([image_side(p) for p in paths[::step][:sample]]))


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
