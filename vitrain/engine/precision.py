"""``--precision``: what a model's steps compute in, and why.

``fp32`` and ``bf16`` are what they say (bf16 is autocast: weights, optimizer state, losses
and normalization statistics stay float32). ``auto`` takes bf16 on a GPU that supports it.
On a CPU it depends on the CPU and on the model: a CPU without bf16 matrix units (x86's
AVX512-BF16 and AMX-BF16, Arm's BF16) emulates bf16 and stays float32; on one that has
them, bf16 multiplies matrices several times faster, but a small model's step is bound by
the work around its matrix products, which autocast makes slower. So there ``auto``
times the model's own step in both precisions (a few steps on random data, a second or
two) and takes bf16 when it is at least :data:`MIN_SPEEDUP` times as fast. The answer is
cached per CPU, PyTorch version, thread count, model and batch size, so a run measures it
once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from .measured import cached, machine_key, probe_copy, train_step

MIN_SPEEDUP = 1.1  # bf16 must be this much faster than float32 for auto to take it on a CPU
BF16_UNITS = {"amx_bf16": "AMX-BF16", "avx512_bf16": "AVX512-BF16", "bf16": "BF16"}  # /proc/cpuinfo names


@dataclass(frozen=True)
class Precision:
    """What the steps compute in (``dtype``: the autocast type, None for float32), as asked and why."""

    dtype: torch.dtype | None
    setting: str
    reason: str

    @property
    def name(self) -> str:
        return "bf16" if self.dtype == torch.bfloat16 else "fp32"

    def describe(self) -> str:
        """The log's line: ``bf16 autocast (auto: ...)``."""
        return f"{'bf16 autocast' if self.dtype else 'float32'} ({self.reason})"

    def to_dict(self) -> dict[str, str]:
        """``report.json``'s ``precision``."""
        return {"compute": self.name, "setting": self.setting, "reason": self.reason}


def cpu_bf16_units() -> list[str]:
    """The CPU's bf16 matrix units, as /proc/cpuinfo names them (empty where it names none, or is missing)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    for line in text.splitlines():
        if line.startswith(("flags", "Features")) and ":" in line:
            flags = set(line.split(":", 1)[1].split())
            return [name for flag, name in BF16_UNITS.items() if flag in flags]
    return []


def choose_precision(
    setting: str,
    device: torch.device,
    model: nn.Module | None = None,
    batch_size: int = 32,
    train: bool = True,
) -> Precision:
    """The precision ``--precision setting`` means for ``model`` on ``device`` (see the module docstring).

    ``model`` and ``batch_size`` are what ``auto`` times on a CPU with bf16 units (``train``:
    a training step, else a forward pass); without a model, ``auto`` stays float32 there.
    """
    if setting == "fp32":
        return Precision(None, setting, "--precision fp32")
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return Precision(torch.bfloat16, setting, "--precision bf16" if setting == "bf16" else "auto: a GPU")
        if setting == "bf16":
            raise ConfigError(f"--precision bf16: {torch.cuda.get_device_name(device)} has no bfloat16 (use fp32)")
        return Precision(None, setting, "auto: this GPU has no bfloat16")
    if setting == "bf16":
        return Precision(torch.bfloat16, setting, "--precision bf16")
    units = cpu_bf16_units()
    if not units:
        return Precision(None, setting, "auto: this CPU has no bf16 matrix units (AVX512-BF16, AMX-BF16)")
    if model is None:
        return Precision(None, setting, f"auto: {', '.join(units)}, but no model to time")
    speedup, cached = bf16_speedup(model, batch_size, train)
    what = "training step" if train else "forward pass"
    measured = f"this model's {what} ran {speedup:.2f}x as fast in bf16" + (" (cached)" if cached else "")
    if speedup >= MIN_SPEEDUP:
        return Precision(torch.bfloat16, setting, f"auto: this CPU has {', '.join(units)}, and {measured}")
    return Precision(None, setting, f"auto: this CPU has {', '.join(units)}, but {measured}")


def bf16_speedup(model: nn.Module, batch_size: int, train: bool = True) -> tuple[float, bool]:
    """float32 time / bf16 time of ``model``'s step on this CPU (cached), and whether it came from the cache."""
    key = machine_key(model, batch_size, train)
    speedup, was_cached = cached("precision", key, lambda: round(measure_speedup(model, batch_size, train), 4))
    return float(speedup), was_cached


def measure_speedup(model: nn.Module, batch_size: int, train: bool = True, seconds: float = 2.0) -> float:
    """Time ``model``'s step (fused AdamW, as training uses, and cross entropy; or a forward pass)
    in float32 and in bf16 autocast, in turn,
    on random images: one warm-up step each, then rounds of one step each for about ``seconds``
    (at least two rounds, at most eight). Returns the ratio of the median times. The global
    random state is left as it was, so a measured run and a cached one train alike."""
    with torch.random.fork_rng(devices=[]):
        return _measure(model, batch_size, train, seconds)


def _measure(model: nn.Module, batch_size: int, train: bool, seconds: float) -> float:
    probe, optimizer, images, labels = probe_copy(model, batch_size, train)

    def step(dtype: torch.dtype | None) -> float:
        start = time.perf_counter()
        if train:
            train_step(probe, optimizer, images, labels, dtype)
        else:
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype is not None):
                probe(images)
        return time.perf_counter() - start

    step(None)
    step(torch.bfloat16)
    times: dict[Any, list[float]] = {None: [], torch.bfloat16: []}
    started = time.perf_counter()
    while len(times[None]) < 8 and (len(times[None]) < 2 or time.perf_counter() - started < seconds):
        for dtype in times:
            times[dtype].append(step(dtype))
    median = {dtype: sorted(t)[len(t) // 2] for dtype, t in times.items()}
    return median[None] / median[torch.bfloat16]
