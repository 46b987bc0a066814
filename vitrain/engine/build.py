"""From the configuration and the data to the model and the loaders a run trains with."""

from __future__ import annotations

import dataclasses
import time

import torch
from torch.utils.data import DataLoader

from ..config import ConfigError, TrainConfig, parse_head
from ..data import memory
from ..data.sampling import SeededBatches
from ..data.shards import ShardEvalStream, ShardLoader, ShardSplit, ShardStream
from ..data.sources import ArrayImageDataset, DataSplits
from ..data.transforms import (
    TransformedDataset,
    build_eval_transform,
    build_train_transform,
    eval_decode_side,
    normalization,
    uses_resized_crop,
)
from ..data.workers import leave_sigterm_to_the_main_process, worker_context
from ..models.pretrained import Pretrained, PretrainedError
from ..models.registry import resolve_config
from ..models.vit import VisionTransformer, ViTConfig
from . import distributed
from .distributed import Dist
from .finetune import apply_freeze
from .runtime import decode_workers, node_cores

MODEL_FIELDS = (
    "img_size",
    "patch_size",
    "embed_dim",
    "depth",
    "num_heads",
    "mlp_dim",
    "dropout",
    "drop_path",
    "pool",
    "stem",
    "stem_width",
    "distilled",
    "norm_eps",
)


STEM_IMAGES = 1024  # training images whose patches start a --stem-init pca stem

# what pretrained weights fix; --pretrained with a different value is an error (size and patch may change)
PRETRAINED_FIXED = ("embed_dim", "depth", "mlp_dim", "pool", "stem", "stem_width")


def default_model(native_size: int) -> str:
    """The preset ``--model auto`` picks from the data's typical image side."""
    if native_size <= 16:
        return "vit-digits"
    if native_size <= 64:
        return "vit-mini4"
    return "vit-ti16"


def resolve_config_for_data(cfg: TrainConfig, splits: DataSplits, pretrained: Pretrained | None = None) -> TrainConfig:
    """Fill every 'auto'/None field from the data (and the pretrained weights), so config.yaml records what ran."""
    overrides = {k: getattr(cfg, k) for k in MODEL_FIELDS}
    if pretrained is not None:
        if cfg.model not in ("auto", "vit"):
            raise ConfigError(
                f"--model {cfg.model} with --pretrained {cfg.pretrained}: the pretrained weights "
                "define the model; leave --model out"
            )
        for name in PRETRAINED_FIXED:
            if overrides[name] is not None and overrides[name] != pretrained.arch[name]:
                raise ConfigError(
                    f"--{name.replace('_', '-')} {overrides[name]}: the weights of --pretrained "
                    f"{cfg.pretrained} have {name} {pretrained.arch[name]}"
                )
        base = {k: pretrained.arch[k] for k in MODEL_FIELDS if k in pretrained.arch}
        overrides = {**base, **{k: v for k, v in overrides.items() if v is not None}}
        overrides.setdefault("dropout", 0.0)
        overrides.setdefault("drop_path", 0.0)
    model = "vit" if pretrained is not None else default_model(splits.native_size) if cfg.model == "auto" else cfg.model
    head_hidden, head_dropout = parse_head(cfg.head)
    try:
        arch = resolve_config(
            model,
            **overrides,
            in_chans=splits.channels,
            num_classes=len(splits.classes),
            head_hidden=head_hidden,
            head_dropout=head_dropout,
        )
    except (ValueError, TypeError) as err:
        raise ConfigError(f"--model {model} with the given model options: {err}") from None
    augment = cfg.augment
    if augment == "auto":
        # on tiny images a one-pixel shift is a large distortion; crops start to help at ~32 px
        augment = "none" if arch.img_size <= 16 else "flip-crop"
    crop_pct = cfg.crop_pct if cfg.crop_pct is not None else pretrained.crop_pct if pretrained is not None else 1.0
    resolved = dataclasses.replace(
        cfg,
        model=model,
        augment=augment,
        classes=list(splits.classes),
        channels=splits.channels,
        crop_pct=crop_pct,
        hflip=(0.5 if splits.hflip_ok else 0.0) if cfg.hflip is None else cfg.hflip,
        **{k: getattr(arch, k) for k in MODEL_FIELDS},
    )
    if resolved.mean is None:
        if pretrained is not None and cfg.normalize == "auto":
            mean, std = pretrained.mean, pretrained.std
            if splits.channels == 1 and len(mean) == 3:  # gray images meet RGB kernels summed (see convert.adapt)
                mean, std = [sum(mean) / 3], [sum(std) / 3]
        else:
            kind = "dataset" if cfg.normalize == "auto" else cfg.normalize
            mean, std = normalization(kind, splits.train, arch.img_size, splits.channels)
        resolved = dataclasses.replace(resolved, mean=list(mean), std=list(std))
    for name in ("mean", "std"):
        if len(getattr(resolved, name)) != splits.channels:
            raise ConfigError(
                f"--{name} needs {splits.channels} value(s) for {splits.channels}-channel images, "
                f"got {getattr(resolved, name)}"
            )
    return resolved


