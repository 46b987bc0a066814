"""Data larger than memory: WebDataset shards, streamed from disk.

A shard folder holds ``train-*.tar`` (and optionally ``val-*.tar`` and ``test-*.tar``) in
the WebDataset layout: each sample is an image ``KEY.jpg`` (or ``.png``, ``.webp``, ...)
beside ``KEY.cls``, its class index as text; ``classes.txt`` beside the shards names the
classes, one per line, in index order. ``vitrain shards`` writes such a folder from a
folder of class folders (:func:`write_shards`). The tar files are read with the
``webdataset`` library's tar iterators, one shard after another, front to back.

Each split is scanned once when the data loads (:func:`scan_split`): every shard is
streamed for its number of samples, their labels, a digest of each image (the leak check
compares them, as it compares files) and the channels and size of the images. Only these
small lists stay in memory; the images are read again, streaming, every epoch.

Training (:class:`ShardStream`): every epoch shuffles the order of the training shards
from the epoch's seed (the same on every process). Under torchrun each process takes every
``world``-th shard of that order, and each of its DataLoader workers every ``workers``-th
of those, so each sample is read by one worker of one process per epoch. A worker shuffles
its samples through a buffer (``--shuffle-buffer``), decodes and augments them (each
sample's augmentation seeded by the epoch and its key) and yields whole batches, a fixed
number per worker, so that every process makes the same number of steps and an epoch can
be resumed at any batch (:attr:`ShardStream.start`: the skipped batches are read but not
decoded). Evaluation (:class:`ShardEvalStream`) reads its split in order, each process the
samples ``rank::world``.
"""

from __future__ import annotations

import hashlib
import io
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, default_collate, get_worker_info

from ..place import Dist
from .datasets import DataError
from .images import GRAY_MODES, UNREADABLE, ImageReadError, decode_image

