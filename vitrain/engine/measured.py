"""Measurements a run makes once per machine and reuses: a small JSON cache under ``~/.cache/vitrain``,
and the throwaway copy of a model that they time.

``--precision auto`` and ``--compile auto`` time a model's step on the CPU they run on. The
answer depends on the CPU, the PyTorch version, the thread count, the model's shape and the
batch size, so it is kept under a key made of those facts and read by later runs, which
then decide alike (and train alike, seed for seed).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import platform
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from torch.nn.functional import cross_entropy  # bound here: a probe's steps are its own


def cache_dir() -> Path:
    """``$VITRAIN_CACHE`` (where archives are extracted too), else ``$XDG_CACHE_HOME``/vitrain or ~/.cache/vitrain."""
    if os.environ.get("VITRAIN_CACHE"):
        return Path(os.environ["VITRAIN_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vitrain"


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo ("unknown" where it is missing)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and ":" in line:
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def machine_key(model: nn.Module, *facts: Any) -> str:
    """A key for ``model``'s shape on this CPU, PyTorch version and thread count, plus ``facts``."""
    config = getattr(model, "config", None)
    shape = config.to_dict() if hasattr(config, "to_dict") else repr(model)
    known = [platform.processor(), cpu_name(), torch.__version__, torch.get_num_threads(), shape, *facts]
    return hashlib.sha256(json.dumps(known, sort_keys=True, default=str).encode()).hexdigest()[:24]


def cached(name: str, key: str, measure: Callable[[], Any]) -> tuple[Any, bool]:
    """``measure()``'s answer under ``key`` in ``NAME.json`` (measured and stored the first time),
    and whether it came from the cache. A cache that cannot be read or written costs a
    measurement, nothing else."""
    path = cache_dir() / f"{name}.json"
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        known = {}
    if not isinstance(known, dict):
        known = {}
    if key in known and known[key] is not None:
        return known[key], True
    value = measure()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        known[key] = value
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(known, indent=1))
        os.replace(tmp, path)
    except OSError:
        pass
    return value, False


def probe_copy(
    model: nn.Module, batch_size: int, train: bool = True
) -> tuple[nn.Module, torch.optim.Optimizer | None, torch.Tensor, torch.Tensor]:
    """A copy of ``model`` to time (in training mode when ``train``), fused AdamW over it as training
    uses (None when not ``train``), and a batch of random images and labels of its shape."""
    config = model.config
    probe = copy.deepcopy(model).train(train)
    images = torch.randn(batch_size, config.in_chans, config.img_size, config.img_size)
    labels = torch.randint(0, config.num_classes, (batch_size,))
    optimizer = torch.optim.AdamW(probe.parameters(), lr=1e-6, fused=True) if train else None
    return probe, optimizer, images, labels


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    labels: torch.Tensor,
    amp_dtype: torch.dtype | None,
) -> torch.Tensor:
    """One timed training step on a CPU: cross entropy under autocast to ``amp_dtype`` (None: float32).
    Returns the step's logits (detached)."""
    with torch.autocast("cpu", dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None):
        logits = model(images)
        loss = cross_entropy(logits, labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return logits.detach()
