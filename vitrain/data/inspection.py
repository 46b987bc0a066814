"""Looking at a dataset before training (``vitrain inspect``): what its images are, copies
within and across its splits, and whether its splits look alike.

:func:`scan` reads every image of a split once: a digest of its bytes (exact copies, as the
leak check finds them), a 64-bit perceptual hash (DCT hash of ``imagehash``; near copies: a
resized, re-encoded or slightly edited image keeps most of its bits), its mode, size and
bit depth, and a few numbers that describe how it looks (the mean of each channel, the
contrast, the colour saturation, the sharpness, the shorter side and the aspect ratio)
with a pooled intensity histogram.

:func:`near_duplicates` finds pairs of images that are the same picture: their 16x16
grayscale thumbnails, each standardized (brightness and contrast aside), correlate at least
:data:`NEAR_CORRELATION`, and their perceptual hashes differ in at most :data:`NEAR_DISTANCE`
of 64 bits. Every pair is compared, as one matrix product in blocks.

:func:`split_shift` compares each evaluation split with the training split, feature by
feature (two-sample Kolmogorov-Smirnov statistics, the largest one counts), and flags it
when it differs from training more than any of :data:`NULL_DRAWS` random parts of the
training split of the same size differs from the rest of training.
"""

from __future__ import annotations

import hashlib
import io
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
from PIL import Image

from .datasets import DataError
from .images import UNREADABLE, convert_channels, upright

NEAR_CORRELATION = 0.95  # near-duplicates: their 16x16 grayscale thumbnails correlate at least this much
NEAR_DISTANCE = 4  # and at most this many of their perceptual hashes' 64 bits differ
NULL_DRAWS = 200  # random parts of the training split that calibrate the split-shift test (p < 1/201)
FEATURES = ("brightness", "contrast", "saturation", "sharpness", "shorter_side", "aspect_ratio")
BINS = 32
BIT_DEPTHS = {"1": 1, "I;16": 16, "I;16B": 16, "I;16L": 16, "I;16N": 16, "I": 32, "F": 32}


