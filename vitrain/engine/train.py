"""``vitrain train``: data -> model -> the training loop -> checkpoints, curves and a report.

:func:`train` is the whole loop in one function; the helpers above it resolve the
configuration, build the loaders and manage the run folder.
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader
from torchvision.transforms import v2
from tqdm import tqdm

from ..checkpoint import (
    CheckpointError,
    CheckpointWriter,
    load_state,
    load_weights,
    model_from_checkpoint,
    remove_stale_temp_files,
)
from ..config import ConfigError, TrainConfig, parse_head
from ..data import memory
from ..data.leakage import content_hashes, find_leaks, without
from ..data.sources import ArrayImageDataset, DataError, DataSplits, load_data, split_digest
from ..data.transforms import (
    TransformedDataset,
    build_eval_transform,
    build_train_transform,
    eval_decode_side,
    normalization,
    uses_resized_crop,
)
from ..models.pretrained import Pretrained, PretrainedError, load_pretrained
from ..models.registry import resolve_config
from ..models.vit import VisionTransformer, ViTConfig
from ..report import metrics_csv_bytes, plot_confusion_matrix, plot_curves, plot_samples, write_report
from . import distributed
from .device import resolve_device
from .distributed import Dist
from .evaluate import evaluate, is_imbalanced
from .finetune import apply_freeze, train_mode
from .optim import build_optimizer, build_scheduler, replan

STATE_FILE = "state.safetensors"
RUN_FILES = (
    "config.yaml",
    "metrics.csv",
    "best.safetensors",
    "last.safetensors",
    STATE_FILE,
    "report.json",
    "accuracy.png",
    "loss.png",
    "confusion_matrix.png",
    "samples.png",
)
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
    "distilled",
    "norm_eps",
)
# what pretrained weights fix; --pretrained with a different value is an error (size and patch may change)
PRETRAINED_FIXED = ("embed_dim", "depth", "mlp_dim", "pool", "stem")


class TrainingError(RuntimeError):
    """Training cannot go on (for example the loss became NaN); the message says where."""


# ------------------------------------------------------------------------------ setup


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


def build_model(cfg: TrainConfig, pretrained: Pretrained | None = None) -> VisionTransformer:
    """The model a resolved config describes, initialized from ``cfg.seed`` (the head, when ``pretrained``
    supplies the rest), with ``--freeze`` applied."""
    torch.manual_seed(cfg.seed)
    arch = model_arch(cfg)
    if pretrained is not None:
        try:
            model = pretrained.model(**arch.to_dict())
        except PretrainedError as err:
            raise ConfigError(str(err)) from None
    else:
        model = VisionTransformer(arch)
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
        "model_name": cfg.model,
        "data": cfg.data,
        "split": {"val_fraction": cfg.val_fraction, "test_fraction": cfg.test_fraction, "split_seed": cfg.split_seed},
        **({"pretrained": cfg.pretrained} if cfg.pretrained else {}),
    }
    return model


def use_memory(cfg: TrainConfig, splits: DataSplits) -> bool:
    """Whether ``--in-memory`` (auto: when the decoded images fit in :data:`memory.MAX_BYTES`) applies."""
    if cfg.in_memory != "auto":
        return cfg.in_memory == "on"
    side = memory.train_side(cfg.img_size, splits.native_size, cfg.augment, cfg.crop)
    total = memory.estimated_bytes(len(splits.train), cfg.channels, side) + sum(
        memory.estimated_bytes(len(d), cfg.channels, cfg.img_size) for d in (splits.val, splits.test) if d is not None
    )
    return total <= memory.MAX_BYTES


def build_loaders(
    cfg: TrainConfig, splits: DataSplits, device: torch.device, log=print, place: Dist | None = None
) -> dict[str, DataLoader | memory.MemoryLoader]:
    """Train/val(/test) loaders. The train loader's generator is re-seeded every epoch.

    With ``--in-memory`` every split is decoded once and batches are augmented as tensors
    (:mod:`vitrain.data.memory`); otherwise DataLoader workers decode and augment per image.
    Under torchrun (``place``), each rank gets its slice of every global training batch
    and a disjoint shard of each evaluation split.
    """
    place = place or Dist()
    if use_memory(cfg, splits):
        return _memory_loaders(cfg, splits, device, log, place)
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
    # no persistent workers: each epoch's workers are seeded afresh from the re-seeded generator,
    # which is what makes a resumed run repeat the augmentations of an uninterrupted one
    common = dict(num_workers=workers, pin_memory=device.type == "cuda")
    generator = torch.Generator()
    train_set = TransformedDataset(splits.train, train_tf)
    if place.active:
        sampler = distributed.GlobalBatchSampler(len(train_set), cfg.batch_size, place, generator)
        loaders = {"train": DataLoader(train_set, batch_sampler=sampler, generator=generator, **common)}
    else:
        loaders = {
            "train": DataLoader(train_set, batch_size=cfg.batch_size, shuffle=True, generator=generator, **common)
        }
    for name in ("val", "test"):
        dataset = getattr(splits, name)
        if dataset is not None:
            dataset = TransformedDataset(dataset, eval_tf)
            shard = distributed.ShardSampler(dataset, place) if place.active else None
            loaders[name] = DataLoader(dataset, batch_size=cfg.batch_size, sampler=shard, **common)
    return loaders


def node_cores() -> int:
    """This process's share of the machine's cores: all of them, or under ``torchrun`` an equal
    share among the processes on this node (``LOCAL_WORLD_SIZE``)."""
    return max(1, (os.cpu_count() or 1) // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))


def decode_workers(cfg: TrainConfig) -> int:
    """Processes that decode images into memory: ``--workers``, else one per core of :func:`node_cores` (at most 8)."""
    return cfg.workers if cfg.workers is not None else min(8, node_cores())


def _memory_loaders(
    cfg: TrainConfig, splits: DataSplits, device: torch.device, log=print, place: Dist | None = None
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
            drop_last=device.type == "cuda",
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


def default_run_dir(data: str) -> str:
    """``runs/<data name>-<timestamp>``, the run folder when ``--out`` is not given."""
    return str(Path("runs") / f"{Path(data).stem or 'data'}-{time.strftime('%Y%m%d-%H%M%S')}")


def agree_on_run_dir(cfg: TrainConfig, place: Dist) -> TrainConfig:
    """``cfg`` with its run folder set (``--out``, or :func:`default_run_dir`), rank 0's on every rank.

    Without ``--out`` each process names ``runs/<data>-<time>`` by its own clock, and ranks
    that start on either side of a second would name different folders: a chained run's
    second stage, which loads the first stage's weights on every rank, would not find them.
    Call it once the process group is up (:func:`distributed.setup`).
    """
    return dataclasses.replace(cfg, out=distributed.broadcast(cfg.out or default_run_dir(cfg.data), place))


def check_run_dir(cfg: TrainConfig, resume: bool, files: tuple[str, ...] = RUN_FILES) -> Path:
    """The run folder, checked before any work: a new run never mixes into an old one.

    ``files`` are the names that make a folder a run (a pretraining run has its own).
    """
    out = Path(cfg.out or default_run_dir(cfg.data))
    if resume:
        if not (out / STATE_FILE).is_file():
            raise ConfigError(f"--resume {out}: no {STATE_FILE} there, so there is nothing to resume")
        return out
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file, not a folder")
    existing = [name for name in files if (out / name).exists()]
    if existing and not cfg.overwrite:
        raise ConfigError(
            f"--out {out} already holds a run ({', '.join(existing[:3])}); "
            f"continue it with --resume {out} or replace it with --overwrite"
        )
    return out


def check_global_batch(cfg: TrainConfig, n_train: int, place: Dist, log=print) -> None:
    """Under torchrun incomplete global batches are dropped, so the training split must fill one.

    Warns when the dropped remainder is a tenth of the split or more (other images each epoch,
    as the order is reshuffled), naming the largest smaller ``--batch-size`` that leaves less than a tenth out.
    """
    if not place.active:
        return
    step = cfg.batch_size * place.world
    if n_train < step:
        raise ConfigError(
            f"--batch-size {cfg.batch_size} x {place.world} processes = {step} "
            f"images per step, more than the {n_train} training images of --data {cfg.data}, and "
            "under torchrun incomplete global batches are dropped: lower --batch-size"
        )

    def left_out(batch_size: int) -> int:
        return n_train % (batch_size * place.world)

    dropped = left_out(cfg.batch_size)
    if dropped * 10 >= n_train:
        fit = next((b for b in range(cfg.batch_size - 1, 0, -1) if left_out(b) * 10 < n_train), None)
        hint = f"; --batch-size {fit} would leave {left_out(fit)} out" if fit else ""
        log(
            f"warning: --batch-size {cfg.batch_size} x {place.world} processes = {step} images per step leaves "
            f"{dropped} of the {n_train} training images out of each epoch ({dropped / n_train:.0%}; "
            f"incomplete global batches are dropped under torchrun){hint}"
        )


def start_run_dir(out: Path) -> None:
    """Create the folder, removing an old run's files (only vitrain's own) for --overwrite.

    Called once the data has loaded, so a mistyped option never costs the old run.
    """
    for name in RUN_FILES:
        (out / name).unlink(missing_ok=True)
    shutil.rmtree(out / "tensorboard", ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)


def remove_interrupted_writes(out: Path, log=print) -> None:
    """Delete the temporary files a killed run left in ``out`` mid-write; the real files are intact."""
    stale = remove_stale_temp_files(out)
    if stale:
        log(f"removed {len(stale)} temporary file(s) left by an interrupted write in {out}")


def quiet(*args: Any, **kwargs: Any) -> None:
    """The log of ranks other than 0."""


def _epoch_seed(seed: int, epoch: int) -> int:
    # every epoch's randomness (shuffling, augmentation, dropout) depends only on (seed, epoch),
    # so a run resumed after epoch k repeats epochs k+1... exactly
    return (seed * 1_000_003 + epoch * 7_919) % (2**63)


def use_compile(setting: str, device: torch.device) -> bool:
    """Whether ``--compile`` compiles the training step: on for CUDA by default (fixed batch shapes
    there make it pay), off on CPU, where it was measured not to pay (docs/benchmarks/throughput.md)."""
    return setting == "on" or (setting == "auto" and device.type == "cuda")


def writes_behind(device: torch.device) -> bool:
    """Whether checkpoints are written on a background thread (:class:`CheckpointWriter`) while training goes on.

    On a GPU: the CPU mostly waits for the device, so serializing, syncing and renaming the files
    on a thread should cost training little, where in the loop they hold up the next kernel
    launches (reasoned, not measured on a GPU). On the CPU, training already keeps
    every core busy, and the thread's work slowed the steps about as much as it saved
    (``benchmarks/checkpoint_writes.py``: 0.96x to 1.04x per epoch on a 2-core CPU), so the
    files are written in the loop.
    """
    return device.type == "cuda"


def checks_each_step(device: torch.device, skip_nonfinite: int) -> bool:
    """Whether every step's gradient norm is checked for NaN/Inf at once.

    On a CPU reading the flag costs nothing; on a GPU it would synchronize every step, so the
    flags stay on the device until the epoch ends, unless batches may be skipped.
    """
    return device.type == "cpu" or skip_nonfinite > 0


def use_cuda_graphs(setting: str, device: torch.device, place: Dist) -> bool:
    """Whether the compiled step also records CUDA graphs (torch.compile's "reduce-overhead" mode).

    On a GPU a small ViT's step is bound by the host launching kernels, not by the GPU
    (``benchmarks/step_profile.py``: about 370 launches and 1.6 ms of GPU work in a 12 ms step
    on an H100); replaying the forward and backward as graphs removes most launches. Not under
    DistributedDataParallel, whose gradient hooks run between the graphs.
    """
    return use_compile(setting, device) and device.type == "cuda" and not place.active


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """What training autocasts to: bf16 on a GPU that has it, else None (float32)."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def _param_norm(model: torch.nn.Module) -> float:
    return float(torch.sqrt(sum((p.detach().float() ** 2).sum() for p in model.parameters())))


# ------------------------------------------------------------------------------ the loop


def check_leaks(splits: DataSplits, dedupe: bool, log=print) -> dict[str, Any]:
    """Warn about evaluation images identical to training images; with ``dedupe``, drop them."""
    train_hashes = set(content_hashes(splits.train))
    found: dict[str, Any] = {"dedupe": dedupe}
    for name in ("val", "test"):
        dataset = getattr(splits, name)
        if dataset is None:
            continue
        leak = find_leaks(splits.train, dataset, name, train_hashes)
        found[name] = leak.to_dict()
        if leak.leaked:
            action = "removed from it (--dedupe)" if dedupe else "kept (use --dedupe to remove them)"
            log(f"warning: {len(leak.leaked)} of {leak.total} {name} images are identical to training images; {action}")
            if dedupe:
                found[name]["removed"] = len(leak.leaked)
                kept = without(dataset, leak.leaked)
                if len(kept) == 0 and name == "val":
                    raise DataError(
                        f"--dedupe: all {leak.total} validation images are identical to training "
                        "images, so no validation split is left (raise --val-fraction, or train "
                        "without --dedupe)"
                    )
                if len(kept) == 0:  # the final evaluation falls back to the validation split
                    kept = None
                    splits.notes.append(
                        f"all {leak.total} test images are identical to training images and "
                        "--dedupe removed them: the final evaluation uses the validation split"
                    )
                setattr(splits, name, kept)
    return found


def plan_budget(
    cfg: TrainConfig,
    model: torch.nn.Module,
    loaders: dict[str, DataLoader],
    device: torch.device,
    amp_dtype: torch.dtype | None,
    seconds_left: float,
    log=print,
) -> dict[str, Any]:
    """Measure training and validation speed on a throwaway copy, then plan the steps that fit.

    Each epoch costs its steps plus one validation pass; the final evaluation (validation
    and test with the best model) is reserved too.
    """
    import copy

    begin = time.perf_counter()
    probe = train_mode(copy.deepcopy(model))
    optimizer = build_optimizer(probe, cfg, device)
    measure_for = min(30.0, 0.05 * seconds_left)
    steps, timed, t0 = 0, 0.0, None
    for images, labels in _forever(loaders["train"]):
        images, labels = images.to(device), labels.to(device)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            loss = F.cross_entropy(probe(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        float(loss.detach())  # wait for the device
        steps += 1
        if steps == 2:  # the first steps pay one-time costs
            t0 = time.perf_counter()
        elif steps > 2:
            timed = time.perf_counter() - t0
            if timed >= measure_for or steps >= 200:
                break
    step_seconds = timed / (steps - 2)
    t0 = time.perf_counter()
    evaluate(probe, _first_batches(loaders["val"], 3), device, len(cfg.classes), amp_dtype)
    val_seconds = (time.perf_counter() - t0) / min(3, len(loaders["val"])) * len(loaders["val"])
    with tempfile.TemporaryDirectory() as tmp:  # every epoch also asks for last (and best) weights and the state
        with CheckpointWriter(background=writes_behind(device), log=log) as files:  # what training waits for
            t0 = time.perf_counter()
            files.save_model(Path(tmp) / "m.safetensors", probe)
            files.save_state(
                Path(tmp) / "s.safetensors", {"model": probe.state_dict(), "optimizer": optimizer.state_dict()}
            )
            epoch_overhead = val_seconds + 2 * (time.perf_counter() - t0)
    final_seconds = val_seconds + (val_seconds * len(loaders["test"]) / len(loaders["val"]) if "test" in loaders else 0)
    margin = 0.03 * cfg.time_budget * 60 + 2.0  # 3% of the budget, and 2 s for the final plots
    available = seconds_left - (time.perf_counter() - begin) - final_seconds - margin
    minutes = f"{round(cfg.time_budget, 2):g}"  # a chained run's second stage gets what is left: 7.65, not 7.65141
    if available <= step_seconds + epoch_overhead:
        log(
            f"warning: --time-budget {minutes} min leaves no time to train after setup and the final "
            f"evaluation ({seconds_left - available:.0f}s); running one step"
        )
    steps_per_epoch = len(loaders["train"])
    planned = max(1, steps_that_fit(available, step_seconds, epoch_overhead, steps_per_epoch))
    log(
        f"time budget {minutes} min: {1 / step_seconds:.1f} steps/s, {epoch_overhead:.2f}s per epoch "
        "for validation and checkpoints "
        f"-> planning {planned} steps ({planned / steps_per_epoch:.2f} epochs)"
    )
    return {
        "minutes": cfg.time_budget,
        "planned_steps": planned,
        "seconds_per_step": round(step_seconds, 5),
        "seconds_per_epoch_overhead": round(epoch_overhead, 3),
        "reserved_final_seconds": round(final_seconds, 2),
        "margin_seconds": round(margin, 2),
        "replans": [],
    }


def steps_that_fit(available: float, step_seconds: float, epoch_overhead: float, steps_per_epoch: int) -> int:
    """How many steps fit in ``available`` seconds when every started epoch also pays ``epoch_overhead``."""
    # steps * step_seconds + epochs * epoch_overhead = available, with epochs = steps / steps_per_epoch
    steps = max(0, int(available / (step_seconds + epoch_overhead / steps_per_epoch)))
    if steps % steps_per_epoch:  # a partial last epoch costs a full overhead: trim it, or stop at whole epochs
        partial = int((available - math.ceil(steps / steps_per_epoch) * epoch_overhead) / step_seconds)
        steps = max(0, steps // steps_per_epoch * steps_per_epoch, min(steps, partial))
    return steps


def recent_speed(epochs: list[tuple[int, float, float]], window: float = 20.0) -> tuple[float, float]:
    """Seconds per step and overhead seconds per epoch over the latest epochs that add up to ``window`` seconds.

    ``epochs`` holds ``(steps, training seconds, overhead seconds)`` per epoch, the overhead
    being what an epoch costs besides its steps (validation, checkpoints). Long epochs are
    measured alone, so a lasting change of speed shows at once; short ones are pooled, so one
    noisy epoch does not swing the plan. Pooling matters most for the overhead: an epoch
    whose validation improved also writes ``best.safetensors``, and a plan made from that
    epoch alone would swing by several percent every time it alternates with one that did not.
    """
    steps = seconds = overhead = 0.0
    for count, (n, t, o) in enumerate(reversed(epochs), 1):
        steps, seconds, overhead = steps + n, seconds + t, overhead + o
        if seconds >= window:
            break
    return seconds / steps, overhead / count


def replan_budget(
    budget: dict[str, Any],
    done: int,
    seconds_left: float,
    step_seconds: float,
    epoch_overhead: float,
    steps_per_epoch: int,
    epoch: int,
) -> int | None:
    """After an epoch of a budgeted run, re-plan its length from the speed measured in that epoch.

    The probe before training sees a few steps; the real epochs see the machine as it is
    (slower when something else runs, faster once caches are warm). Returns the new total
    number of steps, or None when the plan is within 2% of the current one.
    """
    planned = budget["planned_steps"]
    total = done + steps_that_fit(seconds_left, step_seconds, epoch_overhead, steps_per_epoch)
    # a shrinking plan keeps one more epoch when it had one, so the schedule still reaches its end
    # (compressed into that epoch) instead of stopping mid-way; the margin and the deadline cover it
    total = max(total, min(planned, done + steps_per_epoch))
    if abs(total - planned) <= 0.02 * planned:
        return None
    budget["replans"].append(
        {"after_epoch": epoch, "from": planned, "to": total, "seconds_per_step": round(step_seconds, 5)}
    )
    budget["planned_steps"] = total
    return total


def _forever(loader: DataLoader):
    while True:
        yield from loader


def _first_batches(loader: DataLoader, n: int):
    for i, batch in enumerate(loader):
        if i == n:
            return
        yield batch


def class_weights(cfg: TrainConfig, splits: DataSplits, device: torch.device) -> torch.Tensor | None:
    """The loss weight of each class for ``--class-weights balanced`` (scikit-learn's "balanced":
    training images / (classes x the class's images)), else None."""
    if cfg.class_weights != "balanced":
        return None
    from sklearn.utils.class_weight import compute_class_weight

    targets = np.asarray(splits.train.targets)
    weights = compute_class_weight("balanced", classes=np.arange(len(cfg.classes)), y=targets)
    return torch.tensor(weights, dtype=torch.float32, device=device)


def imbalance_note(splits: DataSplits, classes: list[str]) -> str | None:
    """A note when the training split's classes are imbalanced (:func:`~.evaluate.is_imbalanced`):
    accuracy then rewards answering the large classes."""
    counts = np.bincount(np.asarray(splits.train.targets), minlength=len(classes))
    big, small = int(counts.argmax()), int(counts.argmin())
    if not is_imbalanced(counts):
        return None
    return (
        f"imbalanced classes: {classes[big]} has {counts[big]} training images, {classes[small]} "
        f"{counts[small]}; accuracy favours the large classes, so the balanced accuracy (the mean "
        "per-class recall) is reported too; --class-weights balanced and --best-metric balanced-accuracy "
        "are meant for such data"
    )


def build_batch_mix(cfg: TrainConfig, num_classes: int) -> v2.Transform | None:
    """MixUp and/or CutMix (torchvision v2) on whole batches; soft targets come out."""
    mixes = []
    if cfg.mixup > 0:
        mixes.append(v2.MixUp(alpha=cfg.mixup, num_classes=num_classes))
    if cfg.cutmix > 0:
        mixes.append(v2.CutMix(alpha=cfg.cutmix, num_classes=num_classes))
    if not mixes:
        return None
    return mixes[0] if len(mixes) == 1 else v2.RandomChoice(mixes)


def train(
    cfg: TrainConfig, resume: bool = False, log=print, on_start: Callable[[], None] | None = None
) -> dict[str, Any]:
    """Train a ViT as ``cfg`` says and return the report (also written to ``report.json``).

    With ``resume``, ``cfg`` must be the run's saved config; training continues after the
    last completed epoch and ends with the same weights as an uninterrupted run (on CPU).
    ``on_start`` runs once the data has loaded, before anything is written (a chained
    run's own folder setup).
    """
    started = time.perf_counter()
    cfg.validate()
    device = resolve_device(cfg.device)
    place = distributed.setup(device)  # one process unless started by torchrun
    device = distributed.device_for(place, device)
    if not place.main:
        log = quiet  # rank 0 speaks and writes for all
    cfg = agree_on_run_dir(cfg, place)
    out = check_run_dir(cfg, resume)
    splits = load_data(
        cfg.data,
        data_root=cfg.data_root,
        download=cfg.download,
        channels=cfg.channels,
        classes=cfg.classes,
        val_fraction=cfg.val_fraction,
        test_fraction=cfg.test_fraction,
        split_seed=cfg.split_seed,
        skip_bad_images=cfg.skip_bad_images,
    )
    leakage = check_leaks(splits, cfg.dedupe, log)
    pretrained = None
    if cfg.pretrained and not resume:  # a resumed run's weights are in its state
        try:
            pretrained = load_pretrained(cfg.pretrained, cfg.num_heads)
        except PretrainedError as err:
            raise ConfigError(str(err)) from None
        for note in pretrained.notes:
            log(f"note: {note}")
    cfg = resolve_config_for_data(cfg, splits, pretrained)
    cfg = dataclasses.replace(cfg, out=str(out))
    check_global_batch(cfg, len(splits.train), place, log)
    if place.main:
        remove_interrupted_writes(out, log)
    if not resume and place.main:
        if on_start is not None:
            on_start()
        start_run_dir(out)
        cfg.save(
            out / "config.yaml", {"data_summary": {"splits": splits.sizes(), "notes": splits.notes, "leakage": leakage}}
        )
    distributed.barrier(place)

    model = build_model(cfg, pretrained).to(device)
    loaders = build_loaders(cfg, splits, device, log, place)
    steps_per_epoch = len(loaders["train"])
    amp_dtype = autocast_dtype(device)
    num_classes = len(cfg.classes)
    state = load_state(out / STATE_FILE) if resume else None
    digest = split_digest(splits)
    budget = None
    if state is not None:
        budget = state.get("budget")
    elif cfg.time_budget:
        budget = plan_budget(
            cfg, model, loaders, device, amp_dtype, cfg.time_budget * 60 - (time.perf_counter() - started), log
        )
        budget = distributed.broadcast(budget, place)  # every rank follows rank 0's plan
    total_steps = budget["planned_steps"] if budget else cfg.epochs * steps_per_epoch
    # a budgeted run stops at its plan or, should the machine slow down, at the deadline, which leaves
    # time for the interrupted epoch's validation and checkpoints and the final evaluation
    budget_end = (
        started + cfg.time_budget * 60 - budget["reserved_final_seconds"] if budget and not resume else math.inf
    )
    train_end = budget_end - (budget.get("margin_seconds", 0.0) if budget else 0.0)  # when the plan should be done
    deadline = budget_end - (budget["seconds_per_epoch_overhead"] if budget else 0.0)
    if budget:
        budget.setdefault("first_plan", budget["planned_steps"])
    n_epochs = math.ceil(total_steps / steps_per_epoch)
    optimizer = build_optimizer(model, cfg, device)
    scheduler = build_scheduler(optimizer, cfg, steps_per_epoch, total_steps)
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema), use_buffers=True) if cfg.ema else None
    eval_model = ema.module if ema is not None else model  # what is validated and checkpointed
    batch_mix = build_batch_mix(cfg, num_classes)
    higher_is_better = cfg.best_metric != "loss"
    loss_weight = class_weights(cfg, splits, device)
    history: list[dict[str, Any]] = []
    best = {
        "epoch": 0,
        "value": -math.inf if higher_is_better else math.inf,
        "val_accuracy": 0.0,
        "val_balanced_accuracy": 0.0,
        "val_loss": math.inf,
    }
    skipped_batches: list[dict[str, Any]] = []  # batches with a non-finite loss or gradient (--skip-nonfinite)
    check_each_step = checks_each_step(device, cfg.skip_nonfinite)
    start_epoch, train_seconds, global_step, save_seconds = 1, 0.0, 0, 0.0
    speed: list[tuple[int, float, float]] = []  # (steps, seconds, overhead seconds) of each epoch, for re-planning
    if state is not None:
        if state["classes"] != cfg.classes:
            raise CheckpointError(f"--resume {out}: the data's classes changed since the run started")
        if state.get("split_digest", digest) != digest:  # runs saved before the digest existed are not checked
            parts = list(splits.sizes())
            then = "/".join(str(state["split_sizes"].get(k, 0)) for k in parts)
            now = "/".join(str(splits.sizes()[k]) for k in parts)
            raise CheckpointError(
                f"--resume {out}: the images of --data {cfg.data} changed since the run started ("
                + (
                    f"{'/'.join(parts)} images: {then} then, {now} now"
                    if then != now
                    else f"as many images, {now}, but other files or labels"
                )
                + "): the splits would differ, and images the run trained on could land in its test split; "
                "restore the data as it was, or start again with --overwrite"
            )
        load_weights(model, state["model"], str(out / STATE_FILE))
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        history, best, train_seconds = state["history"], state["best"], state["train_seconds"]
        skipped_batches = state.get("skipped_batches", [])
        start_epoch, global_step = state["epoch"] + 1, state["step"]
        saved_steps = state.get("steps_per_epoch", steps_per_epoch)
        if saved_steps != steps_per_epoch:  # resumed with another number of processes: same epochs, new steps
            global_step = state["epoch"] * steps_per_epoch
            total_steps = round(total_steps * steps_per_epoch / saved_steps) if budget else total_steps
            n_epochs = math.ceil(total_steps / steps_per_epoch)
            scheduler.last_epoch = global_step
            replan(scheduler, total_steps)
            log(
                f"resuming with {steps_per_epoch} steps per epoch instead of {saved_steps} "
                f"({place.world} process(es)): the schedule continues from epoch {state['epoch']}"
            )

    n_params = sum(p.numel() for p in model.parameters())
    log(
        f"data: {cfg.data}  {len(cfg.classes)} classes, {splits.channels} channel(s), "
        + ", ".join(f"{k} {v}" for k, v in splits.sizes().items())
    )
    for note in splits.notes:
        log(f"  note: {note}")
    imbalanced = imbalance_note(splits, cfg.classes)
    if imbalanced:
        log(f"  note: {imbalanced}")
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log(
        f"model: {cfg.model}  {n_params / 1e6:.2f}M parameters, {cfg.img_size}px input, patch {cfg.patch_size}, "
        f"dim {cfg.embed_dim}, depth {cfg.depth}, heads {cfg.num_heads}"
        + (f"; from {cfg.pretrained}" if cfg.pretrained else "")
        + (f"; {n_train:,} trainable (--freeze {cfg.freeze})" if n_train < n_params else "")
    )
    batch_text = (
        f"batch {cfg.batch_size} per process x {place.world} = {cfg.batch_size * place.world}"
        if place.active
        else f"batch {cfg.batch_size}"
    )
    log(
        f"training: {total_steps} steps ({n_epochs} epochs x {steps_per_epoch}), {batch_text}, "
        f"{cfg.optimizer} lr {cfg.lr:g}, {cfg.schedule} schedule, on {device}"
        + (" (bf16 autocast)" if amp_dtype else "")
        + (", torch.compile" if use_compile(cfg.compile, device) else "")
        + (" with CUDA graphs" if use_cuda_graphs(cfg.compile, device, place) else "")
        + (f", EMA {cfg.ema:g}" if ema is not None else "")
    )
    if resume:
        log(f"resuming {out} after epoch {start_epoch - 1}")
    log(f"writing to {out}")

    from torch.utils.tensorboard import SummaryWriter  # imported late: it is slow to import

    writer = SummaryWriter(str(out / "tensorboard"), purge_step=start_epoch if resume else None) if place.main else None
    train_loader = loaders["train"]
    # DistributedDataParallel averages gradients over the ranks during backward
    step_model = (
        torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        if place.active
        else model
    )
    graphs = use_cuda_graphs(cfg.compile, device, place)
    if use_compile(cfg.compile, device):
        # only the training forward/backward is compiled; checkpoints hold the plain model's weights
        step_model = torch.compile(step_model, mode="reduce-overhead" if graphs else None)
    stopped_by = "plan"
    files = CheckpointWriter(background=writes_behind(device), log=log)  # rank 0's checkpoints
    try:
        epoch = start_epoch - 1
        while epoch < n_epochs:
            epoch += 1
            epoch_start = time.perf_counter()
            torch.manual_seed(_epoch_seed(cfg.seed, epoch) + place.rank)  # dropout, MixUp: per rank
            train_loader.generator.manual_seed(_epoch_seed(cfg.seed, epoch))  # the data order: shared
            train_mode(model)
            loss_sum = torch.zeros((), device=device)
            correct = torch.zeros((), dtype=torch.long, device=device)
            grad_norm_sum = torch.zeros((), device=device)
            finite_flags = torch.ones(len(train_loader), dtype=torch.bool, device=device)
            seen = steps = applied = 0
            bar = tqdm(
                train_loader,
                desc=f"epoch {epoch}/{n_epochs}",
                leave=False,
                disable=not cfg.progress,
                dynamic_ncols=True,
                total=min(steps_per_epoch, total_steps - global_step),
            )
            for images, labels in bar:
                if graphs:  # the previous step's graph outputs are no longer used
                    torch.compiler.cudagraph_mark_step_begin()
                images = images.to(device, non_blocking=True)
                labels = labels.to(device, non_blocking=True)
                targets = labels
                if batch_mix is not None:
                    images, targets = batch_mix(images, labels)
                with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                    logits = step_model(images)
                    loss = F.cross_entropy(logits, targets, weight=loss_weight, label_smoothing=cfg.label_smoothing)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                # the norm of the whole gradient (after DDP's all-reduce: the same on every rank),
                # clipped when --clip-grad asks; a NaN/Inf anywhere in the loss or gradient shows in it
                grad_norm = torch.nn.utils.clip_grad_norm_(
                    model.parameters(), cfg.clip_grad if cfg.clip_grad > 0 else math.inf
                )
                steps += 1
                global_step += 1
                if check_each_step and not bool(torch.isfinite(grad_norm)):
                    _nonfinite(
                        skipped_batches, cfg.skip_nonfinite, epoch, global_step, steps, float(loss.detach()), out, log
                    )
                    optimizer.zero_grad(set_to_none=True)  # the batch is skipped: no update
                    scheduler.step()
                else:
                    if not check_each_step:  # on a GPU the flag stays there until the epoch ends
                        finite_flags[steps - 1] = torch.isfinite(grad_norm)
                    optimizer.step()
                    scheduler.step()
                    if ema is not None:
                        ema.update_parameters(model)
                    # accumulate on the device: no host synchronization inside the step
                    grad_norm_sum += grad_norm.detach()
                    applied += 1
                    loss_sum += loss.detach().float() * labels.shape[0]
                    correct += (logits.detach().argmax(1) == labels).sum()
                    seen += labels.shape[0]
                if cfg.progress and steps % 10 == 0:
                    bar.set_postfix(loss=f"{float(loss_sum) / max(seen, 1):.4f}")
                if global_step >= total_steps:
                    break
                if math.isfinite(deadline) and distributed.any_rank(time.perf_counter() > deadline, place, device):
                    stopped_by = "deadline"
                    break
            bar.close()
            train_time = time.perf_counter() - epoch_start
            if place.active:  # the whole global batch's loss, accuracy and count
                counts = distributed.all_sum(
                    torch.stack(
                        [loss_sum.double(), correct.double(), torch.tensor(float(seen), device=device).double()]
                    ),
                    place,
                )
                loss_sum, correct, seen = counts[0], counts[1], int(counts[2])
            if not check_each_step and not bool(finite_flags[:steps].all()):
                first = int((~finite_flags[:steps]).nonzero()[0])
                _nonfinite(
                    skipped_batches, 0, epoch, global_step - steps + first + 1, first + 1, float("nan"), out, log
                )
            train_loss = float(loss_sum) / max(seen, 1)
            val = evaluate(eval_model, loaders["val"], device, num_classes, amp_dtype, place)
            epoch_seconds = time.perf_counter() - epoch_start
            train_seconds += epoch_seconds
            row = {
                "epoch": epoch,
                "train_loss": train_loss,
                "train_accuracy": float(correct) / max(seen, 1),
                "val_loss": val.loss,
                "val_accuracy": val.accuracy,
                "val_balanced_accuracy": val.balanced_accuracy,
                "lr": optimizer.param_groups[0]["lr"],
                "epoch_seconds": epoch_seconds,
                "images_per_second": seen / train_time,
            }
            history.append(row)
            if (
                stopped_by != "deadline"
                and global_step < total_steps
                and math.isfinite(train_end)
                and not (epoch == start_epoch and use_compile(cfg.compile, device))
            ):
                # validation just ran; the checkpoints cost what they cost last epoch. The first epoch a
                # compiled run makes in this process also compiles (20 s and more on a GPU): re-planning
                # from it would shrink the plan to a few steps, so the probe's plan stands until epoch 2
                speed.append((steps, train_time, time.perf_counter() - epoch_start - train_time + save_seconds))
                step_seconds, overhead = recent_speed(speed)
                new_total = replan_budget(
                    budget,
                    global_step,
                    train_end - time.perf_counter() - save_seconds,
                    step_seconds,
                    overhead,
                    steps_per_epoch,
                    epoch,
                )
                budget, new_total = distributed.broadcast((budget, new_total), place)  # rank 0's clock decides
                if new_total is not None:
                    log(
                        f"time budget: re-planned to {new_total} steps (was {total_steps}) from the "
                        f"{1 / step_seconds:.1f} steps/s measured up to epoch {epoch}"
                    )
                    total_steps, n_epochs = new_total, max(epoch, math.ceil(new_total / steps_per_epoch))
                    replan(scheduler, total_steps)
            save_start = time.perf_counter()
            value = {"accuracy": val.accuracy, "balanced-accuracy": val.balanced_accuracy, "loss": val.loss}[
                cfg.best_metric
            ]
            improved = value > best["value"] if higher_is_better else value < best["value"]
            if improved:
                best = {
                    "epoch": epoch,
                    "value": value,
                    "val_accuracy": val.accuracy,
                    "val_balanced_accuracy": val.balanced_accuracy,
                    "val_loss": val.loss,
                }
            if place.main:
                if improved:
                    files.save_model(out / "best.safetensors", eval_model, epoch=epoch)
                files.save_model(out / "last.safetensors", eval_model, epoch=epoch)
                # the state file is the commit point of an epoch: resume starts after the last one written
                files.save_state(
                    out / STATE_FILE,
                    {
                        "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "epoch": epoch,
                        "step": global_step,
                        "steps_per_epoch": steps_per_epoch,
                        "best": best,
                        "history": history,
                        "train_seconds": train_seconds,
                        "classes": list(cfg.classes),
                        "skipped_batches": skipped_batches,
                        "split_digest": digest,
                        "split_sizes": splits.sizes(),
                        "budget": budget,
                        **({"ema": ema.state_dict()} if ema is not None else {}),
                    },
                )
                files.write_bytes(out / "metrics.csv", metrics_csv_bytes(history))
                _log_epoch_scalars(writer, row, epoch, eval_model, grad_norm_sum / max(applied, 1))
            save_seconds = time.perf_counter() - save_start
            log(
                f"epoch {epoch:>3}/{n_epochs}  train loss {train_loss:.4f} acc {row['train_accuracy']:.4f}  "
                f"val loss {val.loss:.4f} acc {val.accuracy:.4f}  lr {row['lr']:.2e}  "
                f"{row['images_per_second']:.0f} img/s  {epoch_seconds:.1f}s" + ("  *" if improved else "")
            )
            if stopped_by == "deadline":
                log(f"time budget reached after {global_step} of {total_steps} planned steps")
                break
        files.close()  # every checkpoint is on disk (a failed write is raised here)
    except BaseException:  # what the with-statement does, beside the TensorBoard writer's finally
        files.close_after_error()
        raise
    finally:
        if writer is not None:
            writer.close()

    distributed.barrier(place)  # best.safetensors is written
    report = final_report(cfg, splits, loaders, device, out, history, best, train_seconds, amp_dtype, log, place)
    if not place.main:
        return report
    report["leakage"] = leakage
    if skipped_batches:
        report["skipped_batches"] = skipped_batches
    if splits.skipped:
        report["skipped_images"] = {"count": len(splits.skipped), "files": splits.skipped}
    if budget:
        report["time_budget"] = {**budget, "done_steps": global_step, "stopped_by": stopped_by}
    report["total_seconds"] = round(time.perf_counter() - started, 2)
    write_report(out / "report.json", report)
    score = (
        "test accuracy"
        if report["test"]["split"] == "test"
        else "accuracy on the validation split (no test split; it also chose the best epoch)"
    )
    score += f" {report['test']['accuracy']:.4f}"
    if imbalanced:
        score += f", balanced accuracy {report['test']['balanced_accuracy']:.4f}"
    log(
        f"done in {report['total_seconds']:.1f}s: {score} (best epoch {best['epoch']}, "
        f"val accuracy {best['val_accuracy']:.4f}); report in {out / 'report.json'}"
    )
    return report


def _nonfinite(
    skipped: list[dict[str, Any]],
    allowed: int,
    epoch: int,
    step: int,
    epoch_step: int,
    loss: float,
    out: Path,
    log,
    checkpoint: str = "last.safetensors",
) -> None:
    """A batch gave a NaN/Inf loss or gradient: record it, and stop once more than ``allowed`` have."""
    where = f"epoch {epoch}, step {epoch_step} of the epoch (global step {step})"
    what = (
        f"the loss was {loss:g}"
        if not math.isfinite(loss)
        else f"the loss was {loss:.4g} but the gradient was not finite"
    )
    if len(skipped) >= allowed:
        raise TrainingError(
            f"a non-finite loss or gradient at {where}: {what}; the last good checkpoint is "
            f"{out / checkpoint} (lower --lr, set --clip-grad, or skip up to N such "
            "batches with --skip-nonfinite N)"
        )
    skipped.append({"epoch": epoch, "step": step, "loss": loss if math.isfinite(loss) else str(loss)})
    log(f"skipped a batch at {where}: {what} ({len(skipped)} of --skip-nonfinite {allowed})")


def _log_epoch_scalars(
    writer, row: dict[str, Any], epoch: int, model: torch.nn.Module, grad_norm: torch.Tensor
) -> None:
    """TensorBoard scalars of an epoch: losses, accuracies, LR, speed, parameter norm, mean gradient norm."""
    for key in ("train_loss", "val_loss"):
        writer.add_scalar(f"loss/{key[:-5]}", row[key], epoch)
    for key in ("train_accuracy", "val_accuracy"):
        writer.add_scalar(f"accuracy/{key[:-9]}", row[key], epoch)
    writer.add_scalar("accuracy/val_balanced", row["val_balanced_accuracy"], epoch)
    writer.add_scalar("lr", row["lr"], epoch)
    writer.add_scalar("images_per_second", row["images_per_second"], epoch)
    writer.add_scalar("param_norm", _param_norm(model), epoch)
    writer.add_scalar("grad_norm", float(grad_norm), epoch)  # before clipping


def write_samples(splits: DataSplits, targets, predictions, classes: list[str], path: Path, per_class: int = 6) -> None:
    """``samples.png``: up to ``per_class`` validation images of each class with the best model's labels."""
    chosen: list[int] = []
    for c in range(len(classes)):
        chosen += [i for i, t in enumerate(targets) if t == c][:per_class]
    images = [splits.val[i][0].numpy() for i in chosen]
    plot_samples(
        images, [int(targets[i]) for i in chosen], [int(predictions[i]) for i in chosen], classes, path, per_class
    )


def final_report(
    cfg: TrainConfig,
    splits: DataSplits,
    loaders: dict[str, DataLoader],
    device: torch.device,
    out: Path,
    history: list[dict[str, Any]],
    best: dict[str, Any],
    train_seconds: float,
    amp_dtype: torch.dtype | None,
    log=print,
    place: Dist | None = None,
) -> dict[str, Any]:
    """Evaluate the best checkpoint on the test split (or validation, if there is none); plot and report.

    Under torchrun every rank evaluates its shard (the run folder must be on a filesystem all
    ranks see, as for resuming); only rank 0 plots.
    """
    place = place or Dist()
    model = model_from_checkpoint(out / "best.safetensors").to(device)
    val = evaluate(model, loaders["val"], device, len(cfg.classes), amp_dtype, place)
    split = "test" if "test" in loaders else "val"
    if split == "val":
        log("note: no test split, so the final evaluation uses the validation split")
    result = evaluate(model, loaders[split], device, len(cfg.classes), amp_dtype, place)
    matrix = result.confusion(len(cfg.classes))
    if place.main:
        write_samples(splits, val.targets, val.predictions, cfg.classes, out / "samples.png")
        plot_curves(history, out)
        plot_confusion_matrix(
            matrix,
            cfg.classes,
            out / "confusion_matrix.png",
            f"{split} split, best epoch {best['epoch']}: accuracy {result.accuracy:.3f}",
        )
    return {
        "data": cfg.data,
        "classes": list(cfg.classes),
        "model": {
            "name": cfg.model,
            "parameters": sum(p.numel() for p in model.parameters()),
            **model.config.to_dict(),
        },
        "best_epoch": int(best["epoch"]),
        "best_metric": cfg.best_metric,
        "epochs": len(history),
        "val": {
            "accuracy": best["val_accuracy"],
            "balanced_accuracy": best.get("val_balanced_accuracy"),
            "loss": best["val_loss"],
        },
        "test": {
            "split": split,
            "images": int(len(result.targets)),
            "accuracy": result.accuracy,
            "balanced_accuracy": result.balanced_accuracy,
            "top5": result.top5,
            "loss": result.loss,
            "per_class": result.per_class_accuracy(cfg.classes),
            "confusion_matrix": matrix.tolist(),
        },
        "splits": splits.sizes(),
        "notes": splits.notes,
        "device": str(device),
        "processes": place.world,
        "global_batch_size": cfg.batch_size * place.world,
        "seed": cfg.seed,
        "train_seconds": round(train_seconds, 2),
    }