def model_arch(cfg: TrainConfig) -> ViTConfig:
    """The architecture a resolved config describes."""
    head_hidden, head_dropout = parse_head(cfg.head)
    return resolve_config(
        cfg.model,
        **{k: getattr(cfg, k) for k in MODEL_FIELDS},
        in_chans=cfg.channels,
        num_classes=len(cfg.classes),
        head_hidden=head_hidden,
        head_dropout=head_dropout,
    )


def build_model(
    cfg: TrainConfig, pretrained: Pretrained | None = None, splits: DataSplits | None = None
) -> VisionTransformer:
    """The model a resolved config describes, initialized from ``cfg.seed`` (the head, when ``pretrained``
    supplies the rest), with ``--freeze`` applied. ``--stem-init pca`` sets the first convolution from
    the training images of ``splits`` (:func:`stem_images`)."""
    torch.manual_seed(cfg.seed)
    arch = model_arch(cfg)
    if pretrained is not None:
        try:
            model = pretrained.model(**arch.to_dict())
        except PretrainedError as err:
            raise ConfigError(str(err)) from None
    else:
        model = VisionTransformer(arch)
        if cfg.stem_init == "pca":
            if splits is None:
                raise ValueError("build_model: --stem-init pca needs the data splits")
            model.whiten_stem(stem_images(cfg, splits))
    try:
        apply_freeze(model, cfg.freeze)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    model.meta = {
        "classes": list(cfg.classes),
        "mean": list(cfg.mean),
        "std": list(cfg.std),
        "crop_pct": cfg.crop_pct,
        "interpolation": "bilinear",
        "bit_depth": cfg.bit_depth,
        "model_name": cfg.model,
        "data": cfg.data,
        "split": {"val_fraction": cfg.val_fraction, "test_fraction": cfg.test_fraction, "split_seed": cfg.split_seed},
        **({"pretrained": cfg.pretrained} if cfg.pretrained else {}),
    }
    return model


def stem_images(cfg: TrainConfig, splits: DataSplits, count: int = STEM_IMAGES) -> torch.Tensor:
    """Up to ``count`` training images chosen by ``cfg.seed``, as the model sees them in evaluation (resized,
    center-cropped, normalized): what ``--stem-init pca`` takes its patch statistics from."""
    if isinstance(splits.train, ShardSplit):
        raise ConfigError(
            f"--stem-init pca with --data {cfg.data}: shards are read in order, not by index, so there is no "
            "sample of training images to start the stem from; leave --stem-init out"
        )
    dataset = TransformedDataset(splits.train, build_eval_transform(cfg.img_size, cfg.mean, cfg.std, cfg.crop_pct))
    picked = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(cfg.seed))[:count]
    return torch.stack([dataset[int(i)][0] for i in picked])


