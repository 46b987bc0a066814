"""The in-memory data pipeline: decode every image once, augment whole batches as tensors.

For small images (CIFAR, MNIST-like sets, digits) and for folders whose images are much
bigger than the model's input, decoding each image on every epoch costs more than the
model's step. Here each split is decoded once into one (N, C, S, S) uint8 tensor, and
:class:`MemoryLoader` cuts batches out of it and augments them as batches:

* pad-and-crop and horizontal flips are vectorized (two gathers per batch, the flip folded
  into the columns read);
* random resized crops are one :func:`torchvision.ops.roi_align` call per batch (bilinear,
  averaging several samples per output pixel, so downscaling is antialiased);
* AutoAugment, RandAugment and TrivialAugment are torchvision v2 transforms applied to
  :data:`POLICY_DRAWS` groups of the shuffled batch (of at least :data:`POLICY_GROUP` images
  each): each group shares one random operation and magnitude, so every image still gets
  the policy's distribution, while the cost of a call (a few tenths of a millisecond on a
  CPU for small images, much of it per call rather than per image) is paid once per group;
* conversion to float, normalization and random erasing (one vectorized mask) run on the
  whole batch.

Evaluation splits are stored already resized and center-cropped to the model's input, so
they give the same pixels as the file pipeline's evaluation transform.
"""

from __future__ import annotations

import math
from typing import Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision.ops import roi_align
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from ..place import Dist
from .transforms import eval_decode_side, policy_transform, resize_and_center, uses_resized_crop
from .workers import worker_context

MAX_BYTES = 2 * 1024**3  # --in-memory auto holds at most this much decoded image data
POLICY_DRAWS = 4  # AutoAugment/RandAugment/TrivialAugment operations drawn per batch (one per group of images)
POLICY_GROUP = 16  # ... but no group smaller than this: a batch of 32 draws 2, one of 64 draws 4 (16 each)
RESIZED_CROP_SIDE = 2  # random resized crops are cut from images stored at this many times the input side


def train_side(img_size: int, native_size: int, augment: str, crop: str) -> int:
    """The side at which training images are stored: the input size, unless random resized crops need more."""
    if augment != "none" and uses_resized_crop(native_size, crop):
        return max(img_size, min(native_size, RESIZED_CROP_SIDE * img_size))
    return img_size


def estimated_bytes(n_images: int, channels: int, side: int) -> int:
    """Bytes that ``n_images`` decoded (channels, side, side) uint8 images take."""
    return n_images * channels * side * side


class _Squared(Dataset):
    """``dataset``'s images with the shorter side resized to ``side / crop_pct`` and the central
    ``side`` square kept: the evaluation transform's geometry, from the same transforms."""

    def __init__(self, dataset: Dataset, side: int, crop_pct: float) -> None:
        self.dataset = dataset
        self.square = v2.Compose(resize_and_center(side, crop_pct))

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image, target = self.dataset[index]
        return self.square(image), target


