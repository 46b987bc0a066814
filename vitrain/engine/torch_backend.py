"""The PyTorch backend: the model, its optimizer and schedule, and the training step.

It implements :class:`~vitrain.engine.backend.Backend` for :func:`~vitrain.engine.train.train`:
cross entropy (label smoothing, ``--class-weights``), MixUp/CutMix on whole batches
(torchvision v2), gradient clipping, an EMA of the weights (``torch.optim.swa_utils``),
DistributedDataParallel under torchrun, ``torch.compile`` and bf16 autocast where the
runtime policy (:mod:`~vitrain.engine.runtime`) turns them on.
"""

from __future__ import annotations

import copy
import math
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel
from torchvision.transforms import v2

from ..checkpoint import CheckpointWriter, load_weights
from ..config import TrainConfig
from ..data.sources import DataSplits
from ..models.pretrained import Pretrained
from . import distributed
from .backend import Speed, StepResult
from .build import build_model
from .compiling import CompileChoice, choose_compile
from .distributed import Dist
from .evaluate import EvalResult, evaluate
from .finetune import train_mode
from .optim import build_optimizer, build_scheduler, ema_update, replan
from .precision import Precision, choose_precision
from .runtime import checks_each_step, writes_behind


def class_weights(cfg: TrainConfig, splits: DataSplits, device: torch.device) -> torch.Tensor | None:
    """The loss weight of each class for ``--class-weights balanced`` (scikit-learn's "balanced":
    training images / (classes x the class's images)), else None."""
    if cfg.class_weights != "balanced":
        return None
    from sklearn.utils.class_weight import compute_class_weight

    targets = np.asarray(splits.train.targets)
    weights = compute_class_weight("balanced", classes=np.arange(len(cfg.classes)), y=targets)
    return torch.tensor(weights, dtype=torch.float32, device=device)


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


def decided_by_rank_0(setting: str, device: torch.device, place: Dist, choose: Callable[[], Any]) -> Any:
    """``choose()``; where ``auto`` times the model on a CPU under torchrun, rank 0 does and tells the others,
    so every rank runs alike."""
    if place.active and device.type == "cpu" and setting == "auto":
        return distributed.broadcast(choose() if place.main else None, place)
    return choose()


def run_precision(setting: str, device: torch.device, place: Dist, model: torch.nn.Module, batch: int) -> Precision:
    """``--precision`` for this run (see :func:`decided_by_rank_0`)."""
    return decided_by_rank_0(setting, device, place, lambda: choose_precision(setting, device, model, batch))


