"""The time-budget planner, shared by ``train`` and ``pretrain``: plan the steps that fit, re-plan as epochs run.

A budgeted run (``--time-budget MINUTES``) is planned before it starts (``train`` probes
its speed with the backend; ``pretrain`` starts from ``--epochs``), then re-planned after
each epoch from the speed the epochs actually ran at (:class:`BudgetClock`). Both leave the
same margin (:func:`budget_margin`), and both stop at a deadline should the machine slow
down late in the run.
"""

from __future__ import annotations

import math
import time
from typing import Any

from ..config import TrainConfig
from .backend import Backend


def budget_margin(minutes: float) -> float:
    """Seconds a plan leaves unused: 3% of the budget, and 2 s for the final plots and report."""
    return 0.03 * minutes * 60 + 2.0


def plan_budget(
    cfg: TrainConfig,
    backend: Backend,
    loaders: dict[str, Any],
    seconds_left: float,
    log=print,
) -> dict[str, Any]:
    """Measure training and validation speed with the backend's probe, then plan the steps that fit.

    Each epoch costs its steps plus one validation pass and its checkpoints; the final
    evaluation (validation and test with the best model) is reserved too.
    """
    begin = time.perf_counter()
    speed = backend.measure(loaders, min(30.0, 0.05 * seconds_left))
    val_seconds = speed.val_batch * len(loaders["val"])
    epoch_overhead = val_seconds + 2 * speed.checkpoint  # every epoch writes last (and best) weights and the state
    final_seconds = val_seconds + (val_seconds * len(loaders["test"]) / len(loaders["val"]) if "test" in loaders else 0)
    if cfg.tta == "flip":  # the final evaluation also predicts every image's mirror image
        final_seconds *= 2
    margin = budget_margin(cfg.time_budget)
    available = seconds_left - (time.perf_counter() - begin) - final_seconds - margin
    minutes = f"{round(cfg.time_budget, 2):g}"  # a chained run's second stage gets what is left: 7.65, not 7.65141
    if available <= speed.step + epoch_overhead:
        log(
            f"warning: --time-budget {minutes} min leaves no time to train after setup and the final "
            f"evaluation ({seconds_left - available:.0f}s); running one step"
        )
    steps_per_epoch = len(loaders["train"])
    planned = max(1, steps_that_fit(available, speed.step, epoch_overhead, steps_per_epoch))
    log(
        f"time budget {minutes} min: {1 / speed.step:.1f} steps/s, {epoch_overhead:.2f}s per epoch "
        "for validation and checkpoints "
        f"-> planning {planned} steps ({planned / steps_per_epoch:.2f} epochs)"
    )
    return {
        "minutes": cfg.time_budget,
        "planned_steps": planned,
        "seconds_per_step": round(speed.step, 5),
        "seconds_per_epoch_overhead": round(epoch_overhead, 3),
        "reserved_final_seconds": round(final_seconds, 2),
        "margin_seconds": round(margin, 2),
        "replans": [],
    }


def epochs_plan(minutes: float, planned_steps: int, reserved_final_seconds: float = 0.0) -> dict[str, Any]:
    """A plan without a probe: ``planned_steps`` to begin with, re-planned after the first epoch."""
    return {
        "minutes": minutes,
        "planned_steps": planned_steps,
        "seconds_per_epoch_overhead": 0.0,
        "reserved_final_seconds": reserved_final_seconds,
        "margin_seconds": round(budget_margin(minutes), 2),
        "replans": [],
    }


class BudgetClock:
    """When a budgeted run must be done, and the re-planning after each of its epochs.

    ``train_end`` is when the plan should be done (the budget less the final evaluation and
    the margin); ``deadline`` is when a running epoch stops regardless (the budget less the
    final evaluation and one epoch's validation and checkpoints). A resumed run finishes its
    plan: its clock has neither.
    """

    def __init__(self, budget: dict[str, Any] | None, started: float, resumed: bool) -> None:
        self.budget = budget
        end = math.inf
        if budget is not None and not resumed:
            end = started + budget["minutes"] * 60 - budget["reserved_final_seconds"]
            budget.setdefault("first_plan", budget["planned_steps"])
        self.train_end = end - (budget.get("margin_seconds", 0.0) if budget else 0.0)
        self.deadline = end - (budget["seconds_per_epoch_overhead"] if budget else 0.0)
        self.speed: list[tuple[int, float, float]] = []  # (steps, seconds, overhead seconds) of each epoch

    @property
    def running(self) -> bool:
        """Whether the clock runs (a budgeted run that was not resumed)."""
        return math.isfinite(self.train_end)

    def past_deadline(self, reserve: float = 0.0) -> bool:
        """Whether the deadline (less ``reserve`` seconds) has passed."""
        return time.perf_counter() > self.deadline - reserve

    def replan(
        self,
        done: int,
        epoch: int,
        steps: int,
        train_seconds: float,
        overhead: float,
        steps_per_epoch: int,
        reserve: float,
    ) -> int | None:
        """Record an epoch's speed and re-plan; ``reserve`` is what the epoch still has to do (its
        checkpoints, a report). Returns the new total of steps, or None when the plan stands."""
        self.speed.append((steps, train_seconds, overhead))
        step_seconds, epoch_overhead = recent_speed(self.speed)
        self.step_seconds = step_seconds  # for the log
        seconds_left = self.train_end - time.perf_counter() - reserve
        return replan_budget(self.budget, done, seconds_left, step_seconds, epoch_overhead, steps_per_epoch, epoch)


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
