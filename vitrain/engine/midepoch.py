"""Saving inside an epoch: when (``--save-every``, a SIGTERM) and what such a save holds.

An epoch's end is the usual commit point of a run (:mod:`.state`). On a large dataset an
epoch is hours of work, and schedulers and spot machines announce a stop with a SIGTERM a
little before they kill, so a run can also commit inside an epoch: every ``--save-every``
minutes or steps, and at the first step boundary after a SIGTERM, after which it stops.

Such a save is the epoch-end state plus ``partial``: the epoch and the steps done in it,
and, for every process, what the rest of the epoch depends on: its random stream (dropout,
MixUp), the state of the in-memory loader's augmentation stream, and its running sums of
the epoch's loss and accuracy. ``--resume`` re-seeds the epoch's order as for the whole
epoch, starts the loader at the next batch and restores the rest, so the run ends as one
never stopped (bit for bit on a CPU).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from ..checkpoint import CheckpointError
from ..config.checks import parse_save_every
from . import distributed
from .distributed import Dist


class StopRequested(KeyboardInterrupt):
    """A SIGTERM stopped training at a step boundary, after its state was saved; the message says where."""


_stop = {"listening": False, "requested": False}


def request_stop() -> bool:
    """Ask a running epoch to save and stop at its next step (a SIGTERM handler calls this).

    True when an epoch listens and will stop; False when none does, or a stop was already
    asked for (a second SIGTERM): the caller then stops at once, as before.
    """
    if not _stop["listening"] or _stop["requested"]:
        return False
    _stop["requested"] = True
    return True


@dataclass
class EpochSums:
    """The running sums of an epoch's training metrics, on this process (device-side values)."""

    loss: Any = 0
    correct: Any = 0
    grad: Any = 0
    seen: int = 0
    applied: int = 0  # steps whose update was applied
    deferred: list[Any] = field(default_factory=list)  # device-side finite flags, read once the epoch ends

    def to_state(self) -> dict[str, Any]:
        """Plain values and CPU tensors (the device-side sums are read as they are, bit for bit)."""

        def plain(value: Any) -> Any:
            return value.detach().cpu().clone() if isinstance(value, torch.Tensor) else value

        flags = torch.stack([torch.as_tensor(f).cpu() for f in self.deferred]) if self.deferred else None
        return {
            "loss": plain(self.loss),
            "correct": plain(self.correct),
            "grad": plain(self.grad),
            "seen": self.seen,
            "applied": self.applied,
            "deferred": flags,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any], device: torch.device) -> "EpochSums":
        def back(value: Any) -> Any:
            return value.to(device) if isinstance(value, torch.Tensor) else value

        flags = state.get("deferred")
        return cls(
            loss=back(state["loss"]),
            correct=back(state["correct"]),
            grad=back(state["grad"]),
            seen=int(state["seen"]),
            applied=int(state["applied"]),
            deferred=[] if flags is None else list(flags.to(device).unbind()),
        )


class MidEpochSaves:
    """When to commit inside an epoch, agreed by every process, and the commit itself.

    ``commit(partial)`` writes the run's state with a ``partial`` entry (rank 0 only);
    ``backend`` gives and takes this process's random stream. Under torchrun the flags of
    all processes are combined in one all-reduce at a poll (every step on a CPU; on GPUs
    every 8th step and at ``--save-every``'s steps, to keep the device busy).
    """

    def __init__(
        self, every: str | None, place: Dist, device: torch.device, backend: Any, commit: Callable, log=print
    ) -> None:
        self.minutes, self.steps = parse_save_every(every)
        self.place, self.device, self.backend, self.commit, self.log = place, device, backend, commit, log
        self.poll_every = 1 if device.type == "cpu" or not place.active else 8
        self.last_save = time.monotonic()

    def listen(self, on: bool) -> None:
        """Whether a SIGTERM now asks the epoch to save and stop (only while its steps run). An epoch
        starts right after the last commit, so ``--save-every`` minutes count from there."""
        _stop["listening"] = on
        if on:
            self.last_save = time.monotonic()
        else:
            _stop["requested"] = False

    def poll(self, step: int, past_deadline: bool, where: str) -> tuple[bool, bool, bool]:
        """(the deadline has passed, save now, stop now) after global ``step``; the same on every process."""
        by_steps = bool(self.steps) and step % self.steps == 0
        if step % self.poll_every and not by_steps:
            return False, False, False
        by_time = self.minutes is not None and time.monotonic() - self.last_save >= self.minutes * 60
        flags = [past_deadline, by_steps or by_time, _stop["requested"]]
        if self.place.active:
            with distributed.waiting_in(where, self.place):
                flags = distributed.any_ranks(flags, self.place, self.device)
        return flags[0], flags[1] or flags[2], flags[2]

    def save(self, epoch: int, position: int, sums: EpochSums, loader: Any) -> None:
        """Commit the run at step ``position`` of ``epoch`` (every process takes part; rank 0 writes)."""
        t0 = time.perf_counter()
        mine = {"random": self.backend.random_state(), "sums": sums.to_state(), **loader_state(loader)}
        with distributed.waiting_in(f"the save at step {position} of epoch {epoch}", self.place):
            ranks = distributed.gather_objects(mine, self.place)
        if self.place.main:
            self.commit({"epoch": epoch, "step": position, "world": self.place.world, "ranks": ranks})
        self.last_save = time.monotonic()
        self.log(f"saved the run at step {position} of epoch {epoch} ({time.perf_counter() - t0:.2f}s)")

    def stop(self, epoch: int, position: int) -> StopRequested:
        """What a SIGTERM ends with, once the state is saved (the epoch stops listening as it ends)."""
        return StopRequested(f"stopped by SIGTERM at step {position} of epoch {epoch}, which is saved")


def loader_state(loader: Any) -> dict[str, Any]:
    """What a training loader needs to repeat the rest of an epoch: the in-memory loader's augmentation
    stream (the file pipeline's augmentations are seeded per sample: nothing to save)."""
    return {"augment": loader.augment_state()} if hasattr(loader, "augment_state") else {}


def resume_loader(loader: Any, batch: int, saved: dict[str, Any]) -> None:
    """Make the loader's next epoch start at ``batch``, as saved by :func:`loader_state`."""
    if hasattr(loader, "resume_epoch"):
        loader.resume_epoch(batch, saved["augment"])
    elif loader.batch_sampler is not None:
        loader.batch_sampler.start = batch
    else:  # streamed shards: the stream skips the batches done
        loader.dataset.start = batch


def resume_epoch(partial: dict[str, Any], loader: Any, backend: Any, place: Dist, device: torch.device):
    """Continue the epoch saved in ``partial`` on this process, once the epoch's order is re-seeded and
    :meth:`start_epoch` has run: the loader starts at the next batch and the random stream goes on where
    it stood. Returns (steps already done in the epoch, their sums) for ``train_one_epoch``."""
    mine = partial["ranks"][place.rank]
    resume_loader(loader, partial["step"], mine)
    backend.load_random_state(mine["random"])
    return partial["step"], EpochSums.from_state(mine["sums"], device)


def check_partial(partial: dict[str, Any] | None, place: Dist, out: Any) -> None:
    """Refuse to continue, with another number of processes, an epoch that was saved inside."""
    if partial is not None and partial["world"] != place.world:
        raise CheckpointError(
            f"--resume {out}: the run was saved at step {partial['step']} of epoch {partial['epoch']} by "
            f"{partial['world']} process(es); continue it with {partial['world']} (a run changes its number of "
            "processes only at the end of an epoch)"
        )