def run_compile(
    cfg: TrainConfig,
    device: torch.device,
    place: Dist,
    model: torch.nn.Module,
    precision: Precision,
    total_steps: int,
) -> CompileChoice:
    """``--compile`` for this run (see :func:`decided_by_rank_0`)."""
    budget = cfg.time_budget * 60 if cfg.time_budget else None
    return decided_by_rank_0(
        cfg.compile,
        device,
        place,
        lambda: choose_compile(
            cfg.compile, device, place, model, cfg.batch_size, precision, total_steps, shapes=2, max_seconds=budget
        ),
    )


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of an epoch's randomness (shuffling, augmentation, dropout): it depends only on
    (seed, epoch), so a run resumed after epoch k repeats epochs k+1... exactly."""
    return (seed * 1_000_003 + epoch * 7_919) % (2**63)


class TorchBackend:
    """A ViT trained with PyTorch, as ``cfg`` says (see the module docstring)."""

    saves_inside = True  # --save-every and SIGTERM commit inside an epoch

    def __init__(
        self,
        cfg: TrainConfig,
        splits: DataSplits,
        device: torch.device,
        place: Dist,
        pretrained: Pretrained | None = None,
    ) -> None:
        self.cfg, self.device, self.place = cfg, device, place
        self.model = build_model(cfg, pretrained, splits).to(device)
        self.precision = run_precision(cfg.precision, device, place, self.model, cfg.batch_size)
        self.amp_dtype = self.precision.dtype
        self.num_classes = len(cfg.classes)
        self.loss_weight = class_weights(cfg, splits, device)
        self.batch_mix = build_batch_mix(cfg, self.num_classes)
        self.check_each_step = checks_each_step(device, cfg.skip_nonfinite)
        self.compiling: CompileChoice | None = None  # decided in start(), when the run's length is known
        self.compiled = self.graphs = False
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: torch.optim.lr_scheduler.LambdaLR | None = None
        self.ema: AveragedModel | None = None
        self.eval_model: torch.nn.Module = self.model  # what is validated and checkpointed
        self.step_model: torch.nn.Module = self.model  # what the step calls

    # ---------------------------------------------------------------- the run

    @property
    def description(self) -> str:
        """How the steps compute, for the log: ``on cpu (bf16 autocast), torch.compile``."""
        return (
            f"on {self.device}"
            + (" (bf16 autocast)" if self.amp_dtype else "")
            + (", torch.compile" if self.compiled else "")
            + (" with CUDA graphs" if self.graphs else "")
            + (f", EMA {self.cfg.ema:g}" if self.cfg.ema else "")
        )

    def start(self, total_steps: int, steps_per_epoch: int) -> None:
        """Decide ``--compile``; build the optimizer, the schedule and the EMA; wrap the model for the step."""
        cfg, model = self.cfg, self.model
        self.compiling = run_compile(cfg, self.device, self.place, model, self.precision, total_steps)
        self.compiled, self.graphs = self.compiling.on, self.compiling.graphs
        if self.compiling.precision is not None:  # --precision auto: the other precision is faster compiled
            self.precision, self.amp_dtype = self.compiling.precision, self.compiling.precision.dtype
        self.optimizer = build_optimizer(model, cfg, self.device)
        self.scheduler = build_scheduler(self.optimizer, cfg, steps_per_epoch, total_steps)
        if cfg.ema:
            self.ema = AveragedModel(model, multi_avg_fn=ema_update(cfg.ema), use_buffers=True)
            self.eval_model = self.ema.module
        if self.place.active:  # DistributedDataParallel averages gradients over the ranks during backward
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.step_model = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
        if self.compiled:  # only the training forward/backward is compiled; checkpoints hold the plain weights
            mode = "reduce-overhead" if self.graphs else None
            # on a CPU each epoch's short last batch gets a graph of its own, as the cost estimate assumed
            self.step_model = torch.compile(
                self.step_model, mode=mode, dynamic=False if self.device.type == "cpu" else None
            )

    def start_epoch(self, epoch: int) -> None:
        """Seed dropout and mixing from (seed, epoch), per rank; enter training mode."""
        torch.manual_seed(epoch_seed(self.cfg.seed, epoch) + self.place.rank)
        train_mode(self.model)

    def random_state(self) -> dict[str, torch.Tensor]:
        """This process's random stream as it stands inside an epoch (dropout, drop-path, MixUp/CutMix)."""
        found = {"cpu": torch.get_rng_state()}
        if self.device.type == "cuda":
            found["cuda"] = torch.cuda.get_rng_state(self.device)
        return found

    def load_random_state(self, saved: dict[str, torch.Tensor]) -> None:
        """Continue the random stream saved by :meth:`random_state` (after :meth:`start_epoch`)."""
        torch.set_rng_state(saved["cpu"])
        if "cuda" in saved and self.device.type == "cuda":
            torch.cuda.set_rng_state(saved["cuda"], self.device)

    def train_step(self, images: torch.Tensor, labels: torch.Tensor) -> StepResult:
        """Forward, backward, clip, and (when the gradient is finite, or not checked at once) update."""
        if self.graphs:  # the previous step's graph outputs are no longer used
            torch.compiler.cudagraph_mark_step_begin()
        images = images.to(self.device, non_blocking=True)
        labels = labels.to(self.device, non_blocking=True)
        targets = labels
        if self.batch_mix is not None:
            images, targets = self.batch_mix(images, labels)
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            logits = self.step_model(images)
            loss = F.cross_entropy(logits, targets, weight=self.loss_weight, label_smoothing=self.cfg.label_smoothing)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        # the norm of the whole gradient (after DDP's all-reduce: the same on every rank), clipped
        # when --clip-grad asks; a NaN/Inf anywhere in the loss or gradient shows in it
        clip = self.cfg.clip_grad if self.cfg.clip_grad > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        finite: Any = torch.isfinite(grad_norm)  # on a GPU the flag stays there until the epoch ends
        if self.check_each_step:
            finite = bool(finite)
            if not finite:  # the batch is skipped: no update
                self.optimizer.zero_grad(set_to_none=True)
                self.scheduler.step()
                return StepResult(loss.detach(), None, grad_norm, False, labels.shape[0])
        self.optimizer.step()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        correct = (logits.detach().argmax(1) == labels).sum()
        return StepResult(loss.detach().float(), correct, grad_norm.detach(), finite, labels.shape[0])

    def evaluate(self, batches: Iterable) -> EvalResult:
        """The evaluated model over ``batches`` (this rank's shard under torchrun; metrics of the whole split)."""
        return evaluate(self.eval_model, batches, self.device, self.num_classes, self.amp_dtype, self.place)

    def lr(self) -> float:
        """The current learning rate (of the first parameter group)."""
        return self.optimizer.param_groups[0]["lr"]

    def replan(self, total_steps: int, step: int | None = None) -> None:
        """A new length for the schedule; with ``step``, it continues from that step."""
        if step is not None:
            self.scheduler.last_epoch = step
        replan(self.scheduler, total_steps)

    # ---------------------------------------------------------------- the planner's probe

    def measure(self, loaders: dict[str, Any], seconds: float) -> Speed:
        """Time steps of a throwaway copy (the first two pay one-time costs and are not counted, at
        most 200), three validation batches, and writing a checkpoint and a state once."""
        probe = train_mode(copy.deepcopy(self.model))
        optimizer = build_optimizer(probe, self.cfg, self.device)
        amp = {"dtype": self.amp_dtype, "enabled": self.amp_dtype is not None}
        steps, timed, t0 = 0, 0.0, 0.0
        for images, labels in forever(loaders["train"]):
            images, labels = images.to(self.device), labels.to(self.device)
            with torch.autocast(self.device.type, **amp):
                loss = F.cross_entropy(probe(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            float(loss.detach())  # wait for the device
            steps += 1
            if steps == 2:
                t0 = time.perf_counter()
            elif steps > 2:
                timed = time.perf_counter() - t0
                if timed >= seconds or steps >= 200:
                    break
        t0 = time.perf_counter()
        evaluate(probe, first_batches(loaders["val"], 3), self.device, self.num_classes, self.amp_dtype)
        val_batch = (time.perf_counter() - t0) / min(3, len(loaders["val"]))
        with tempfile.TemporaryDirectory() as tmp:  # what training waits for
            with CheckpointWriter(background=writes_behind(self.device)) as files:
                t0 = time.perf_counter()
                files.save_model(Path(tmp) / "m.safetensors", probe)
                state = {"model": probe.state_dict(), "optimizer": optimizer.state_dict()}
                files.save_state(Path(tmp) / "s.safetensors", state)
                checkpoint = time.perf_counter() - t0
        return Speed(step=timed / (steps - 2), val_batch=val_batch, checkpoint=checkpoint)

    # ---------------------------------------------------------------- files

    def state_dict(self) -> dict[str, Any]:
        """Model, optimizer, schedule and EMA, under the state file's keys."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            **({"ema": self.ema.state_dict()} if self.ema is not None else {}),
        }

    def load_state_dict(self, state: dict[str, Any], source: str) -> None:
        """Continue from a state file's entries."""
        load_weights(self.model, state["model"], source)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])

    def save_weights(self, files: CheckpointWriter, path: Path, epoch: int) -> None:
        """The evaluated model as a self-describing checkpoint."""
        files.save_model(path, self.eval_model, epoch=epoch)

    def epoch_scalars(self) -> dict[str, float]:
        """The evaluated model's parameter norm."""
        norm = torch.sqrt(sum((p.detach().float() ** 2).sum() for p in self.eval_model.parameters()))
        return {"param_norm": float(norm)}


def forever(loader):
    """The loader's batches, epoch after epoch."""
    while True:
        yield from loader


def first_batches(loader, n: int):
    """The loader's first ``n`` batches."""
    for i, batch in enumerate(loader):
        if i == n:
            return
        yield batch