def use_memory(cfg: TrainConfig, splits: DataSplits) -> bool:
    """Whether ``--in-memory`` (auto: when the decoded images fit in :data:`memory.MAX_BYTES`) applies."""
    if isinstance(splits.train, ShardSplit):  # shards are streamed: the point is not to hold them
        if cfg.in_memory == "on":
            raise ConfigError(f"--in-memory on with --data {cfg.data}: shards are streamed from disk; leave it out")
        return False
    if cfg.in_memory != "auto":
        return cfg.in_memory == "on"
    side = memory.train_side(cfg.img_size, splits.native_size, cfg.augment, cfg.crop)
    total = memory.estimated_bytes(len(splits.train), cfg.channels, side) + sum(
        memory.estimated_bytes(len(d), cfg.channels, cfg.img_size) for d in (splits.val, splits.test) if d is not None
    )
    return total <= memory.MAX_BYTES


def build_loaders(
    cfg: TrainConfig,
    splits: DataSplits,
    device: torch.device,
    log=print,
    place: Dist | None = None,
    devices: int = 1,
) -> dict[str, DataLoader | memory.MemoryLoader]:
    """Train/val(/test) loaders. The train loader's generator is re-seeded every epoch.

    ``devices`` share each batch in this process (the JAX backend's local devices): batches hold
    ``--batch-size`` images per device, and an incomplete last training batch is dropped, as under torchrun.

    With ``--in-memory`` every split is decoded once and batches are augmented as tensors
    (:mod:`vitrain.data.memory`); otherwise DataLoader workers decode and augment per image.
    Under torchrun (``place``), each rank gets its slice of every global training batch
    and a disjoint shard of each evaluation split.
    """
    place = place or Dist()
    drop_last = devices > 1
    cfg = dataclasses.replace(cfg, batch_size=cfg.batch_size * devices)
    if use_memory(cfg, splits):
        return _memory_loaders(cfg, splits, device, log, place, drop_last)
    train_tf = build_train_transform(
        cfg.img_size,
        cfg.augment,
        cfg.mean,
        cfg.std,
        native_size=splits.native_size,
        hflip=cfg.hflip,
        crop_scale=tuple(cfg.crop_scale),
        crop_ratio=tuple(cfg.crop_ratio),
        crop_pct=cfg.crop_pct,
        random_erasing=cfg.random_erasing,
        crop=cfg.crop,
    )
    eval_tf = build_eval_transform(cfg.img_size, cfg.mean, cfg.std, cfg.crop_pct)
    in_memory = isinstance(splits.train, ArrayImageDataset)
    workers = cfg.workers if cfg.workers is not None else (0 if in_memory else max(1, min(8, node_cores() - 1)))
    if hasattr(splits.train, "max_side"):
        # big JPEGs decode at reduced size, never below what the crop needs
        splits.train.max_side = int(cfg.img_size / min(cfg.crop_pct, cfg.crop_scale[0] ** 0.5)) + 1
    for dataset in (splits.val, splits.test):
        if dataset is not None and hasattr(dataset, "max_side"):
            dataset.max_side = eval_decode_side(cfg.img_size, cfg.crop_pct)  # as vitrain eval and predict decode
    # each training sample's augmentation is seeded by its place in the epoch, whichever worker decodes it
    common = dict(
        num_workers=workers,
        pin_memory=device.type == "cuda",
        multiprocessing_context=worker_context(workers),
        worker_init_fn=leave_sigterm_to_the_main_process,
    )
    if isinstance(splits.train, ShardSplit):
        return _shard_loaders(cfg, splits, train_tf, eval_tf, place, workers, common, log)
    # the generator that orders each epoch and seeds its augmentations (see vitrain.data.sampling)
    generator = torch.Generator()
    train_set = TransformedDataset(splits.train, train_tf)
    batches = SeededBatches(len(train_set), cfg.batch_size, generator, place, drop_last)
    loaders = {"train": DataLoader(train_set, batch_sampler=batches, generator=generator, **common)}
    for name in ("val", "test"):
        dataset = getattr(splits, name)
        if dataset is not None:
            dataset = TransformedDataset(dataset, eval_tf)
            shard = distributed.ShardSampler(dataset, place) if place.active else None
            loaders[name] = DataLoader(dataset, batch_size=cfg.batch_size, sampler=shard, **common)
    return loaders


