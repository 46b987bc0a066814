"""Setting a run up, before its first step: the options checked, the data loaded, the run folder started.

``train`` and ``pretrain`` share it: the device and the process group, the run folder's
checks (a new run never mixes into an old one), the data and its leak check, pretrained
weights, the configuration resolved from the data and saved as ``config.yaml``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..config import ConfigError, TrainConfig
from ..config.checks import parse_bit_depth
from ..data.leakage import content_hashes, find_leaks, without
from ..data.sources import DataError, DataSplits, load_data, split_digest
from ..models.pretrained import Pretrained, PretrainedError, load_pretrained
from . import distributed
from .autorecipe import SPLIT_OPTIONS, RecipeChoice, apply_recipe, choose_recipe
from .build import resolve_config_for_data
from .device import resolve_device
from .distributed import Dist
from .evaluate import is_imbalanced
from .rundir import RUN_FILES, agree_on_run_dir, check_run_dir, remove_interrupted_writes, start_run_dir


def quiet(*args: Any, **kwargs: Any) -> None:
    """The log of ranks other than 0."""


@dataclass
class RunSetup:
    """A run ready to train: its resolved configuration, folder, data, device and process group."""

    cfg: TrainConfig
    out: Path
    splits: DataSplits
    leakage: dict[str, Any]
    pretrained: Pretrained | None
    device: torch.device
    place: Dist
    log: Callable[..., None]
    devices: int = 1  # devices in this process that share each step (the JAX backend's local devices)
    recipe_choice: RecipeChoice | None = None  # what --recipe auto chose, and why


def prepare_run(
    cfg: TrainConfig,
    resume: bool,
    log=print,
    on_start: Callable[[], None] | None = None,
    files: tuple[str, ...] = RUN_FILES,
    user_settings: frozenset[str] | None = None,
) -> RunSetup:
    """Check, load and resolve everything a run needs, then start its folder (unless it resumes).

    ``files`` are the names that make a folder a run of this kind. ``on_start`` runs once the
    data has loaded, before anything is written (a chained run's own folder setup). Under
    torchrun every rank comes through here; rank 0 writes, and the returned ``log`` is quiet
    on the others. With ``cfg.recipe == "auto"``, the recipe is chosen from the loaded data
    (:mod:`.autorecipe`); ``user_settings`` names the settings it may not override.
    """
    cfg.validate()
    devices = 1
    if cfg.backend == "jax":  # JAX picks its own devices; the data and the final evaluation stay on the CPU
        from .jax_backend import import_jax, join_processes, local_devices

        import_jax()
        device = torch.device("cpu")
        place = distributed.setup(device, cfg.dist_timeout)  # one process unless started by torchrun
        join_processes(place, cfg.device)  # under torchrun, the JAX processes form one system too
        devices = len(local_devices(cfg.device))
    else:
        device = resolve_device(cfg.device)
        place = distributed.setup(device, cfg.dist_timeout)  # one process unless started by torchrun
        device = distributed.device_for(place, device)
    if not place.main:
        log = quiet  # rank 0 speaks and writes for all
    cfg = agree_on_run_dir(cfg, place)
    out = check_run_dir(cfg, resume, files)
    splits = _load(cfg)
    recipe_choice = None
    if cfg.recipe == "auto" and not resume:
        recipe_choice = choose_recipe(splits)
        chosen = apply_recipe(cfg, user_settings or (), recipe_choice)
        if any(getattr(chosen, k) != getattr(cfg, k) for k in SPLIT_OPTIONS):
            splits = _load(chosen)  # the recipe splits off another share for validation
        cfg = chosen
        chosen.validate()
        log(f"recipe: {recipe_choice.name or 'none, the defaults'} ({recipe_choice.reason})")
    check_same_data_on_every_rank(cfg, splits, place)
    leakage = check_leaks(splits, cfg.dedupe, log)
    pretrained = None
    if cfg.pretrained and not resume:  # a resumed run's weights are in its state
        try:
            pretrained = load_pretrained(cfg.pretrained, cfg.num_heads)
        except PretrainedError as err:
            raise ConfigError(str(err)) from None
        for note in pretrained.notes:
            log(f"note: {note}")
    cfg = dataclasses.replace(resolve_config_for_data(cfg, splits, pretrained), out=str(out))
    if cfg.tta == "flip" and cfg.hflip == 0:
        raise ConfigError(
            "--tta flip: this run trains without flips (--hflip 0; for digits, a mirror image changes the label), "
            "so its predictions on mirror images mean nothing; leave --tta out"
        )
    check_global_batch(cfg, len(splits.train), place, log, devices)
    if place.main:
        remove_interrupted_writes(out, log)
    if not resume and place.main:
        if on_start is not None:
            on_start()
        start_run_dir(out, files)
        summary = {"splits": splits.sizes(), "notes": splits.notes, "leakage": leakage}
        cfg.save(out / "config.yaml", {"data_summary": summary})
    distributed.barrier(place)
    return RunSetup(cfg, out, splits, leakage, pretrained, device, place, log, devices, recipe_choice)


def check_same_data_on_every_rank(cfg: TrainConfig, splits: DataSplits, place: Dist) -> None:
    """Refuse, on every rank at once, a run whose processes read different images (a copy of ``--data``
    that differs on another machine), which would deal other splits and train on test images."""
    if not place.active:  # alone, there is nothing to compare with (and no fingerprint to compute)
        return
    differing = distributed.ranks_differing(split_digest(splits), place)
    if differing:
        raise ConfigError(
            f"--data {cfg.data}: process(es) {', '.join(map(str, differing))} found other images or labels than "
            "process 0; every machine needs the same data at the same path (a shared folder, or identical copies)"
        )


def _load(cfg: TrainConfig) -> DataSplits:
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
    splits.decode_bits(parse_bit_depth(cfg.bit_depth))
    return splits


def check_global_batch(cfg: TrainConfig, n_train: int, place: Dist, log=print, devices: int = 1) -> None:
    """Under torchrun, or with several JAX devices, incomplete global batches are dropped, so the
    training split must fill one (``--batch-size`` is per process, and per device).

    Warns when the dropped remainder is a tenth of the split or more (other images each epoch,
    as the order is reshuffled), naming the largest smaller ``--batch-size`` that leaves less than a tenth out.
    """
    shares = place.world * devices
    if shares == 1:
        return
    parts = ([f"{place.world} processes"] if place.active else []) + ([f"{devices} devices"] if devices > 1 else [])
    where = "under torchrun" if place.active else "with several devices"
    step = cfg.batch_size * shares
    if n_train < step:
        raise ConfigError(
            f"--batch-size {cfg.batch_size} x {' x '.join(parts)} = {step} "
            f"images per step, more than the {n_train} training images of --data {cfg.data}, and "
            f"{where} incomplete global batches are dropped: lower --batch-size"
        )

    def left_out(batch_size: int) -> int:
        return n_train % (batch_size * shares)

    dropped = left_out(cfg.batch_size)
    if dropped * 10 >= n_train:
        fit = next((b for b in range(cfg.batch_size - 1, 0, -1) if left_out(b) * 10 < n_train), None)
        hint = f"; --batch-size {fit} would leave {left_out(fit)} out" if fit else ""
        log(
            f"warning: --batch-size {cfg.batch_size} x {' x '.join(parts)} = {step} images per step leaves "
            f"{dropped} of the {n_train} training images out of each epoch ({dropped / n_train:.0%}; "
            f"incomplete global batches are dropped {where}){hint}"
        )


def check_leaks(splits: DataSplits, dedupe: str, log=print) -> dict[str, Any]:
    """Warn about evaluation images identical to training images; with ``dedupe`` (``--dedupe exact|near``),
    drop them, and with ``near`` also their near copies (:func:`near_copies`)."""
    train_hashes = set(content_hashes(splits.train))
    found: dict[str, Any] = {"dedupe": dedupe}
    near = near_copies(splits) if dedupe == "near" else {}
    for name in ("val", "test"):
        dataset = getattr(splits, name)
        if dataset is None:
            continue
        leak = find_leaks(splits.train, dataset, name, train_hashes)
        found[name] = leak.to_dict()
        if leak.leaked:
            action = f"removed from it (--dedupe {dedupe})" if dedupe != "off" else "kept (use --dedupe to remove them)"
            log(f"warning: {len(leak.leaked)} of {leak.total} {name} images are identical to training images; {action}")
        close = sorted(set(near.get(name, ())) - set(leak.leaked))
        if dedupe == "near":
            found[name]["near_copies_of_train"] = len(close)
            if close:
                log(f"warning: {len(close)} of {leak.total} {name} images are near copies of training images; removed")
        drop = sorted({*leak.leaked, *close}) if dedupe != "off" else []
        if drop:
            found[name]["removed"] = len(drop)
            kept = without(dataset, drop)
            copies = "identical to training images" if dedupe == "exact" else "copies of training images"
            if len(kept) == 0 and name == "val":
                raise DataError(
                    f"--dedupe: all {leak.total} validation images are {copies}, so no validation split is left "
                    "(raise --val-fraction, or train without --dedupe)"
                )
            if len(kept) == 0:  # the final evaluation falls back to the validation split
                kept = None
                splits.notes.append(
                    f"all {leak.total} test images are {copies} and --dedupe removed them: the final "
                    "evaluation uses the validation split"
                )
            setattr(splits, name, kept)
    return found


def near_copies(splits: DataSplits) -> dict[str, list[int]]:
    """Per evaluation split, the indices of its images that are near copies of a training image (resized,
    re-encoded, slightly edited: see :func:`vitrain.data.inspection.near_duplicates`)."""
    from ..data.inspection import near_duplicates, scan

    parts = {n: d for n, d in (("train", splits.train), ("val", splits.val), ("test", splits.test)) if d is not None}
    facts = {n: scan(d, n, splits.channels) for n, d in parts.items()}
    found: dict[str, set[int]] = {"val": set(), "test": set()}
    for (a, i), (b, j), _ in near_duplicates(list(facts.values())):
        if a == "train" and b != "train":
            found[b].add(facts[b].indices[j])
        elif b == "train" and a != "train":
            found[a].add(facts[a].indices[i])
    return {name: sorted(indices) for name, indices in found.items()}


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
