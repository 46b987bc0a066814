"""The time-budget planner: probe the speed, plan the steps that fit, re-plan from the epochs as they run."""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from ..checkpoint import (
    CheckpointWriter,
)
from ..config import TrainConfig
from .evaluate import evaluate
from .finetune import train_mode
from .optim import build_optimizer
from .runtime import writes_behind


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
