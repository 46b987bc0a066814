"""The seam between the training loop and a framework: what a backend implements.

:func:`vitrain.engine.train.train` runs the same loop, time-budget planner, run folder,
checkpoints and report whatever computes the steps. It asks a backend, built once the
data has loaded, for the few things that depend on the framework: a training step,
evaluation, the learning rate, a speed probe for the planner, and its state to and from
the state file. Batches arrive as they leave vitrain's loaders (CPU tensors: uint8 or
float images, int64 labels); a backend moves them where it computes.

:class:`~vitrain.engine.torch_backend.TorchBackend` is the PyTorch implementation. A new
backend implements :class:`Backend` and writes the checkpoints in the PyTorch model's
tensor names and layouts, so that eval, predict, export and ``--pretrained`` work on its
runs unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Protocol

from ..checkpoint import CheckpointWriter
from .compiling import CompileChoice
from .evaluate import EvalResult
from .precision import Precision


@dataclass
class StepResult:
    """What one training step reports, as values that may stay on the device until the epoch ends.

    ``loss``, ``correct`` and ``grad_norm`` are scalars (``loss`` the batch's mean, ``correct``
    the count of right top-1 answers, ``grad_norm`` the whole gradient's norm before clipping)
    supporting ``+`` and ``float()``. ``finite`` is True or False when the step checked its
    gradient at once (False: the batch was skipped, no update was applied), or a device-side
    flag to be read when the epoch ends.
    """

    loss: Any
    correct: Any
    grad_norm: Any
    finite: Any
    images: int


@dataclass
class Speed:
    """What the time-budget planner's probe measured (seconds)."""

    step: float  # one training step
    val_batch: float  # one validation batch
    checkpoint: float  # writing the weights and the state once


class Backend(Protocol):
    """The framework side of a training run (see the module docstring)."""

    description: str  # how it computes, for the log: "on cpu (bf16 autocast)"
    model: Any  # the PyTorch model (another backend: the one its checkpoints are written from)
    amp_dtype: Any  # what the final evaluation of best.safetensors autocasts to (None: float32)
    precision: Precision  # what the steps compute in, and why (--precision)
    compiled: bool  # whether its first epoch also compiles (the planner ignores that epoch's speed)
    compiling: CompileChoice | None  # --compile's decision and why, once start() made it (None: not torch.compile)
    saves_inside: bool  # whether it saves inside an epoch (--save-every, SIGTERM): random_state/load_random_state

    def start(self, total_steps: int, steps_per_epoch: int) -> None:
        """Build the optimizer and the schedule for a run of ``total_steps`` steps."""

    def start_epoch(self, epoch: int) -> None:
        """Seed the epoch's randomness (dropout, mixing) from ``--seed`` and the epoch; enter training mode."""

    def train_step(self, images: Any, labels: Any) -> StepResult:
        """One optimizer step on a batch; when the gradient is checked at once and is not finite, no
        update (the schedule still advances) and ``finite`` is False."""

    def evaluate(self, batches: Iterable) -> EvalResult:
        """The evaluated model (the EMA weights, with ``--ema``) over ``batches``, in order."""

    def lr(self) -> float:
        """The current learning rate."""

    def replan(self, total_steps: int, step: int | None = None) -> None:
        """Stretch or shrink the schedule to ``total_steps`` (continuing from ``step`` when given)."""

    def measure(self, loaders: dict[str, Any], seconds: float) -> Speed:
        """Time training steps for about ``seconds`` on a throwaway copy, a few validation batches, and a checkpoint."""

    def state_dict(self) -> dict[str, Any]:
        """The tensors and values to resume from (model, optimizer, schedule, EMA)."""

    def load_state_dict(self, state: dict[str, Any], source: str) -> None:
        """Continue from :meth:`state_dict` as saved in ``source``."""

    def save_weights(self, files: CheckpointWriter, path: Path, epoch: int) -> None:
        """Write the evaluated model as a self-describing vitrain checkpoint."""

    def epoch_scalars(self) -> dict[str, float]:
        """Extra TensorBoard scalars after an epoch (the parameter norm)."""
