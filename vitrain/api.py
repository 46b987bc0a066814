"""The Python API: what ``vitrain train``, ``eval`` and ``predict`` do, for notebooks and other programs.

Options are the command line's, by their field names (``--time-budget`` is ``time_budget``),
with the same defaults, the same layering (defaults < ``recipe`` < ``config`` file < the
options given) and the same errors (:class:`vitrain.config.ConfigError` naming the option,
:class:`vitrain.data.sources.DataError` naming the file).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Sequence

from .errors import ConfigError
from .models.vit import VisionTransformer


@dataclass
class Run:
    """A finished training run: its folder, its report, and (loaded on first use) its best model."""

    path: Path
    report: dict[str, Any]

    @cached_property
    def model(self) -> VisionTransformer:
        """The run's ``best.safetensors``, in eval mode, with its classes and preprocessing on ``model.meta``."""
        return load_model(self.path)


def _given(options: dict[str, Any]) -> dict[str, Any]:
    """The options that were set (None means "not given", as an absent flag), keyed by field name."""
    return {
        key.replace("-", "_"): os.fspath(value) if isinstance(value, os.PathLike) else value
        for key, value in options.items()
        if value is not None
    }


def _run(command: str, options: dict[str, Any], config: str | Path | None, resume: str | Path | None) -> Run:
    from .engine import distributed
    from .engine.launch import launch, resolve_config

    given = _given(options)
    resume = os.fspath(resume) if resume is not None else None
    cfg, resuming = resolve_config(given, config_file=config, resume=resume, command=command)
    try:
        call = ", ".join(
            f"{k}={v!r}" for k, v in {**options, "config": config, "resume": resume}.items() if v is not None
        )
        report = launch(command, cfg, resuming, given, invocation=f"vitrain.{command}({call})")
    finally:
        distributed.shutdown()
    return Run(path=Path(cfg.out), report=report)


def train(
    data: str | Path | None = None,
    recipe: str | None = None,
    *,
    config: str | Path | None = None,
    resume: str | Path | None = None,
    **options: Any,
) -> Run:
    """Train a ViT, as ``vitrain train`` does, and return the run.

    Args:
        data: any ``--data`` source: ``digits`` (the default), ``cifar10``, a folder of class
            folders, a ``.zip``/``.tar`` of one.
        recipe: a recipe name (``vitrain recipes`` lists them).
        config: a YAML file of options (``--config``); the options given here win over it.
        resume: a run folder to continue after its last completed epoch (``--resume``).
        **options: any other option by its field name, e.g. ``epochs=20``, ``time_budget=5``,
            ``out="runs/flowers"``, ``crop_scale=[0.35, 1.0]``, ``pretrain="labels"``.

    Returns:
        The :class:`Run`: ``run.path`` (the run folder), ``run.report`` (its ``report.json``) and
        ``run.model`` (its best model).

    Example:
        ```python
        import vitrain
        run = vitrain.train("digits", epochs=10, out="runs/digits-10")
        print(run.report["test"]["accuracy"], run.path)
        logits = run.model(images)
        ```
    """
    return _run("train", {"data": data, "recipe": recipe, **options}, config, resume)


def pretrain(
    data: str | Path | None = None,
    recipe: str | None = None,
    *,
    config: str | Path | None = None,
    resume: str | Path | None = None,
    **options: Any,
) -> Run:
    """Pretrain a backbone on the images without their labels, as ``vitrain pretrain`` does.

    The arguments are those of :func:`train`; the run folder holds ``backbone.safetensors``,
    which ``train(..., pretrained=run.path)`` fine-tunes.
    """
    return _run("pretrain", {"data": data, "recipe": recipe, **options}, config, resume)


def evaluate(
    checkpoint: str | Path,
    data: str | Path | None = None,
    *,
    split: str | None = None,
    out: str | Path | None = None,
    classes: Sequence[str] | None = None,
    batch_size: int = 64,
    workers: int = 0,
    device: str = "auto",
    precision: str = "fp32",
    tta: str = "none",
    **data_options: Any,
) -> dict[str, Any]:
    """Evaluate a checkpoint or run folder on any data source, as ``vitrain eval`` does.

    Without ``data``, the data it was trained on, on that run's own test split. Writes
    ``report.json`` and the confusion matrices into ``out`` (default
    ``CHECKPOINT_DIR/eval/DATA-SPLIT``) and returns the report: accuracy, balanced accuracy,
    top-5, loss, per-class precision/recall/F1/support, the confusion matrix.
    ``data_options`` are ``data_root``, ``download``, ``val_fraction``, ``test_fraction`` and
    ``split_seed``. ``precision``: ``fp32``, ``bf16`` or ``auto`` (as ``--precision``).
    ``tta``: ``none`` or ``flip`` (as ``--tta``).
    """
    from .engine.device import resolve_device
    from .engine.evaluate import evaluate_checkpoint

    if tta not in ("none", "flip"):
        raise ConfigError(f"tta: must be none or flip, not {tta!r}")
    _check_tool_options(batch_size, out)
    return evaluate_checkpoint(
        checkpoint,
        str(data) if data is not None else None,
        split=split,
        out=out,
        batch_size=batch_size,
        workers=workers,
        device=resolve_device(device),
        classes=list(classes) if classes else None,
        precision=_check_precision(precision),
        tta=tta,
        **data_options,
    )


