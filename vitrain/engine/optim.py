"""Optimizers and per-step learning-rate schedules, from ``torch.optim``."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.optim import lr_scheduler

from ..config import TrainConfig


def layer_id(name: str, depth: int) -> int:
    """0 for the embeddings, i + 1 for block i, depth + 1 for the final norm and the head(s)."""
    if name.startswith(("patch_embed.", "cls_token", "dist_token", "pos_embed")):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return depth + 1


def param_groups(
    model: nn.Module,
    weight_decay: float,
    lr: float | None = None,
    layer_decay: float = 1.0,
    head_lr: float | None = None,
) -> list[dict]:
    """Parameter groups: weight decay only on matrices and kernels (ndim >= 2), never biases,
    norms or position embeddings; frozen parameters left out.

    With ``layer_decay`` < 1 each block gets ``lr * layer_decay ** (depth + 1 - layer)`` (BEiT's
    layer-wise decay: early layers move least); ``head_lr`` sets the head's own rate.
    Groups with weight decay come first.
    """
    skip = set(getattr(model, "no_weight_decay", lambda: set())())
    depth = len(getattr(model, "blocks", []))
    per_group_lr = lr is not None and (layer_decay < 1 or head_lr is not None)
    groups: dict[tuple, dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        decay = param.ndim >= 2 and name not in skip
        head = head_lr is not None and name.startswith(("head.", "head_dist."))
        layer = layer_id(name, depth) if layer_decay < 1 else depth + 1
        group = groups.setdefault((decay, head, layer), {"params": [], "weight_decay": weight_decay if decay else 0.0})
        if per_group_lr:
            group["lr"] = head_lr if head else lr * layer_decay ** (depth + 1 - layer)
        group["params"].append(param)
    if not groups:
        raise ValueError("no trainable parameters (everything is frozen)")
    return [groups[k] for k in sorted(groups, key=lambda k: (not k[0], k[1], k[2]))]


FUSED_DEVICES = ("cpu", "cuda")  # where torch.optim's fused Adam kernels run


def build_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """AdamW, Adam (both fused: one kernel over all parameters) or SGD with momentum, over :func:`param_groups`.

    The fused kernels run on CPUs too, several times as fast as the per-parameter loop,
    which counts for small models whose steps take milliseconds.
    """
    groups = param_groups(model, cfg.weight_decay, cfg.lr, cfg.layer_decay, cfg.head_lr)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    kind = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.AdamW
    return kind(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, fused=device.type in FUSED_DEVICES)


@dataclass
class Schedule:
    """The learning-rate factor at an optimizer step, in closed form (the ``lr_lambda`` of a ``LambdaLR``).

    Epoch-denominated settings (warmup, step size) are converted to steps in proportion to
    ``total / epochs``, so a run planned shorter or longer than ``--epochs`` keeps the
    schedule's shape. ``total`` may change while training (a time budget re-plans it); the
    scheduler's state dict carries these fields, so a resumed run continues the same curve.
    """

    kind: str
    total: int
    epochs: float  # --epochs: the configured length that epoch-denominated settings refer to
    warmup_epochs: float = 0.0
    step_size: float = 10.0
    gamma: float = 0.1
    milestones: list = field(default_factory=list)
    min_ratio: float = 0.0  # min_lr / lr

    def epoch_steps(self) -> float:
        """Steps that one configured epoch maps to in a run of ``total`` steps."""
        return self.total / self.epochs

    def warmup_steps(self) -> int:
        return max(0, min(int(round(self.warmup_epochs * self.epoch_steps())), self.total - 1))

    def __call__(self, step: int) -> float:
        warmup = self.warmup_steps()
        if step < warmup:  # linear from 1/1000 of the rate to all of it
            return 1e-3 + (1 - 1e-3) * step / warmup
        done, rest = step - warmup, max(self.total - warmup, 1)
        if self.kind == "cosine":
            progress = min(done, rest) / rest
            return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
        if self.kind == "step":
            return self.gamma ** (done // max(1, int(round(self.step_size * self.epoch_steps()))))
        if self.kind == "multistep":
            # milestones are fractions of the whole run, counted after the warmup like every schedule
            passed = sum(done >= max(1, int(round(m * self.total)) - warmup) for m in self.milestones)
            return self.gamma**passed
        return 1.0


def schedule_for(cfg: TrainConfig, total_steps: int) -> Schedule:
    """The learning-rate factor of ``cfg``'s schedule over ``total_steps`` steps (shared by every backend)."""
    return Schedule(
        cfg.schedule,
        total_steps,
        cfg.epochs,
        cfg.warmup_epochs,
        cfg.step_size,
        cfg.gamma,
        list(cfg.milestones),
        cfg.min_lr / cfg.lr,
    )


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int, total_steps: int | None = None
) -> lr_scheduler.LambdaLR:
    """A schedule stepped once per optimizer step, over ``total_steps`` (default ``cfg.epochs * steps_per_epoch``).

    * ``cosine``: cosine decay from ``lr`` to ``min_lr``;
    * ``step``: multiply by ``gamma`` every ``step_size`` epochs;
    * ``multistep``: multiply by ``gamma`` at each fraction of training in ``milestones``;
    * ``constant``.

    ``warmup_epochs`` > 0 prepends a linear warmup from ``lr / 1000`` for any of them. The
    length can be changed later with :func:`replan`.
    """
    schedule = schedule_for(cfg, total_steps or cfg.epochs * steps_per_epoch)
    return lr_scheduler.LambdaLR(optimizer, schedule)


def replan(scheduler: lr_scheduler.LambdaLR, total_steps: int) -> None:
    """Give a running schedule a new length; the next step follows the re-scaled curve."""
    for schedule in scheduler.lr_lambdas:
        schedule.total = total_steps
    # LambdaLR sets a group's rate when it steps: the rate of the next step is set here, from the new curve
    for group, base, schedule in zip(scheduler.optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
        group["lr"] = base * schedule(scheduler.last_epoch)
    scheduler._last_lr = [group["lr"] for group in scheduler.optimizer.param_groups]


EMA_WARMUP = 10  # after n updates the EMA decays by at most (1 + n) / (EMA_WARMUP + n)


def ema_decay(decay: float, updates: torch.Tensor | int) -> torch.Tensor | float:
    """``--ema``'s decay after ``updates`` updates: ``min(decay, (1 + n) / (10 + n))``. The warmup lets the
    average follow the weights while they move fast: without it, after 1,000 updates of a 0.999
    decay the random initialization still holds 37% of the average, which ruins short runs (their
    validation stayed at chance for 100 epochs of a small folder). TensorFlow's and timm's EMAs warm
    up the same way."""
    if isinstance(updates, torch.Tensor):
        return torch.clamp((1 + updates) / (EMA_WARMUP + updates), max=decay)
    return min(decay, (1 + updates) / (EMA_WARMUP + updates))


def ema_update(decay: float):
    """A ``multi_avg_fn`` for ``torch.optim.swa_utils.AveragedModel``: the EMA with :func:`ema_decay`'s
    warmup, computed on the device (no host synchronization)."""

    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], n_averaged: torch.Tensor) -> None:
        d = ema_decay(decay, n_averaged.to(averaged[0].device, torch.float32))
        if torch.is_floating_point(averaged[0]):
            torch._foreach_lerp_(averaged, current, (1 - d).to(averaged[0].dtype))
        else:  # integer buffers (BatchNorm's batch counts)
            for a, c in zip(averaged, current):
                a.copy_(a * d + c * (1 - d))

    return update
