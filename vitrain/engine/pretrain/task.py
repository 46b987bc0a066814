"""Instance discrimination as a step backend: the backbone and the instance head, their optimizer, one step.

:class:`InstanceTask` gives :func:`~vitrain.engine.epoch.train_one_epoch` what a training
backend gives it (a step that reports its loss, accuracy and gradient, the learning rate,
the state), so pretraining runs its epochs through the same code as training. A step's
batch is a set of image indices into the decoded training images; labels are never read.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from ...checkpoint import CheckpointWriter, load_weights
from ...config import TrainConfig
from ...data import memory
from ...data.sources import DataSplits
from ...data.strong import StrongAugment
from ..backend import StepResult
from ..build import build_model
from ..compiling import CompileChoice, choose_compile
from ..distributed import Dist
from ..optim import build_optimizer, build_scheduler, replan
from ..precision import choose_precision
from ..runtime import checks_each_step, decode_workers
from .method import (
    InstanceHead,
    Pretrainer,
    backbone_features,
    images_digest,
    info_nce,
    instance_loss,
    knn_predict,
    local_crop_size,
    mix_instances,
)


class InstanceTask:
    """The pretraining model, its data in memory, and its step (see the module docstring)."""

    def __init__(self, cfg: TrainConfig, splits: DataSplits, device: torch.device, resume: bool) -> None:
        self.cfg, self.device = cfg, device
        self.model = model = build_model(cfg).to(device)
        side = memory.train_side(cfg.img_size, splits.native_size, "flip-crop", "resized")
        # the labels are ignored, except by the kNN report
        images, self.train_labels = memory.decode_all(splits.train, side, 1.0, decode_workers(cfg))
        self.digest = images_digest(images)
        self.images = images.to(device)
        self.n = len(images)
        self.head = InstanceHead(cfg.embed_dim, self.n, temperature=cfg.temperature).to(device)
        if cfg.instance_init == "features" and not resume:  # (a resumed run loads its trained head)
            model.eval()
            z = backbone_features(model, self.images, cfg.img_size, cfg.mean, cfg.std, project=self.head.embed)
            self.head.init_from_features(z)
            model.train()
        self.net = Pretrainer(model, self.head)
        scale = tuple(cfg.pretrain_crop_scale)
        self.augment = StrongAugment(cfg.img_size, cfg.mean, cfg.std, crop_scale=scale, hflip=cfg.hflip)
        self.local_size = local_crop_size(cfg)
        self.local_augment = (
            StrongAugment(self.local_size, cfg.mean, cfg.std, crop_scale=tuple(cfg.local_crop_scale), hflip=cfg.hflip)
            if cfg.local_crops
            else None
        )
        model.dynamic_img_size = bool(cfg.local_crops)
        self.batch = min(cfg.batch_size, self.n)
        self.steps_per_epoch = self.n // self.batch  # drop the ragged last batch: every step has the same shape
        self.precision = choose_precision(cfg.precision, device, model, self.batch)  # one process: never torchrun
        self.amp_dtype = self.precision.dtype
        self.check_each_step = checks_each_step(device, cfg.skip_nonfinite)
        self.generator = torch.Generator()
        self.order = torch.arange(self.n)
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: torch.optim.lr_scheduler.LambdaLR | None = None
        # only the backbone's forward/backward is compiled; the augmentation and the losses stay eager
        self.forward = model
        self.compiled = False
        self.compiling: CompileChoice | None = None  # decided in compile(), when the run's length is known

    def start(self, total_steps: int, steps_per_epoch: int) -> None:
        """The optimizer (backbone and head together) and the schedule; the compiled backbone."""
        self.optimizer = build_optimizer(self.net, self.cfg, self.device)
        self.scheduler = build_scheduler(self.optimizer, self.cfg, steps_per_epoch, total_steps)

    def compile(self, total_steps: int) -> None:
        """Compile the backbone's forward (``--compile``), once the state is loaded. ``auto`` decides as
        ``vitrain train`` does (:mod:`..compiling`): on a GPU, and on a CPU where a compiled copy of the
        backbone's step, timed once, wins its compile time back over the run's ``total_steps`` (or what
        fits its time budget), for each of the batch shapes (two with local crops)."""
        cfg = self.cfg
        shapes = 2 if self.local_augment is not None else 1
        budget = cfg.time_budget * 60 if cfg.time_budget else None
        self.compiling = choose_compile(
            cfg.compile, self.device, Dist(), self.model, self.batch, self.precision, total_steps, shapes, budget
        )
        if self.compiling.precision is not None:  # --precision auto: the other precision is faster compiled
            self.precision, self.amp_dtype = self.compiling.precision, self.compiling.precision.dtype
        if self.compiling.on:
            self.forward, self.compiled = torch.compile(self.model), True

    def start_epoch(self, epoch: int) -> None:
        """Seed the epoch (augmentation, mixing, dropout, the order of the images) from (seed, epoch)."""
        seed = self.cfg.seed * 1_000_003 + epoch
        torch.manual_seed(seed)
        self.generator.manual_seed(seed)
        self.net.train()
        self.order = torch.randperm(self.n, generator=self.generator).to(self.device)

    def batches(self, steps: int) -> Iterator[tuple[torch.Tensor, None]]:
        """The epoch's first ``steps`` batches of image indices (no labels)."""
        for i in range(steps):
            yield self.order[i * self.batch : (i + 1) * self.batch], None

    def train_step(self, index: torch.Tensor, labels: None = None) -> StepResult:
        """Augmented views of the images ``index``, mixed, through the backbone and the head; one update."""
        cfg, net = self.cfg, self.net
        loss, logits, a = self._loss(index)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        finite, grad_norm = True, torch.zeros(())
        if self.check_each_step or cfg.clip_grad > 0:  # a NaN/Inf loss or gradient shows in the gradient norm
            clip = cfg.clip_grad if cfg.clip_grad > 0 else math.inf
            grad_norm = torch.nn.utils.clip_grad_norm_(net.parameters(), clip)
            finite = not self.check_each_step or bool(torch.isfinite(grad_norm))
        if finite:
            self.optimizer.step()
        self.scheduler.step()
        correct = (logits.detach().argmax(1) == a).sum()
        return StepResult(loss.detach(), correct, grad_norm.detach(), finite, len(a))

    def _loss(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The step's loss, its instance logits and their targets."""
        cfg, head, images, generator = self.cfg, self.head, self.images, self.generator
        views = torch.stack([self.augment(images[index], generator) for _ in range(cfg.views)])
        views, perm, lam = mix_instances(views, cfg.mixup, cfg.cutmix, generator)
        small = (
            torch.cat([self.local_augment(images[index], generator) for _ in range(cfg.local_crops)])
            if self.local_augment is not None
            else None
        )
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            z = head.embed(self.forward(views.flatten(0, 1), pre_logits=True))
            logits = head(z)
            a = index.repeat(cfg.views)
            b = index[perm].repeat(cfg.views) if perm is not None else None
            loss = instance_loss(logits, a, b, lam, cfg.instance_smoothing)
            if small is not None:  # the mean over all views: global views weigh `views`, local ones theirs
                local_logits = head(head.embed(self.forward(small, pre_logits=True)))
                local_a = index.repeat(cfg.local_crops)
                local_loss = instance_loss(local_logits, local_a, smoothing=cfg.instance_smoothing)
                loss = (cfg.views * loss + cfg.local_crops * local_loss) / (cfg.views + cfg.local_crops)
                logits, a = torch.cat([logits, local_logits]), torch.cat([a, local_a])
            if cfg.infonce > 0:  # between the first two global views
                z_views = z.view(cfg.views, len(index), -1)
                loss = loss + cfg.infonce * info_nce(z_views[0], z_views[1], cfg.temperature)
        return loss, logits, a

    def knn_report(self, splits: DataSplits) -> Callable[[], float]:
        """A function giving the validation split's kNN accuracy on the backbone's features now."""
        cfg, device, model = self.cfg, self.device, self.model
        val_images, val_labels = memory.decode_all(splits.val, cfg.img_size, 1.0, decode_workers(cfg))
        val_images, val_labels = val_images.to(device), val_labels.to(device)
        train_labels = self.train_labels.to(device)

        def knn_accuracy() -> float:
            """The validation split's kNN accuracy now (eval mode: no random numbers are drawn)."""
            model.eval()
            with torch.autocast(device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
                bank = backbone_features(model, self.images, cfg.img_size, cfg.mean, cfg.std)
                queries = backbone_features(model, val_images, cfg.img_size, cfg.mean, cfg.std)
            model.train()
            return float((knn_predict(bank, train_labels, queries, len(cfg.classes)) == val_labels).float().mean())

        return knn_accuracy

    def lr(self) -> float:
        """The current learning rate."""
        return self.optimizer.param_groups[0]["lr"]

    def replan(self, total_steps: int, step: int | None = None) -> None:
        """A new length for the schedule."""
        if step is not None:
            self.scheduler.last_epoch = step
        replan(self.scheduler, total_steps)

    def state_dict(self) -> dict[str, Any]:
        """Backbone and head, optimizer, schedule, under the state file's keys."""
        return {
            "net": self.net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any], source: str) -> None:
        """Continue from a state file's entries."""
        load_weights(self.net, state["net"], source)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])

    def save_weights(self, files: CheckpointWriter, path: Path, epoch: int) -> None:
        """The backbone as a vitrain checkpoint (its head untrained), saying how it was pretrained."""
        pretraining = {"method": "instance-discrimination", "images": self.n, "epoch": epoch}
        files.save_model(path, self.model, epoch=epoch, backbone_only=True, pretraining=pretraining)
