"""The resumable state of a run: what every epoch commits to ``state.safetensors`` and ``--resume`` reads back.

``train`` and ``pretrain`` share the bookkeeping (:class:`Progress`: the epoch, the step,
the history, the skipped batches, the time budget) and the file; each adds the tensors of
its own task (a backend's model, optimizer and schedule; pretraining's backbone and
instance head). The keys are those of the files earlier versions wrote, so their runs
still resume.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..checkpoint import CheckpointError, CheckpointWriter, load_state
from ..data.sources import DataSplits

STATE_FILE = "state.safetensors"  # the commit point of an epoch, and what --resume needs


@dataclass
class Progress:
    """How far a run has come: everything but the tensors that an epoch commits."""

    epoch: int = 0  # the last completed epoch
    step: int = 0  # optimizer steps so far (skipped batches included)
    history: list[dict[str, Any]] = field(default_factory=list)  # one row per epoch: metrics.csv
    skipped_batches: list[dict[str, Any]] = field(default_factory=list)  # non-finite ones (--skip-nonfinite)
    budget: dict[str, Any] | None = None  # the time budget's plan, re-plans included
    train_seconds: float = 0.0
    best: dict[str, Any] = field(default_factory=dict)  # the best validation epoch (training only)

    def to_state(self) -> dict[str, Any]:
        """The state-file entries of this progress."""
        return {
            "epoch": self.epoch,
            "step": self.step,
            "history": self.history,
            "skipped_batches": self.skipped_batches,
            "budget": self.budget,
            "train_seconds": self.train_seconds,
            **({"best": self.best} if self.best else {}),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "Progress":
        """The progress saved in ``state`` (files of older versions lack some keys)."""
        return cls(
            epoch=state["epoch"],
            step=state["step"],
            history=state["history"],
            skipped_batches=state.get("skipped_batches", []),
            budget=state.get("budget"),
            train_seconds=state.get("train_seconds", 0.0),
            best=state.get("best", {}),
        )


def new_best(higher_is_better: bool) -> dict[str, Any]:
    """The best epoch before any: every validation result improves on it."""
    return {
        "epoch": 0,
        "value": -math.inf if higher_is_better else math.inf,
        "val_accuracy": 0.0,
        "val_balanced_accuracy": 0.0,
        "val_loss": math.inf,
    }


def update_best(progress: Progress, metric: str, val: Any, epoch: int) -> bool:
    """Make ``epoch`` the best when its ``--best-metric`` (accuracy, balanced-accuracy, loss) improved."""
    value = {"accuracy": val.accuracy, "balanced-accuracy": val.balanced_accuracy, "loss": val.loss}[metric]
    best = progress.best
    improved = value < best["value"] if metric == "loss" else value > best["value"]
    if improved:
        progress.best = {
            "epoch": epoch,
            "value": value,
            "val_accuracy": val.accuracy,
            "val_balanced_accuracy": val.balanced_accuracy,
            "val_loss": val.loss,
        }
    return improved


def read_state(out: Path) -> dict[str, Any]:
    """The state file of the run in ``out``."""
    return load_state(out / STATE_FILE)


def save_state(files: CheckpointWriter, out: Path, progress: Progress, **entries: Any) -> None:
    """Commit an epoch: ``progress`` and the task's own ``entries`` (tensors and plain values)."""
    files.save_state(out / STATE_FILE, {**entries, **progress.to_state()})


def data_fingerprint(splits: DataSplits, classes: list[str], digest: str) -> dict[str, Any]:
    """What a training state records about its data, so that resuming on other data is refused."""
    return {"classes": list(classes), "split_digest": digest, "split_sizes": splits.sizes()}


def check_same_data(state: dict[str, Any], out: Path, data: str, classes: list[str], splits: DataSplits, digest: str):
    """Refuse to resume a training run whose classes or images changed since it started."""
    if state["classes"] != classes:
        raise CheckpointError(f"--resume {out}: the data's classes changed since the run started")
    if state.get("split_digest", digest) == digest:  # runs saved before the digest existed are not checked
        return
    parts = list(splits.sizes())
    then = "/".join(str(state["split_sizes"].get(k, 0)) for k in parts)
    now = "/".join(str(splits.sizes()[k]) for k in parts)
    changed = (
        f"{'/'.join(parts)} images: {then} then, {now} now"
        if then != now
        else f"as many images, {now}, but other files or labels"
    )
    raise CheckpointError(
        f"--resume {out}: the images of --data {data} changed since the run started ({changed}): the splits "
        "would differ, and images the run trained on could land in its test split; restore the data as it "
        "was, or start again with --overwrite"
    )