def decode_all(
    dataset: Dataset, side: int, crop_pct: float = 1.0, workers: int = 0, indices: Sequence[int] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every image of ``dataset`` (or those at ``indices``) as one (N, C, side, side) uint8 tensor, plus the labels.

    Each image's shorter side is resized to ``side / crop_pct`` and its central square kept.
    Files decode in ``workers`` DataLoader processes (decoding is mostly Python work in PIL,
    so threads would contend for the GIL); small sets decode in this process.
    """
    if hasattr(dataset, "max_side"):
        dataset.max_side = eval_decode_side(side, crop_pct)  # big JPEGs decode at reduced size
    channels = dataset[0][0].shape[0] if len(dataset) else getattr(dataset, "channels", 3)
    if indices is not None:
        dataset = Subset(dataset, list(indices))
    n = len(dataset)
    images = torch.empty((n, channels, side, side), dtype=torch.uint8)
    targets = torch.empty(n, dtype=torch.long)
    workers = workers if n > 2048 else 0
    loader = DataLoader(
        _Squared(dataset, side, crop_pct),
        batch_size=256,
        num_workers=workers,
        multiprocessing_context=worker_context(workers),
    )
    start = 0
    for batch, labels in loader:
        images[start : start + len(labels)] = batch
        targets[start : start + len(labels)] = labels
        start += len(labels)
    return images, targets


class BatchAugment:
    """Training augmentation on a batch of uint8 images; returns normalized float images.

    Images come at the input size, except for random resized crops, which cut them from
    bigger stored images (:func:`train_side`).

    The same choices as :func:`vitrain.data.transforms.build_train_transform` (crop mode,
    flip probability, policy, random erasing), drawn independently for every image.
    """

    def __init__(
        self,
        img_size: int,
        augment: str,
        mean: Sequence[float],
        std: Sequence[float],
        *,
        resized_crop: bool,
        hflip: float = 0.5,
        crop_scale: tuple[float, float] = (0.08, 1.0),
        crop_ratio: tuple[float, float] = (3 / 4, 4 / 3),
        random_erasing: float = 0.0,
    ) -> None:
        self.img_size = img_size
        self.augment = augment
        self.mean, self.std = list(mean), list(std)
        self.resized_crop = resized_crop
        self.hflip = hflip
        self.crop_scale, self.crop_ratio = crop_scale, crop_ratio
        self.policy = policy_transform(augment)
        self.erasing = random_erasing

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """``images``: (B, C, S, S) uint8 on any device; randomness comes from ``generator`` (CPU)."""
        if self.augment != "none":
            if self.resized_crop:
                images = self._resized_crop(images, generator)
                if self.hflip > 0:
                    flip = to_device(torch.rand(images.shape[0], generator=generator) < self.hflip, images.device)
                    images = torch.where(flip[:, None, None, None], images.flip(-1), images)
            else:
                images = self._pad_crop(images, generator)
            if self.policy is not None:
                group = policy_group(images.shape[0])
                images = torch.cat([self.policy(images[i : i + group]) for i in range(0, images.shape[0], group)])
        out = to_float(images, self.mean, self.std)
        if self.erasing > 0:
            out = self._erase(out, generator)
        return out

    def _erase(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Random erasing as v2.RandomErasing(value=0): with probability p, zero a random box
        of 2-33% of the area and aspect ratio 0.3-3.3 (no box when 10 draws do not fit)."""
        b, _, h, w = images.shape
        boxes, found = random_crop_boxes(b, h, w, (0.02, 0.33), (0.3, 3.3), generator, fallback=False)
        chosen = found & (torch.rand(b, generator=generator) < self.erasing)
        boxes = to_device(boxes, images.device)
        rows = torch.arange(h, device=images.device)[None, :]
        cols = torch.arange(w, device=images.device)[None, :]
        in_rows = (rows >= boxes[:, 1:2]) & (rows < boxes[:, 3:4])  # (B, H)
        in_cols = (cols >= boxes[:, 0:1]) & (cols < boxes[:, 2:3])  # (B, W)
        mask = in_rows[:, :, None] & in_cols[:, None, :] & to_device(chosen, images.device)[:, None, None]
        return images.masked_fill(mask[:, None], 0.0)

    def _pad_crop(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Zero-pad by 1/8 of the side, cut a random window per image (as v2.RandomCrop(padding=...)) and
        mirror it with probability ``hflip`` (as v2.RandomHorizontalFlip): a gather of rows and one of
        columns for the whole batch, the mirror folded into the columns read."""
        b, c, h, w = images.shape
        pad = max(1, self.img_size // 8)
        padded = torch.nn.functional.pad(images, (pad, pad, pad, pad))
        offsets = torch.randint(0, 2 * pad + 1, (2, b), generator=generator)
        cols = offsets[1][:, None] + torch.arange(w)  # (B, W)
        if self.hflip > 0:  # the window's column w-1-j becomes column j
            flip = torch.rand(b, generator=generator) < self.hflip
            cols = torch.where(flip[:, None], cols.flip(-1), cols)
        rows = to_device(offsets[0][:, None] + torch.arange(h), images.device)  # (B, H)
        cols = to_device(cols, images.device)
        padded = padded.gather(2, rows[:, None, :, None].expand(b, c, h, padded.shape[-1]))  # the window's rows
        return padded.gather(3, cols[:, None, None, :].expand(b, c, h, w))  # and its columns

    def _resized_crop(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Random resized crops (area fraction in ``crop_scale``, aspect ratio in ``crop_ratio``) for the batch."""
        boxes, _ = random_crop_boxes(
            images.shape[0], images.shape[-2], images.shape[-1], self.crop_scale, self.crop_ratio, generator
        )
        rois = torch.cat([torch.arange(images.shape[0], dtype=torch.float32)[:, None], boxes], 1)
        crops = roi_align(
            images.float(),
            to_device(rois, images.device),
            self.img_size,
            spatial_scale=1.0,
            sampling_ratio=-1,
            aligned=True,
        )
        return crops.round_().clamp_(0, 255).to(torch.uint8)


def policy_group(batch: int) -> int:
    """Images per AutoAugment/RandAugment/TrivialAugment call for a batch of ``batch``: :data:`POLICY_DRAWS`
    groups, each of at least :data:`POLICY_GROUP` images (much of a call's cost on a CPU is per call,
    not per image, so fewer, bigger calls keep the pipeline ahead of the model)."""
    return max(POLICY_GROUP, math.ceil(batch / POLICY_DRAWS))


def random_crop_boxes(
    n: int,
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    generator: torch.Generator,
    tries: int = 10,
    fallback: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, 4) boxes ``x1, y1, x2, y2`` drawn like torchvision's RandomResizedCrop, and which were found.

    Up to ``tries`` (area, log-ratio) draws per image; the first that fits is used. With
    ``fallback``, an image with none that fits gets the central crop with the ratio clamped
    to ``ratio`` (as RandomResizedCrop); without, it is marked not found (as RandomErasing).
    """
    area = height * width
    target = area * torch.empty(n, tries).uniform_(scale[0], scale[1], generator=generator)
    log_ratio = torch.empty(n, tries).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator)
    aspect = torch.exp(log_ratio)
    w = torch.sqrt(target * aspect).round()
    h = torch.sqrt(target / aspect).round()
    fits = (w > 0) & (h > 0) & (w <= width) & (h <= height)
    first = torch.where(fits.any(1), fits.float().argmax(1), torch.full((n,), -1))
    pick = first.clamp_min(0)[:, None]
    w, h = w.gather(1, pick)[:, 0], h.gather(1, pick)[:, 0]
    # the fallback: the whole image, cropped to the nearest allowed ratio
    in_ratio = width / height
    if in_ratio < ratio[0]:
        fw, fh = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        fw, fh = round(height * ratio[1]), height
    else:
        fw, fh = width, height
    none = (first < 0) & fallback
    w = torch.where(none, torch.full_like(w, fw), w)
    h = torch.where(none, torch.full_like(h, fh), h)
    u = torch.rand(2, n, generator=generator)
    x1 = torch.where(none, torch.full_like(w, (width - fw) // 2), torch.floor(u[0] * (width - w + 1)))
    y1 = torch.where(none, torch.full_like(h, (height - fh) // 2), torch.floor(u[1] * (height - h + 1)))
    return torch.stack([x1, y1, x1 + w, y1 + h], 1), first >= 0


def to_device(values: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``values`` (drawn on the CPU) on ``device``; to a GPU through pinned memory without waiting.

    A plain ``.to("cuda")`` of a pageable tensor makes the host wait for the GPU, so the
    per-batch random numbers would synchronize every training step.
    """
    if device.type == "cuda":
        return values.pin_memory().to(device, non_blocking=True)
    return values.to(device)


def to_float(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 -> float in [0, 1] -> normalized, exactly as the file pipeline's last two transforms."""
    scaled = TF.to_dtype(images, torch.float32, scale=True)
    return TF.normalize(scaled, list(mean), list(std), inplace=scaled is not images)  # never writes into ``images``


class MemoryLoader:
    """Batches out of a uint8 image tensor, shuffled by :attr:`generator` and augmented as batches.

    Quacks like the :class:`~torch.utils.data.DataLoader` the training loop uses: ``len``,
    iteration over ``(images, labels)``, and a ``generator`` re-seeded every epoch. With
    ``device`` set to a GPU the images live there and every batch is cut out there.

    Under ``torchrun`` (``place`` with several ranks), a shuffled loader gives this rank its
    slice of every global batch of ``batch_size x world`` images (incomplete global batches
    dropped; augmentation drawn from a per-rank generator), and an unshuffled one the
    disjoint shard ``rank::world``.
    """

    def __init__(
        self,
        images: torch.Tensor,
        targets: torch.Tensor,
        batch_size: int,
        *,
        shuffle: bool,
        mean: Sequence[float],
        std: Sequence[float],
        augment: BatchAugment | None = None,
        device: torch.device | None = None,
        drop_last: bool = False,
        place=None,
    ) -> None:
        device = device or torch.device("cpu")
        self.images = images.to(device)
        self.targets = targets.to(device)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.mean, self.std = list(mean), list(std)
        self.augment = augment
        self.place = place or Dist()
        self.drop_last = drop_last and len(targets) >= batch_size
        self.generator = torch.Generator()
        self.start = 0  # the batch the next epoch starts at (a resumed epoch's); reset once it has begun
        self.augmenting: torch.Generator | None = None  # what augments the current epoch's batches
        self._resumed_state: torch.Tensor | None = None

    def __len__(self) -> int:
        n = len(self.targets)
        if self.place.active:
            if self.shuffle:
                return n // (self.batch_size * self.place.world)
            return math.ceil(len(range(self.place.rank, n, self.place.world)) / self.batch_size)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def augment_state(self) -> torch.Tensor:
        """The state of the generator that augments this epoch's next batch (saved inside an epoch)."""
        return (self.augmenting or self.generator).get_state()

    def resume_epoch(self, batch: int, augment_state: torch.Tensor) -> None:
        """Make the next epoch start at ``batch``, augmenting as the saved :meth:`augment_state` says:
        with the generator re-seeded as for the whole epoch, batches ``batch, batch+1, ...`` are those
        of the uninterrupted epoch."""
        self.start, self._resumed_state = batch, augment_state

    def _batches(self) -> Iterator[tuple[torch.Tensor, torch.Generator]]:
        """Index tensors of this process's batches, with the generator that augments them."""
        n = len(self.targets)
        first, self.start = self.start, 0
        resumed, self._resumed_state = self._resumed_state, None
        if not self.place.active or not self.shuffle:
            if self.place.active:
                order = torch.arange(self.place.rank, n, self.place.world)
            else:
                order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
            self.augmenting, size, offset = self.generator, self.batch_size, 0
        else:
            order = torch.randperm(n, generator=self.generator)  # the same on every rank
            seed = int(torch.randint(0, 2**62, (1,), generator=self.generator)) + self.place.rank
            self.augmenting = torch.Generator().manual_seed(seed)
            size, offset = self.batch_size * self.place.world, self.place.rank * self.batch_size
        if resumed is not None:
            self.augmenting.set_state(resumed)
        for step in range(first, len(self)):
            start = step * size + offset
            yield order[start : start + self.batch_size], self.augmenting

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for index, generator in self._batches():
            index = to_device(index, self.images.device)
            images = self.images[index]
            if self.augment is not None:
                images = self.augment(images, generator)
            else:
                images = to_float(images, self.mean, self.std)
            yield images, self.targets[index]