def predict(
    checkpoint: str | Path,
    inputs: str | Path | Sequence[str | Path],
    *,
    top_k: int = 5,
    batch_size: int = 64,
    device: str = "auto",
    out: str | Path | None = None,
    annotate: bool = False,
    attention: bool = False,
    precision: str = "fp32",
):
    """Classify image files, folders (recursively) or glob patterns, as ``vitrain predict`` does.

    Returns a ``PredictResult``: ``result.predictions`` (each with ``path``, ``label``,
    ``probability``, ``top``, ``true_label`` when its folder names a class, ``correct``),
    ``result.failed`` (unreadable inputs, with the reason) and ``result.accuracy()``. With
    ``out``, also writes ``predictions.csv`` there, and with ``annotate``/``attention`` the
    annotated copies and attention maps. ``precision``: ``fp32``, ``bf16`` or ``auto`` (as ``--precision``).
    """
    from .engine.device import resolve_device
    from .engine.predict import predict_files, write_outputs

    _check_tool_options(batch_size, out)
    device = resolve_device(device)
    if top_k < 1:
        raise ConfigError(f"--top-k must be at least 1 (got {top_k})")
    if (annotate or attention) and out is None:
        raise ConfigError("annotate and attention write image files: give out=FOLDER too")
    paths = [str(inputs)] if isinstance(inputs, (str, Path)) else [str(i) for i in inputs]
    precision = _check_precision(precision)
    result = predict_files(
        checkpoint, paths, top_k=top_k, batch_size=batch_size, attention=attention, device=device, precision=precision
    )
    if out is not None:
        write_outputs(result, out, top_k, annotated=annotate, attention=attention)
    return result


def _check_precision(precision: str) -> str:
    if precision not in ("auto", "fp32", "bf16"):
        raise ConfigError(f"--precision must be auto, fp32 or bf16 (got {precision})")
    return precision


def _check_tool_options(batch_size: int, out: str | Path | None) -> None:
    """The checks ``evaluate`` and ``predict`` make before loading anything."""
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1 (got {batch_size})")
    if out and Path(out).exists() and not Path(out).is_dir():
        raise ConfigError(f"--out {out} is a file, not a folder")


def _is_vitrain_checkpoint(path: Path) -> bool:
    """A run folder, or a .safetensors file with vitrain's metadata."""
    if path.is_dir():
        return any((path / name).is_file() for name in ("best.safetensors", "last.safetensors"))
    if path.suffix != ".safetensors" or not path.is_file():
        return False
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            return "vitrain" in (f.metadata() or {})
    except Exception:  # not a readable safetensors file: the pretrained loader says what is wrong
        return False


def load_model(source: str | Path) -> VisionTransformer:
    """A model, in eval mode, from a vitrain checkpoint or run folder, or any ``--pretrained`` source.

    ``source`` is a vitrain checkpoint file or run folder (its ``best.safetensors``), or
    anything ``--pretrained`` accepts: ``timm:NAME``, ``torchvision:NAME``, ``hf:ORG/NAME``, a
    state dict file in timm, torchvision, Hugging Face or vitrain layout (``.safetensors``,
    ``.pth``, ``.pt``, ``.bin``), a Hugging Face model folder or a ``vitrain pretrain`` folder.
    Foreign weights keep their own head, so the model computes what the source computes.
    ``model.meta`` holds the classes (None when the source names none) and the
    preprocessing (``mean``, ``std``, ``crop_pct``).
    """
    from . import checkpoint
    from .models.pretrained import load_pretrained

    path = Path(source).expanduser()
    if _is_vitrain_checkpoint(path):
        return checkpoint.load_model(path)
    found = load_pretrained(str(source))
    model = found.model().eval()
    model.meta = {
        "classes": None,
        "mean": list(found.mean),
        "std": list(found.std),
        "crop_pct": found.crop_pct,
        "pretrained": str(source),
        "layout": found.layout,
        "notes": list(found.notes),
    }
    return model