@dataclass
class SplitFacts:
    """What one pass over a split found: one row per readable image, and the unreadable ones."""

    name: str
    indices: list[int] = field(default_factory=list)  # of each readable image in its dataset
    names: list[str] = field(default_factory=list)  # a file path, or "split #index" for images in memory
    labels: list[int] = field(default_factory=list)
    digests: list[str] = field(default_factory=list)
    hashes: list[int] = field(default_factory=list)  # 64-bit perceptual hashes
    tiny: list[np.ndarray] = field(default_factory=list)  # 16x16 grayscale, standardized: confirms near copies
    modes: list[str] = field(default_factory=list)
    sizes: list[tuple[int, int]] = field(default_factory=list)  # (width, height)
    features: list[tuple[float, ...]] = field(default_factory=list)  # as FEATURES say
    histogram: np.ndarray = field(default_factory=lambda: np.zeros((3, BINS)))  # pooled, per channel
    unreadable: list[tuple[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.names)

    def feature(self, name: str) -> np.ndarray:
        return np.asarray([f[FEATURES.index(name)] for f in self.features], dtype=np.float64)


def _raw_items(dataset: Any, split: str) -> Iterator[tuple[str, int, Callable[[], Image.Image], bytes]]:
    """(name, label, how to open the image, its bytes: the file's, or the pixels held in memory) per image."""
    if hasattr(dataset, "paths"):  # files
        for path, label in zip(dataset.paths, dataset.targets):
            data = Path(path).read_bytes()
            yield str(path), int(label), (lambda data=data: Image.open(io.BytesIO(data))), data
    elif hasattr(dataset, "samples"):  # WebDataset shards
        for position, sample in dataset.samples():
            name = f"{split} #{position} ({sample.key}.{sample.suffix})"
            yield name, sample.label, (lambda d=sample.data: Image.open(io.BytesIO(d))), sample.data
    else:  # images held in memory (built-in sets)
        for index in range(len(dataset)):
            image, label = dataset[index]
            array = image.numpy()
            pil = Image.fromarray(array[0] if array.shape[0] == 1 else array.transpose(1, 2, 0))
            yield f"{split} #{index}", int(label), (lambda pil=pil: pil), array.tobytes()  # as the leak check


def scan(dataset: Any, split: str, channels: int, progress: Callable[[], None] | None = None) -> SplitFacts:
    """Read every image of ``dataset`` once (see the module docstring)."""
    try:
        import imagehash
    except ImportError:
        raise DataError("vitrain inspect and --dedupe near need imagehash: pip install 'vitrain[inspect]'") from None

    facts = SplitFacts(split)
    histogram = np.zeros((channels, BINS))
    for index, (name, label, opener, data) in enumerate(_raw_items(dataset, split)):
        try:
            with opener() as img:
                mode, size = img.mode, img.size
                img.draft(None, (64, 64))  # JPEGs decode small: statistics and hashes need no more
                img.load()
                small = convert_channels(upright(img), channels)
        except UNREADABLE as err:
            facts.unreadable.append((name, str(err)))
            continue
        small.thumbnail((64, 64))
        pixels = np.asarray(small, dtype=np.float64).reshape(small.height, small.width, -1) / 255.0
        luma = pixels.mean(axis=2)
        w, h = size
        facts.indices.append(index)
        facts.names.append(name)
        facts.labels.append(label)
        facts.digests.append(hashlib.sha256(data).hexdigest())
        gray = small.convert("L")
        facts.hashes.append(int(str(imagehash.phash(gray)), 16))
        tiny = np.asarray(gray.resize((16, 16), Image.BILINEAR), dtype=np.float32).ravel()
        facts.tiny.append(((tiny - tiny.mean()) / max(float(tiny.std()), 1e-3)).astype(np.float16))
        facts.modes.append(mode)
        facts.sizes.append((w, h))
        saturation = float((pixels.max(axis=2) - pixels.min(axis=2)).mean())  # 0 for gray images
        sharpness = float(np.abs(np.diff(luma, axis=0)).mean() + np.abs(np.diff(luma, axis=1)).mean())
        features = (float(luma.mean()), float(luma.std()), saturation, sharpness, float(min(w, h)), float(w / h))
        facts.features.append(features)
        for c in range(channels):
            histogram[c] += np.histogram(pixels[..., c], bins=BINS, range=(0.0, 1.0))[0]
        if progress is not None:
            progress()
    facts.histogram = histogram / max(histogram.sum(axis=1, keepdims=True).max(), 1)
    return facts


def bit_depth(mode: str) -> int:
    """Bits per sample of a PIL mode (8 for the usual ones)."""
    return BIT_DEPTHS.get(mode, 8)


def exact_duplicates(splits: list[SplitFacts]) -> list[list[tuple[str, int]]]:
    """Groups of identical images (the same bytes), as (split, index) lists of two or more."""
    groups: dict[str, list[tuple[str, int]]] = {}
    for facts in splits:
        for i, digest in enumerate(facts.digests):
            groups.setdefault(digest, []).append((facts.name, i))
    return [g for g in groups.values() if len(g) > 1]


Where = tuple[str, int]  # (split, index)


def near_duplicates(splits: list[SplitFacts], distance: int = NEAR_DISTANCE) -> list[tuple[Where, Where, int]]:
    """Pairs of different images that are the same picture: their 16x16 grayscale thumbnails correlate at
    least :data:`NEAR_CORRELATION` and their perceptual hashes differ in at most ``distance`` of 64 bits; with
    that distance, closest first. Exact copies (the same bytes) are left out: they are counted as such.

    Every pair is compared (a matrix product of the thumbnails, in blocks of rows), so none is missed.
    """
    where = [(f.name, i) for f in splits for i in range(len(f))]
    if len(where) < 2:
        return []
    hashes = np.asarray([h for f in splits for h in f.hashes], dtype=np.uint64)
    digests = [d for f in splits for d in f.digests]
    tiny = np.stack([t for f in splits for t in f.tiny]).astype(np.float32) / np.float32(16)  # dot: correlation
    found = []
    for start in range(0, len(tiny), 512):
        block = tiny[start : start + 512] @ tiny.T
        for a, b in zip(*np.nonzero(block >= NEAR_CORRELATION)):
            i, j = start + int(a), int(b)
            if j <= i or digests[i] == digests[j]:
                continue
            bits = int(np.bitwise_count(hashes[i] ^ hashes[j]))
            if bits <= distance:
                found.append((where[i], where[j], bits))
    return sorted(found, key=lambda p: p[2])


def _ks(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import ks_2samp

    return float(ks_2samp(a, b).statistic)


def split_shift(train: SplitFacts, other: SplitFacts, seed: int = 0) -> dict[str, Any]:
    """How far ``other`` is from ``train`` (the largest KS statistic over :data:`FEATURES`), against the
    same for random parts of ``train`` of ``other``'s size; ``shifted`` when it is larger than all of them."""
    observed = {name: _ks(train.feature(name), other.feature(name)) for name in FEATURES}
    n, m = len(train), min(len(other), len(train) // 2)
    rng = np.random.default_rng(seed)
    null = []
    for _ in range(NULL_DRAWS):
        part = rng.permutation(n)
        a, b = part[:m], part[m:]
        null.append(max(_ks(train.feature(f)[a], train.feature(f)[b]) for f in FEATURES))
    largest = max(observed, key=observed.get)
    return {
        "statistic": round(observed[largest], 4),
        "feature": largest,
        "per_feature": {k: round(v, 4) for k, v in observed.items()},
        "random_training_parts_max": round(max(null), 4),
        "shifted": observed[largest] > max(null),
    }


def summary(facts: SplitFacts, classes: list[str]) -> dict[str, Any]:
    """The counts of a split: images per class, modes, bit depths, sizes and aspect ratios."""
    counts = np.bincount(np.asarray(facts.labels, dtype=np.int64), minlength=len(classes))
    sides = np.asarray([min(s) for s in facts.sizes]) if facts.sizes else np.zeros(1)
    ratios = facts.feature("aspect_ratio") if facts.features else np.zeros(1)
    per_class_modes = {
        classes[c]: dict(Counter(m for m, label in zip(facts.modes, facts.labels) if label == c))
        for c in range(len(classes))
    }
    return {
        "images": len(facts),
        "per_class": {classes[c]: int(counts[c]) for c in range(len(classes))},
        "imbalance": round(float(counts.max() / max(counts.min(), 1)), 2) if len(facts) else None,
        "modes": dict(Counter(facts.modes)),
        "modes_per_class": per_class_modes,
        "bit_depths": {str(k): v for k, v in Counter(bit_depth(m) for m in facts.modes).items()},
        "sizes": {str(k): v for k, v in Counter(f"{w}x{h}" for w, h in facts.sizes).most_common(5)},
        "shorter_side": {"min": int(sides.min()), "median": float(np.median(sides)), "max": int(sides.max())},
        "aspect_ratio": {"min": round(float(ratios.min()), 3), "max": round(float(ratios.max()), 3)},
        "brightness_mean": round(float(facts.feature("brightness").mean()), 4) if len(facts) else None,
        "unreadable": len(facts.unreadable),
    }


def thumbnails(dataset: Any, split: str, indices: list[int], side: int = 96) -> dict[int, bytes]:
    """PNG thumbnails (the longer side ``side``) of the images at ``indices``, read again (a few only;
    shards: in one streaming pass)."""
    wanted, found = set(indices), {}
    if hasattr(dataset, "samples"):
        for index, (_, _, opener, _) in enumerate(_raw_items(dataset, split)):
            if index in wanted:
                found[index] = _png(opener, side)
        return found
    for index in wanted:
        if hasattr(dataset, "paths"):
            found[index] = _png(lambda path=dataset.paths[index]: Image.open(path), side)
        else:
            array = dataset[index][0].numpy()
            pil = Image.fromarray(array[0] if array.shape[0] == 1 else array.transpose(1, 2, 0))
            found[index] = _png(lambda pil=pil: pil, side)
    return found


def _png(opener: Callable[[], Image.Image], side: int) -> bytes:
    try:
        with opener() as img:
            img.load()
            shown = convert_channels(upright(img), 3)
    except UNREADABLE:
        return b""
    scale = side / max(shown.size)
    resample = Image.NEAREST if scale > 1 else Image.BILINEAR  # small images stay sharp when enlarged
    shown = shown.resize((max(1, round(shown.width * scale)), max(1, round(shown.height * scale))), resample)
    buffer = io.BytesIO()
    shown.save(buffer, format="PNG")
    return buffer.getvalue()
