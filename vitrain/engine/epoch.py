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
from .midepoch import EpochSums, MidEpochSaves
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
    saves: MidEpochSaves | None = None,
    resumed: tuple[int, EpochSums] | None = None,
) -> EpochStats:
    """Run up to ``steps`` training steps over ``batches``; ``progress.step`` counts them.

    A batch whose gradient is not finite is recorded in ``progress.skipped_batches`` (and
    the run stops with :class:`TrainingError`, naming ``checkpoint`` as the last good one,
    once more than ``skip_nonfinite`` were). A budgeted run stops mid-epoch at its deadline
    (less ``reserve`` seconds that the epoch still needs after its steps). With ``saves``,
    the run is committed inside the epoch when they say (``--save-every``), and after a
    SIGTERM it is committed and :class:`~.midepoch.StopRequested` raised. ``resumed``
    (steps already done in the epoch, their sums) continues an epoch saved that way.
    """
    start = time.perf_counter()
    compiled = backend.compiling is not None and backend.compiling.on  # torch.compile: named in a non-finite error
    first, sums = resumed or (0, EpochSums())
    done = 0
    shown = tqdm(batches, desc=label, leave=False, disable=not bar, dynamic_ncols=True, total=steps)
    stopped = False
    if saves is not None:
        saves.listen(True)  # a SIGTERM now saves and stops at the next step
    try:
        for images, labels in shown:
            at = first + done + 1  # the step of the epoch
            with distributed.waiting_in(f"step {at} of epoch {epoch} (the gradient all-reduce)", place):
                result = backend.train_step(images, labels)
            done += 1
            progress.step += 1
            if result.finite is False:
                record_nonfinite(
                    progress.skipped_batches,
                    skip_nonfinite,
                    epoch,
                    progress.step,
                    at,
                    float(result.loss),
                    out,
                    log,
                    checkpoint,
                    compiled=compiled,
                )
            else:
                if result.finite is not True:
                    sums.deferred.append(result.finite)
                # accumulated on the device: no host synchronization inside the step
                sums.grad = sums.grad + result.grad_norm
                sums.loss = sums.loss + result.loss * result.images
                sums.correct = sums.correct + result.correct
                sums.seen += result.images
                sums.applied += 1
            if bar and done % 10 == 0:
                shown.set_postfix(loss=f"{float(sums.loss) / max(sums.seen, 1):.4f}")
            if done >= steps:
                break
            stopped = _checks_after_step(saves, clock, reserve, progress.step, epoch, at, sums, batches, place, device)
            if stopped:
                break
    finally:
        if saves is not None:
            saves.listen(False)
        shown.close()
    seconds = time.perf_counter() - start
    loss_sum, correct, seen = sums.loss, sums.correct, sums.seen
    if place.active:  # the whole global batch's loss, accuracy and count
        # float(): the sums may be another framework's arrays (read once, as the epoch ends)
        totals = torch.tensor([float(v) for v in (loss_sum, correct, seen)], dtype=torch.float64, device=device)
        with distributed.waiting_in(f"the sums of epoch {epoch}'s training metrics", place):
            totals = distributed.all_sum(totals, place)
        loss_sum, correct, seen = totals[0], totals[1], int(totals[2])
    flags = _flags(sums.deferred)
    if sums.deferred and not flags.all():
        bad = int(np.flatnonzero(~flags)[0])
        epoch_start = progress.step - first - done
        record_nonfinite(
            progress.skipped_batches, 0, epoch, epoch_start + bad + 1, bad + 1, math.nan, out, log, compiled=compiled
        )
    return EpochStats(
        steps=done,
        loss=float(loss_sum) / max(seen, 1),
        accuracy=float(correct) / max(seen, 1),
        images=seen,
        seconds=seconds,
        grad_norm=float(sums.grad) / max(sums.applied, 1),
        deadline=stopped,
    )


def _checks_after_step(
    saves: MidEpochSaves | None,
    clock: BudgetClock,
    reserve: float,
    step: int,
    epoch: int,
    at: int,
    sums: EpochSums,
    batches: Iterable,
    place: Dist,
    device: torch.device,
) -> bool:
    """After global ``step`` (step ``at`` of ``epoch``): whether the time budget's deadline ends the epoch
    now; saves inside the epoch when ``saves`` say so, and after a SIGTERM raises once saved."""
    if saves is not None:
        past = clock.running and clock.past_deadline(reserve)
        deadline, save, stop = saves.poll(step, past, f"the checks after step {at} of epoch {epoch}")
        if save:
            saves.save(epoch, at, sums, batches)
        if stop:
            raise saves.stop(epoch, at)
        return deadline
    if not clock.running:
        return False
    with distributed.waiting_in(f"the deadline check after step {at} of epoch {epoch}", place):
        return distributed.any_rank(clock.past_deadline(reserve), place, device)


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
    compiled: bool = False,
) -> None:
    """A batch gave a NaN/Inf loss or gradient: record it, and stop once more than ``allowed`` have.

    ``compiled``: the step runs through ``torch.compile``, so the message also suggests
    ``--compile off`` (a compiler fault shows as a non-finite loss in the first steps).
    """
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
            f"batches with --skip-nonfinite N{'; the step is compiled: try --compile off' if compiled else ''})"
        )
    skipped.append({"epoch": epoch, "step": step, "loss": loss if math.isfinite(loss) else str(loss)})
    log(f"skipped a batch at {where}: {what} ({len(skipped)} of --skip-nonfinite {allowed})")
