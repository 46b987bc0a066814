"""Shared fixtures: tiny image folders written by the tests themselves, and tiny model settings."""

from __future__ import annotations

import csv
import importlib.util
import os
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from PIL import Image

from vitrain.cli import main

SHARED_DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"

# a 2-block, 32-dim ViT on 16 px images: trains a step in milliseconds
TINY_MODEL = {
    "model": "vit",
    "img_size": 16,
    "patch_size": 4,
    "embed_dim": 32,
    "depth": 2,
    "num_heads": 2,
    "mlp_dim": 64,
}


# TINY_MODEL trained for a moment: the settings of the tiny_args flags, by field name (for the Python API)
TINY_RUN = {**TINY_MODEL, "epochs": 2, "batch_size": 8, "workers": 0}


def load_script(path: Path) -> ModuleType:
    """A file outside the package (a benchmark script, a docs hook), imported as a module."""
    spec = importlib.util.spec_from_file_location(f"script_{path.parent.name}_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_image(color: tuple[int, int, int], seed: int, size: int = 20, mode: str = "RGB") -> Image.Image:
    """A noisy image around ``color`` with a bright square whose place depends on the color (learnable)."""
    rng = np.random.default_rng(seed)
    arr = np.clip(np.array(color)[None, None] + rng.normal(0, 25, (size, size, 3)), 0, 255).astype(np.uint8)
    offset = (sum(color) // 100) % (size // 2)
    arr[offset : offset + size // 3, offset : offset + size // 3] = 255
    img = Image.fromarray(arr, "RGB")
    return img if mode == "RGB" else img.convert(mode)


CLASS_COLORS = {"cat": (200, 40, 40), "dog": (40, 200, 40), "fox": (40, 40, 200)}


def write_class_folders(
    root: Path, per_class: int = 8, classes: dict | None = None, start: int = 0, ext: str = ".png"
) -> Path:
    """root/<class>/<i>.png for each class; returns root."""
    for c, (name, color) in enumerate((classes or CLASS_COLORS).items()):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(start, start + per_class):
            make_image(color, seed=c * 1000 + i).save(folder / f"{i:03d}{ext}")
    return root


def _ctrl_c() -> None:
    raise KeyboardInterrupt


def at_call(monkeypatch, owner, name: str, at: int, do=_ctrl_c):
    """Run ``do()`` (default: raise KeyboardInterrupt, as Ctrl-C would) as the ``at``-th call of
    ``owner.<name>`` starts; returns what undoes it (so does ``monkeypatch.undo()``)."""
    real, calls = getattr(owner, name), {"n": 0}

    def interrupting(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == at:
            do()
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, interrupting)
    return lambda: monkeypatch.setattr(owner, name, real)


def interrupt_validation(monkeypatch, owner, name: str = "evaluate", at: int = 3):
    """Make the ``at``-th call of ``owner.<name>`` raise KeyboardInterrupt, as Ctrl-C during epoch ``at``'s
    validation pass would (epochs before it are saved, epoch ``at`` is lost); returns what undoes it."""
    return at_call(monkeypatch, owner, name, at)


def interrupt_step(monkeypatch, n: int, do=_ctrl_c) -> None:
    """Run ``do()`` (default: Ctrl-C) at the start of the ``n``-th training step of the process, before it
    computes; ``monkeypatch.undo()`` undoes it."""
    from vitrain.engine import torch_backend

    at_call(monkeypatch, torch_backend.TorchBackend, "train_step", n, do)


# JAX's compiled steps may stay in the user's cache between test sessions (they are keyed by
# what was compiled, and a warm cache saves minutes); what vitrain measures may not (below)
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR",
    str(Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vitrain" / "jax"),
)


@pytest.fixture(scope="session")
def _session_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(autouse=True)
def _own_cache(monkeypatch, _session_cache):
    """What runs measure and cache (``--precision``/``--compile auto``, JAX's compiled steps) goes to
    a folder of the test session's, never to the user's ~/.cache."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(_session_cache))


@pytest.fixture(autouse=True)
def _a_cpu_without_bf16_units(monkeypatch):
    """``--precision auto`` keeps float32 in the tests, whatever CPU runs them (no timing, no cache);
    the tests of ``auto`` force the probe's answers themselves."""
    from vitrain.engine import precision

    monkeypatch.setattr(precision, "cpu_bf16_units", lambda: [])


@pytest.fixture
def flat_folder(tmp_path: Path) -> Path:
    """3 classes x 10 images, no split folders."""
    return write_class_folders(tmp_path / "flat", per_class=10)


@pytest.fixture
def split_folder(tmp_path: Path) -> Path:
    """A Kaggle-style wrapper folder with Training/ and Testing/ split folders."""
    root = tmp_path / "kaggle" / "my-dataset"
    write_class_folders(root / "Training", per_class=10)
    write_class_folders(root / "Testing", per_class=4, start=100)
    return tmp_path / "kaggle"


@pytest.fixture
def tiny_args(tmp_path: Path) -> list[str]:
    """CLI flags for a fast, tiny training run."""
    args = []
    for key, value in TINY_RUN.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    return args + ["--no-progress"]


# reading the CSV files that runs and tools write
def _metrics(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv") as f:
        return list(csv.DictReader(f))


def _without_timing(rows):
    return [{k: v for k, v in r.items() if k not in ("epoch_seconds", "images_per_second")} for r in rows]


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# read-only (tests write under their own tmp_path), so one training run serves every test file
@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """(run folder, data folder): a tiny model trained a few epochs on 3 classes."""
    root = tmp_path_factory.mktemp("after")
    data = write_class_folders(root / "pets", per_class=10)
    args = [
        "train",
        "--data",
        str(data),
        "--out",
        str(root / "run"),
        "--epochs",
        "4",
        "--batch-size",
        "8",
        "--lr",
        "3e-3",
        "--no-progress",
        "--workers",
        "0",
    ]
    for key, value in TINY_MODEL.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    assert main(args) == 0
    return root / "run", data
