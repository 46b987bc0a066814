"""The device and precision policy: compilation, CUDA graphs, autocast, checkpoint writes, worker counts."""

from __future__ import annotations

import os

import torch

from ..config import TrainConfig
from .distributed import Dist


def use_compile(setting: str, device: torch.device) -> bool:
    """Whether ``--compile setting`` compiles on ``device`` without measuring anything: on for CUDA by
    default (fixed batch shapes there make it pay), off on a CPU. Runs decide with :mod:`.compiling`,
    which measures on a CPU; this rule is what :func:`use_cuda_graphs` builds on."""
    return setting == "on" or (setting == "auto" and device.type == "cuda")


def writes_behind(device: torch.device) -> bool:
    """Whether checkpoints are written on a background thread (:class:`CheckpointWriter`) while training goes on.

    On a GPU: the CPU mostly waits for the device, so serializing, syncing and renaming the files
    on a thread should cost training little, where in the loop they hold up the next kernel
    launches (reasoned, not measured on a GPU). On the CPU, training already keeps
    every core busy, and the thread's work slowed the steps about as much as it saved
    (``benchmarks/checkpoint_writes.py``: 0.96x to 1.04x per epoch on a 2-core CPU), so the
    files are written in the loop.
    """
    return device.type == "cuda"


def checks_each_step(device: torch.device, skip_nonfinite: int) -> bool:
    """Whether every step's gradient norm is checked for NaN/Inf at once.

    On a CPU reading the flag costs nothing; on a GPU it would synchronize every step, so the
    flags stay on the device until the epoch ends, unless batches may be skipped.
    """
    return device.type == "cpu" or skip_nonfinite > 0


def use_cuda_graphs(setting: str, device: torch.device, place: Dist) -> bool:
    """Whether the compiled step also records CUDA graphs (torch.compile's "reduce-overhead" mode).

    On a GPU a small ViT's step is bound by the host launching kernels, not by the GPU
    (``benchmarks/step_profile.py``: about 370 launches and 1.6 ms of GPU work in a 12 ms step
    on an H100); replaying the forward and backward as graphs removes most launches. Not under
    DistributedDataParallel, whose gradient hooks run between the graphs.
    """
    return use_compile(setting, device) and device.type == "cuda" and not place.active


def node_cores() -> int:
    """This process's share of the machine's cores: all of them, or under ``torchrun`` an equal
    share among the processes on this node (``LOCAL_WORLD_SIZE``)."""
    return max(1, (os.cpu_count() or 1) // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))


def decode_workers(cfg: TrainConfig) -> int:
    """Processes that decode images into memory: ``--workers``, else one per core of :func:`node_cores` (at most 8)."""
    return cfg.workers if cfg.workers is not None else min(8, node_cores())
