"""The run folder: its default name, the checks before writing into it, and clearing what a killed run left."""

from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path

from ..checkpoint import (
    remove_stale_temp_files,
)
from ..config import ConfigError, TrainConfig
from . import distributed
from .card import is_vitrain_card
from .distributed import Dist
from .hub_export import is_vitrain_export
from .state import STATE_FILE

RUN_FILES = (
    "config.yaml",
    "metrics.csv",
    "best.safetensors",
    "last.safetensors",
    STATE_FILE,
    "report.json",
    "accuracy.png",
    "loss.png",
    "confusion_matrix.png",
    "samples.png",
)


def default_run_dir(data: str) -> str:
    """``runs/<data name>-<timestamp>``, the run folder when ``--out`` is not given."""
    return str(Path("runs") / f"{Path(data).stem or 'data'}-{time.strftime('%Y%m%d-%H%M%S')}")


def agree_on_run_dir(cfg: TrainConfig, place: Dist) -> TrainConfig:
    """``cfg`` with its run folder set (``--out``, or :func:`default_run_dir`), rank 0's on every rank.

    Without ``--out`` each process names ``runs/<data>-<time>`` by its own clock, and ranks
    that start on either side of a second would name different folders: a chained run's
    second stage, which loads the first stage's weights on every rank, would not find them.
    Call it once the process group is up (:func:`distributed.setup`).
    """
    return dataclasses.replace(cfg, out=distributed.broadcast(cfg.out or default_run_dir(cfg.data), place))


def check_run_dir(cfg: TrainConfig, resume: bool, files: tuple[str, ...] = RUN_FILES) -> Path:
    """The run folder, checked before any work: a new run never mixes into an old one.

    ``files`` are the names that make a folder a run (a pretraining run has its own).
    """
    out = Path(cfg.out or default_run_dir(cfg.data))
    if resume:
        if not (out / STATE_FILE).is_file():
            raise ConfigError(f"--resume {out}: no {STATE_FILE} there, so there is nothing to resume")
        return out
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file, not a folder")
    existing = [name for name in files if (out / name).exists()]
    if existing and not cfg.overwrite:
        raise ConfigError(
            f"--out {out} already holds a run ({', '.join(existing[:3])}); "
            f"continue it with --resume {out} or replace it with --overwrite"
        )
    return out


def start_run_dir(out: Path, files: tuple[str, ...] = RUN_FILES) -> None:
    """Create the folder, removing an old run's files (only vitrain's own: ``files``, its
    TensorBoard events and ``examples/``, and what describes the old model: the exports that
    ``vitrain export`` writes into the run folder by default and a model card vitrain wrote) for
    --overwrite.

    Called once the data has loaded, so a mistyped option never costs the old run.
    """
    for name in (*files, "best.onnx", "best.onnx.data", "best.torchscript.pt"):
        (out / name).unlink(missing_ok=True)
    for folder in ("tensorboard", "examples"):
        shutil.rmtree(out / folder, ignore_errors=True)
    for folder in ("export-hf", "export-timm"):
        if is_vitrain_export(out / folder):
            shutil.rmtree(out / folder, ignore_errors=True)
    readme = out / "README.md"
    if readme.is_file() and is_vitrain_card(readme):
        readme.unlink()
    out.mkdir(parents=True, exist_ok=True)


def remove_interrupted_writes(out: Path, log=print) -> None:
    """Delete the temporary files a killed run left in ``out`` mid-write; the real files are intact."""
    stale = remove_stale_temp_files(out)
    if stale:
        log(f"removed {len(stale)} temporary file(s) left by an interrupted write in {out}")