def _shard_loaders(
    cfg: TrainConfig,
    splits: DataSplits,
    train_tf,
    eval_tf,
    place: Dist,
    workers: int,
    common: dict,
    log=print,
) -> dict[str, DataLoader]:
    """Loaders that stream WebDataset shards (:mod:`vitrain.data.shards`): whole batches come from the
    streams, so the DataLoaders only run them in ``workers`` processes."""
    stream = ShardStream(splits.train, train_tf, cfg.batch_size, place, workers, cfg.shuffle_buffer)
    left_out = stream.dropped_per_epoch()
    if left_out >= 0.1 * len(splits.train):
        log(
            f"  note: each epoch streams {len(stream) * cfg.batch_size * place.world} of the "
            f"{len(splits.train)} training samples: every DataLoader worker yields as many whole batches "
            "as the one with the fewest samples can; shards of equal size (vitrain shards) leave fewer out"
        )
    loaders = {"train": ShardLoader(stream, batch_size=None, generator=torch.Generator(), **common)}
    for name in ("val", "test"):
        dataset = getattr(splits, name)
        if dataset is not None:
            batches = ShardEvalStream(dataset, eval_tf, cfg.batch_size, place)
            loaders[name] = DataLoader(batches, batch_size=None, **common)
    return loaders


def _memory_loaders(
    cfg: TrainConfig,
    splits: DataSplits,
    device: torch.device,
    log=print,
    place: Dist | None = None,
    drop_last: bool = False,
) -> dict[str, memory.MemoryLoader]:
    t0 = time.perf_counter()
    resized = uses_resized_crop(splits.native_size, cfg.crop)
    side = memory.train_side(cfg.img_size, splits.native_size, cfg.augment, cfg.crop)
    # pad-and-crop and no augmentation start from the evaluation geometry, as the file pipeline does
    train_pct = 1.0 if cfg.augment != "none" else cfg.crop_pct
    workers = decode_workers(cfg)
    augment = memory.BatchAugment(
        cfg.img_size,
        cfg.augment,
        cfg.mean,
        cfg.std,
        resized_crop=resized,
        hflip=cfg.hflip,
        crop_scale=tuple(cfg.crop_scale),
        crop_ratio=tuple(cfg.crop_ratio),
        random_erasing=cfg.random_erasing,
    )
    place = place or Dist()

    def decode(dataset, side: int, crop_pct: float) -> tuple[torch.Tensor, torch.Tensor]:
        # under torchrun each rank decodes the images rank::world and all ranks gather the rest
        if not place.active:
            return memory.decode_all(dataset, side, crop_pct, workers)
        n = len(dataset)
        images, targets = memory.decode_all(dataset, side, crop_pct, workers, range(place.rank, n, place.world))
        return distributed.gather_rows(images, n, place, device), distributed.gather_rows(targets, n, place, device)

    # on a GPU the images live there; a fixed batch shape there suits torch.compile and CUDA graphs
    images, targets = decode(splits.train, side, train_pct)
    loaders = {
        "train": memory.MemoryLoader(
            images,
            targets,
            cfg.batch_size,
            shuffle=True,
            mean=cfg.mean,
            std=cfg.std,
            augment=augment,
            device=device,
            drop_last=drop_last or device.type == "cuda",
            place=place,
        )
    }
    for name in ("val", "test"):
        dataset = getattr(splits, name)
        if dataset is not None:
            images, targets = decode(dataset, cfg.img_size, cfg.crop_pct)
            loaders[name] = memory.MemoryLoader(
                images, targets, cfg.batch_size, shuffle=False, mean=cfg.mean, std=cfg.std, device=device, place=place
            )
    total = sum(loader.images.numel() for loader in loaders.values())
    shared = f", each of {place.world} processes decoding 1/{place.world} of them" if place.active else ""
    log(
        f"in memory: {total / 2**20:.1f} MiB of decoded images (training images at {side}px) "
        f"in {time.perf_counter() - t0:.1f}s{shared}"
    )
    return loaders
