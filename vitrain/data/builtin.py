"""The built-in sets behind ``--data``: scikit-learn's ``digits`` (offline; the default) and
the torchvision sets ``cifar10``, ``cifar100``, ``mnist`` and ``fashion-mnist`` (found in, or
downloaded into, ``--data-root``), held in memory and split into train/val/test.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .datasets import ArrayImageDataset, DataError, DataSplits, _select_classes, stratified_split

BUILTIN = ("digits", "cifar10", "cifar100", "mnist", "fashion-mnist")


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


def unpack_ubyte_gz(raw: Path, archives: Sequence[str]) -> None:
    """Decompress the ``*-ubyte.gz`` files of an (Fashion-)MNIST ``raw/`` folder that have no uncompressed
    copy beside them yet, as torchvision reads only those (its download does this step itself)."""
    import gzip
    import os

    for archive in archives:
        packed, unpacked = raw / archive, raw / Path(archive).stem
        if not packed.is_file() or unpacked.is_file():
            continue
        try:
            with gzip.open(packed) as f:
                data = f.read()
        except (OSError, EOFError) as err:
            raise DataError(f"{packed}: not a readable gzip file ({err})") from None
        partial = unpacked.with_name(f".{unpacked.name}.{os.getpid()}.tmp")  # never a half-written file
        partial.write_bytes(data)
        os.replace(partial, unpacked)


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
        "mnist": "MNIST/raw/ with the four *-ubyte.gz files (as the official site ships them, or uncompressed)",
        "fashion-mnist": "FashionMNIST/raw/ with the four *-ubyte.gz files (as the official site ships them, or "
        "uncompressed)",
    }[name]
    root = Path(root).expanduser()
    if name in ("mnist", "fashion-mnist"):
        unpack_ubyte_gz(Path(root) / cls.__name__ / "raw", [Path(url).name for url, _ in cls.resources])
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