SPLITS = ("train", "val", "test")
CLASSES_FILE = "classes.txt"
IMAGE_SUFFIXES = ("jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "ppm", "pgm")


@dataclass
class Sample:
    """One sample of a shard: its key, the image's suffix and bytes, and its class index."""

    key: str
    suffix: str
    data: bytes
    label: int


def is_shard_folder(path: Path) -> bool:
    """Whether ``path`` is a folder of WebDataset shards (it holds ``train-*.tar``)."""
    return path.is_dir() and any(path.glob("train-*.tar"))


def shard_files(root: Path, split: str) -> list[Path]:
    """The shards of ``split`` in ``root``, in name order."""
    return sorted(root.glob(f"{split}-*.tar"))


def _webdataset():
    try:
        import webdataset
        import webdataset.tariterators
    except ImportError:
        raise DataError("WebDataset shards need the webdataset library: pip install 'vitrain[shards]'") from None
    return webdataset


def iter_samples(shard: Path) -> Iterator[Sample]:
    """The samples of one shard, in the order they are stored (a streaming read, front to back)."""
    tariterators = _webdataset().tariterators
    group_by_keys, tar_file_iterator = tariterators.group_by_keys, tariterators.tar_file_iterator

    def files(stream) -> Iterator[dict[str, Any]]:
        for member in tar_file_iterator(stream):
            yield {**member, "__url__": str(shard)}

    try:
        with open(shard, "rb") as stream:
            for raw in group_by_keys(files(stream)):
                yield _sample(shard, raw)
    except (OSError, EOFError, ValueError) as err:
        if isinstance(err, DataError):
            raise
        raise DataError(f"{shard}: not a readable tar shard ({type(err).__name__}: {err})") from None


def _sample(shard: Path, raw: dict[str, Any]) -> Sample:
    key = raw["__key__"]
    suffix = next((s for s in IMAGE_SUFFIXES if s in raw), None)
    if suffix is None or "cls" not in raw:
        missing = "an image (.jpg, .png, .webp, ...)" if suffix is None else "a .cls label"
        raise DataError(f"{shard}: sample {key} has no {missing}")
    try:
        label = int(raw["cls"].decode().strip())
    except ValueError:
        raise DataError(f"{shard}: sample {key}: its .cls is {raw['cls'][:20]!r}, not a class index") from None
    return Sample(key, suffix, raw[suffix], label)


def decode(sample: Sample, channels: int, bit_depth: str | int = "auto", max_side: int | None = None) -> torch.Tensor:
    """A sample's image as a (channels, H, W) uint8 tensor, decoded as files are (:func:`decode_image`)."""
    try:
        return decode_image(io.BytesIO(sample.data), channels, max_side, bit_depth)
    except UNREADABLE as err:
        raise ImageReadError(f"cannot read image {sample.key}.{sample.suffix}: {err}") from None


class ShardSplit:
    """One split of a shard folder, as the scan found it: its shards, and per sample the label and digest.

    It stands where a file dataset stands in :class:`~.datasets.DataSplits` (``len``,
    ``targets``, ``subset``), but is read by streaming (:class:`ShardStream`,
    :class:`ShardEvalStream`), never by index.
    """

    def __init__(
        self,
        root: Path,
        shards: Sequence[Path],
        counts: Sequence[int],
        labels: Sequence[int],
        hashes: Sequence[str],
        channels: int,
        dropped: frozenset[int] = frozenset(),
    ) -> None:
        self.root, self.shards, self.counts = root, list(shards), list(counts)
        self._labels, self._hashes, self.dropped = list(labels), list(hashes), dropped
        self.channels = channels
        self.max_side: int | None = None  # set by the loader, as for files
        self.bit_depth: str | int = "auto"
        self.targets = [t for i, t in enumerate(self._labels) if i not in dropped]  # of the kept samples
        self.hashes = [h for i, h in enumerate(self._hashes) if i not in dropped]  # the leak check's digests

    def __len__(self) -> int:
        return len(self.targets)

    def kept_counts(self) -> list[int]:
        """Samples per shard, those dropped (``--dedupe``) left out."""
        if not self.dropped:
            return list(self.counts)
        starts = np.cumsum([0, *self.counts])
        return [n - sum(1 for i in self.dropped if starts[s] <= i < starts[s + 1]) for s, n in enumerate(self.counts)]

    def subset(self, indices: Sequence[int]) -> "ShardSplit":
        """The split with only the samples at ``indices`` (indices among the kept samples)."""
        kept = [i for i in range(len(self._labels)) if i not in self.dropped]
        chosen = {kept[i] for i in indices}
        dropped = frozenset(i for i in range(len(self._labels)) if i not in chosen)
        split = ShardSplit(self.root, self.shards, self.counts, self._labels, self._hashes, self.channels, dropped)
        split.max_side, split.bit_depth = self.max_side, self.bit_depth
        return split

    def samples(self, shards: Sequence[int] | None = None) -> Iterator[tuple[int, Sample]]:
        """(position among the kept samples, sample) of the given shards (all, in order), dropped ones left out."""
        starts = np.cumsum([0, *self.counts])
        kept_before = np.cumsum([0, *self.kept_counts()])
        for s in range(len(self.shards)) if shards is None else shards:
            position = int(kept_before[s])
            for i, sample in enumerate(iter_samples(self.shards[s])):
                if int(starts[s]) + i in self.dropped:
                    continue
                yield position, sample
                position += 1

    def first_images(self, n: int) -> Iterator[torch.Tensor]:
        """The first ``n`` images, decoded (for the normalization statistics)."""
        for i, (_, sample) in enumerate(self.samples()):
            if i == n:
                return
            yield decode(sample, self.channels, self.bit_depth)

    def sample_files(self, positions: Sequence[int]) -> dict[int, tuple[str, bytes]]:
        """The suffix and bytes of the images at ``positions`` (one streaming pass)."""
        wanted, found = set(positions), {}
        for position, sample in self.samples():
            if position in wanted:
                found[position] = (sample.suffix, sample.data)
                if len(found) == len(wanted):
                    break
        return found


def read_classes(root: Path) -> list[str]:
    """The class names of a shard folder (``classes.txt``, one per line)."""
    path = root / CLASSES_FILE
    if not path.is_file():
        raise DataError(f"{root}: a folder of shards needs {CLASSES_FILE} beside them, one class name per line")
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if len(names) < 2:
        raise DataError(f"{path}: names {len(names)} class(es); a classifier needs at least two")
    if len(set(names)) != len(names):
        raise DataError(f"{path}: a class is named twice")
    return names


def scan_split(root: Path, split: str, n_classes: int, progress: Callable[[int], None] | None = None) -> ShardSplit:
    """Stream every shard of ``split`` once: samples per shard, labels, digests and the images' channels."""
    shards = shard_files(root, split)
    counts, labels, hashes, gray = [], [], [], True
    for shard in shards:
        n = 0
        for sample in iter_samples(shard):
            if not 0 <= sample.label < n_classes:
                raise DataError(
                    f"{shard}: sample {sample.key} has class {sample.label}, but {CLASSES_FILE} names {n_classes}"
                )
            labels.append(sample.label)
            hashes.append(hashlib.sha256(sample.data).hexdigest())
            if gray:
                gray = _mode(sample) in GRAY_MODES
            n += 1
        counts.append(n)
        if progress is not None:
            progress(n)
    if not labels:
        raise DataError(f"{root}: the {split} shards hold no samples")
    return ShardSplit(root, shards, counts, labels, hashes, 1 if gray else 3)


def _mode(sample: Sample) -> str:
    try:
        with Image.open(io.BytesIO(sample.data)) as img:
            return img.mode
    except UNREADABLE as err:
        raise ImageReadError(f"cannot read image {sample.key}.{sample.suffix}: {err}") from None


def typical_side(split: ShardSplit, sample: int = 32) -> int:
    """The median shorter side of the first ``sample`` images (read from their headers)."""
    sides = []
    for i, (_, s) in enumerate(split.samples()):
        if i == sample:
            break
        with Image.open(io.BytesIO(s.data)) as img:
            sides.append(min(img.size))
    return int(np.median(sides))


# ------------------------------------------------------------------ streaming


def _seeded(transform: Callable, image: torch.Tensor, seed: int) -> torch.Tensor:
    with torch.random.fork_rng(devices=[]):  # the process's own stream (dropout, when workers=0) stays put
        torch.manual_seed(seed)
        return transform(image)


def _batch(images: list[torch.Tensor], labels: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    # default_collate stacks a worker's batch straight into shared memory, which the trip to the main
    # process would otherwise copy it into
    return default_collate(images), torch.tensor(labels, dtype=torch.long)


def _worker() -> tuple[int, int]:
    info = get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


class ShardStream(IterableDataset):
    """This process's training batches of one epoch, streamed from its share of the shards.

    :attr:`epoch_seed` is drawn by its :class:`ShardLoader` from the loader's generator (re-seeded
    from the run's seed every epoch) before the workers start, so that every worker and process
    knows it (a generator does not travel to workers started from a fork server). ``workers`` is
    the DataLoader's worker count (0: this process reads). Each worker yields a fixed number
    of batches (:meth:`quota`), so the DataLoader hands them out in a fixed round-robin
    order, and :attr:`start` (the batch an epoch starts at; reset once it has begun) skips
    exactly the batches a resumed epoch has done.
    """

    def __init__(
        self,
        split: ShardSplit,
        transform: Callable,
        batch_size: int,
        place: Dist | None = None,
        workers: int = 0,
        buffer: int = 1000,
    ) -> None:
        self.split, self.transform, self.batch_size = split, transform, batch_size
        self.place, self.workers, self.buffer = place or Dist(), max(1, workers), buffer
        self.start = 0
        self.epoch_seed = 0
        readers = self.place.world * self.workers
        if len(split.shards) < readers:
            raise DataError(
                f"{split.root}: {len(split.shards)} training shard(s) for {self.place.world} process(es) x "
                f"{self.workers} DataLoader worker(s): every worker reads whole shards, so write at least "
                f"{readers} (vitrain shards --shard-size), or lower --workers"
            )
        # the worst case over epochs: a worker gets the fewest shards, and the smallest ones
        least = sorted(split.kept_counts())[: len(split.shards) // readers]
        self.per_worker = sum(least) // batch_size
        if self.per_worker == 0:
            raise DataError(
                f"{split.root}: a DataLoader worker may get only {sum(least)} training samples, fewer than "
                f"--batch-size {batch_size}; lower --batch-size or --workers, or write more samples per shard"
            )

    def __len__(self) -> int:
        return self.per_worker * self.workers

    def dropped_per_epoch(self) -> int:
        """How many training samples an epoch leaves out at most (every worker stops at its quota)."""
        return len(self.split) - len(self) * self.batch_size * self.place.world

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch = self.epoch_seed  # the same in every worker and process
        first, self.start = self.start, 0
        worker, workers = _worker()
        # the DataLoader takes a batch from worker 0, 1, ... in turn: in an epoch resumed at batch `first`,
        # worker w plays the part of the worker that made batch first + w in the whole epoch
        part = (worker + first) % workers
        order = np.random.default_rng(epoch).permutation(len(self.split.shards))
        mine = order[self.place.rank :: self.place.world][part::workers]
        quota = self.per_worker
        skip = len(range(part, first, workers))  # this part's batches among the first `first`
        rng = np.random.default_rng([epoch, self.place.rank, part])
        images, labels, made = [], [], 0
        for i, sample in enumerate(self._shuffled(mine, rng)):
            if made >= quota:
                return
            if made >= skip:  # skipped batches are read, not decoded
                seed = (epoch + zlib.crc32(sample.key.encode())) % 2**63
                image = decode(sample, self.split.channels, self.split.bit_depth, self.split.max_side)
                images.append(_seeded(self.transform, image, seed))
            labels.append(sample.label)
            if len(labels) == self.batch_size:
                if made >= skip:
                    yield _batch(images, labels)
                images, labels, made = [], [], made + 1

    def _shuffled(self, shards: Sequence[int], rng: np.random.Generator) -> Iterator[Sample]:
        """The samples of ``shards`` through a shuffle buffer: each is swapped out at a random place."""
        held: list[Sample] = []
        for _, sample in self.split.samples(shards):
            if len(held) < self.buffer:
                held.append(sample)
                continue
            j = int(rng.integers(len(held)))
            held[j], sample = sample, held[j]
            yield sample
        rng.shuffle(held)
        yield from held


class ShardLoader(DataLoader):
    """The DataLoader of a :class:`ShardStream`: it draws the epoch's seed from its ``generator`` for the
    stream's workers, and once they have their copies of the stream (with its :attr:`~ShardStream.start`),
    the stream here starts the next epoch from its first batch."""

    def __iter__(self):
        self.dataset.epoch_seed = int(torch.randint(0, 2**62, (1,), generator=self.generator))
        batches = super().__iter__()
        if self.num_workers > 0:  # without workers the stream itself reads and resets `start` as it begins
            self.dataset.start = 0
        return batches


class ShardEvalStream(IterableDataset):
    """An evaluation split's batches in order: this process's samples ``rank::world``, decoded as evaluation
    decodes files; with DataLoader workers, worker ``w`` makes every ``w``-th batch, so the order holds."""

    def __init__(
        self,
        split: ShardSplit,
        transform: Callable,
        batch_size: int,
        place: Dist | None = None,
        target_map: Sequence[int] | None = None,
    ) -> None:
        self.split, self.transform, self.batch_size, self.place = split, transform, batch_size, place or Dist()
        self.target_map = target_map  # the split's class index -> the model's

    def __len__(self) -> int:
        return -(-len(range(self.place.rank, len(self.split), self.place.world)) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        worker, workers = _worker()
        images, labels, batch = [], [], 0
        for position, sample in self.split.samples():
            if position % self.place.world != self.place.rank:
                continue
            if batch % workers == worker:
                image = decode(sample, self.split.channels, self.split.bit_depth, self.split.max_side)
                images.append(self.transform(image))
            labels.append(sample.label if self.target_map is None else self.target_map[sample.label])
            if len(labels) == self.batch_size:
                if batch % workers == worker:
                    yield _batch(images, labels)
                images, labels, batch = [], [], batch + 1
        if labels and batch % workers == worker:
            yield _batch(images, labels)


# ------------------------------------------------------------------ writing


def write_shards(
    splits: dict[str, Any], classes: Sequence[str], out: Path, shard_size: int, log=print
) -> dict[str, list[int]]:
    """Write each split of ``splits`` (file datasets: ``paths`` and ``targets``) as shards of ``shard_size``
    samples into ``out``, with ``classes.txt``; the files keep their bytes. Returns the samples per shard."""
    TarWriter = _webdataset().TarWriter
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, list[int]] = {}
    for split, dataset in splits.items():
        if dataset is None:
            continue
        counts: list[int] = []
        items = list(zip(dataset.paths, dataset.targets))
        for start in range(0, len(items), shard_size):
            name = out / f"{split}-{len(counts):06d}.tar"
            partial = name.with_name(f".{name.name}.tmp")  # renamed once whole: no half-written shard
            with TarWriter(str(partial), encoder=False) as sink:
                for i, (path, label) in enumerate(items[start : start + shard_size], start):
                    suffix = Path(path).suffix.lower().lstrip(".")
                    suffix = "jpg" if suffix == "jpeg" else suffix
                    if suffix not in IMAGE_SUFFIXES:
                        raise DataError(f"{path}: vitrain shards stores {', '.join(IMAGE_SUFFIXES)} images")
                    sink.write({"__key__": f"{split}{i:08d}", suffix: Path(path).read_bytes(), "cls": b"%d" % label})
            partial.replace(name)
            counts.append(min(shard_size, len(items) - start))
        written[split] = counts
        log(f"{split}: {len(items)} images in {len(counts)} shard(s)")
    (out / CLASSES_FILE).write_text("".join(f"{c}\n" for c in classes), encoding="utf-8")
    return written


def shard_splits(
    root: Path,
    channels: int | None = None,
    classes: Sequence[str] | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    split_seed: int = 0,
) -> Any:
    """The splits of a shard folder: its ``train``/``val``/``test`` shards, scanned once (:func:`scan_split`).

    A split without shards of its own is carved out of the training shards (stratified,
    ``--split-seed``), as a flat folder's is: validation when there are no ``val-*.tar``,
    and test too when there are no ``test-*.tar`` either.
    """
    from .datasets import DataSplits, stratified_split

    names = read_classes(root)
    if classes and list(classes) != names:  # a resumed run names them all, as they were
        raise DataError(
            f"--classes with --data {root}: a shard folder trains on all its classes ({', '.join(names)}); "
            "write shards of the chosen classes (vitrain shards --classes is not needed: shard a folder of them)"
        )
    found = {split: scan_split(root, split, len(names)) if shard_files(root, split) else None for split in SPLITS}
    train, val, test = found["train"], found["val"], found["test"]
    notes, options = [f"{root}: WebDataset shards, streamed ({len(train.shards)} training shard(s))"], {}
    if val is None:
        carve = [val_fraction] + ([test_fraction] if test is None else [])
        parts = stratified_split(train.targets, carve, split_seed)
        val = train.subset(parts[0])
        if test is None:
            test = train.subset(parts[1]) if test_fraction > 0 and len(parts[1]) else None
            options["test_fraction"] = test_fraction
        train = train.subset(parts[-1])
        options.update(val_fraction=val_fraction, split_seed=split_seed)
        notes.append(f"validation{' and test' if 'test_fraction' in options else ''} carved out of the training shards")
    found_channels = channels or max(s.channels for s in (train, val, test) if s is not None)
    for split in (train, val, test):
        if split is not None:
            split.channels = found_channels
    return DataSplits(
        str(root),
        names,
        found_channels,
        train,
        val,
        test,
        native_size=typical_side(train),
        hflip_ok=True,
        notes=notes,
        split_options=options,
    )
