"""One training epoch: the batches through the backend's step, the non-finite checks, the deadline."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from tqdm import tqdm

from . import distributed
from .backend import Backend
from .budget import BudgetClock
from .distributed import Dist
from .state import Progress


class TrainingError(RuntimeError):
    """Training cannot go on (for example the loss became NaN); the message says where."""


@dataclass
class EpochStats:
    """What an epoch of training measured (over every rank under torchrun)."""

    steps: int  # steps this epoch ran (skipped batches included)
    loss: float  # mean training loss per image of the applied steps
    accuracy: float  # training top-1 accuracy of those images (against the unmixed labels)
    images: int
    seconds: float  # the steps alone, without validation
    grad_norm: float  # mean gradient norm of the applied steps, before clipping
    deadline: bool  # whether the time budget's deadline stopped it


def train_one_epoch(
    backend: Backend,
    batches: Iterable,
    epoch: int,
    steps: int,
    progress: Progress,
    clock: BudgetClock,
    place: Dist,
    device: torch.device,
    *,
    skip_nonfinite: int,
    out: Path,
    bar: bool = True,
    label: str = "",
    log=print,
    checkpoint: str = "last.safetensors",
    reserve: float = 0.0,
) -> EpochStats:
    """Run up to ``steps`` training steps over ``batches``; ``progress.step`` counts them.

    A batch whose gradient is not finite is recorded in ``progress.skipped_batches`` (and
    the run stops with :class:`TrainingError`, naming ``checkpoint`` as the last good one,
    once more than ``skip_nonfinite`` were). A budgeted run stops mid-epoch at its deadline
    (less ``reserve`` seconds that the epoch still needs after its steps).
    """
    start = time.perf_counter()
    loss_sum = correct = grad_sum = 0
    seen = done = applied = 0
    deferred: list[Any] = []  # device-side finite flags, read once the epoch ends
    shown = tqdm(batches, desc=label, leave=False, disable=not bar, dynamic_ncols=True, total=steps)
    stopped = False
    for images, labels in shown:
        with distributed.waiting_in(f"step {done + 1} of epoch {epoch} (the gradient all-reduce)", place):
            result = backend.train_step(images, labels)
        done += 1
        progress.step += 1
        if result.finite is False:
            record_nonfinite(
                progress.skipped_batches,
                skip_nonfinite,
                epoch,
                progress.step,
                done,
                float(result.loss),
                out,
                log,
                checkpoint,
            )
        else:
            if result.finite is not True:
                deferred.append(result.finite)
            # accumulated on the device: no host synchronization inside the step
            grad_sum = grad_sum + result.grad_norm
            loss_sum = loss_sum + result.loss * result.images
            correct = correct + result.correct
            seen += result.images
            applied += 1
        if bar and done % 10 == 0:
            shown.set_postfix(loss=f"{float(loss_sum) / max(seen, 1):.4f}")
        if done >= steps:
            break
        if clock.running:
            with distributed.waiting_in(f"the time budget's deadline check after step {done} of epoch {epoch}", place):
                stopped = distributed.any_rank(clock.past_deadline(reserve), place, device)
            if stopped:
                break
    shown.close()
    seconds = time.perf_counter() - start
    if place.active:  # the whole global batch's loss, accuracy and count
        # float(): the sums may be another framework's arrays (read once, as the epoch ends)
        sums = torch.tensor([float(v) for v in (loss_sum, correct, seen)], dtype=torch.float64, device=device)
        with distributed.waiting_in(f"the sums of epoch {epoch}'s training metrics", place):
            sums = distributed.all_sum(sums, place)
        loss_sum, correct, seen = sums[0], sums[1], int(sums[2])
    flags = _flags(deferred)
    if deferred and not flags.all():
        first = int(np.flatnonzero(~flags)[0])
        record_nonfinite(
            progress.skipped_batches, 0, epoch, progress.step - done + first + 1, first + 1, math.nan, out, log
        )
    return EpochStats(
        steps=done,
        loss=float(loss_sum) / max(seen, 1),
        accuracy=float(correct) / max(seen, 1),
        images=seen,
        seconds=seconds,
        grad_norm=float(grad_sum) / max(applied, 1),
        deadline=stopped,
    )


def _flags(deferred: list[Any]) -> np.ndarray:
    """Device-side finite flags (torch tensors, or another backend's arrays) as one boolean array."""
    if not deferred:
        return np.ones(0, dtype=bool)
    if isinstance(deferred[0], torch.Tensor):
        return torch.stack(deferred).cpu().numpy()
    return np.asarray(deferred, dtype=bool)


def record_nonfinite(
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
