"""Optimizers and per-step learning-rate schedules, from ``torch.optim``."""

from __future__ import annotations

import torch
from torch import nn
from torch.optim import lr_scheduler

from ..config import TrainConfig


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay only matrices and kernels (ndim >= 2), never biases, norms or position embeddings."""
    skip = set(getattr(model, "no_weight_decay", lambda: set())())
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (decay if param.ndim >= 2 and name not in skip else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """AdamW (fused on CUDA) or SGD with momentum."""
    groups = param_groups(model, cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps,
                             fused=device.type == "cuda")


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int,
                    total_steps: int | None = None) -> lr_scheduler.LRScheduler:
    """A schedule stepped once per optimizer step, over ``total_steps`` (default ``cfg.epochs * steps_per_epoch``).

    * ``cosine``: cosine decay from ``lr`` to ``min_lr``;
    * ``step``: multiply by ``gamma`` every ``step_size`` epochs;
    * ``multistep``: multiply by ``gamma`` at each fraction of training in ``milestones``;
    * ``constant``.

    ``warmup_epochs`` > 0 prepends a linear warmup from ``lr / 1000`` for any of them. When
    ``total_steps`` differs from the configured length (a time budget planned it), the
    epoch-denominated settings (warmup, step size) shrink or grow in proportion, so the
    schedule keeps its shape.
    """
    configured = cfg.epochs * steps_per_epoch
    total = total_steps or configured
    per_epoch = steps_per_epoch * total / configured  # steps that one configured epoch maps to
    warmup = min(int(round(cfg.warmup_epochs * per_epoch)), total - 1)
    rest = total - warmup
    if cfg.schedule == "cosine":
        main = lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(rest, 1), eta_min=cfg.min_lr)
    elif cfg.schedule == "step":
        main = lr_scheduler.StepLR(optimizer, step_size=max(1, int(round(cfg.step_size * per_epoch))),
                                   gamma=cfg.gamma)
    elif cfg.schedule == "multistep":
        # milestones are fractions of the whole run, counted after the warmup like every schedule
        milestones = sorted({max(1, int(round(m * total)) - warmup) for m in cfg.milestones})
        main = lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=cfg.gamma)
    else:
        main = lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)
    if warmup <= 0:
        return main
    warm = lr_scheduler.LinearLR(optimizer, start_factor=1e-3, end_factor=1.0, total_iters=warmup)
    return lr_scheduler.SequentialLR(optimizer, [warm, main], milestones=[warmup])
