"""A run's final report: the best model on the test split, the plots, the samples, the ``examples/`` folder,
TensorBoard scalars."""

from __future__ import annotations

import csv
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from ..checkpoint import (
    model_from_checkpoint,
)
from ..config import TrainConfig
from ..data.sources import DataSplits
from ..report import plot_confusion_matrix, plot_curves, plot_samples, write_report
from .distributed import Dist
from .evaluate import evaluate, gap_warning, split_gap
from .state import Progress


def write_samples(splits: DataSplits, targets, predictions, classes: list[str], path: Path, per_class: int = 6) -> None:
    """``samples.png``: up to ``per_class`` validation images of each class with the best model's labels."""
    chosen: list[int] = []
    for c in range(len(classes)):
        chosen += [i for i, t in enumerate(targets) if t == c][:per_class]
    if hasattr(splits.val, "sample_files"):  # shards: the chosen images in one streaming pass
        from ..data.shards import Sample, decode

        files = splits.val.sample_files(chosen)
        images = [decode(Sample("", *files[i], 0), splits.channels).numpy() for i in chosen]
    else:
        images = [splits.val[i][0].numpy() for i in chosen]
    plot_samples(
        images, [int(targets[i]) for i in chosen], [int(predictions[i]) for i in chosen], classes, path, per_class
    )


EXAMPLES = "examples"  # the run folder's copies of test images, which `vitrain serve` shows


def pick_examples(targets, predictions, num_classes: int, per_class: int = 2, max_wrong: int = 48) -> list[int]:
    """Indices to keep: the first ``per_class`` images of each class, then up to ``max_wrong`` misclassified ones."""
    targets, predictions = np.asarray(targets), np.asarray(predictions)
    chosen = {int(i) for c in range(num_classes) for i in np.flatnonzero(targets == c)[:per_class]}
    wrong = [int(i) for i in np.flatnonzero(targets != predictions) if int(i) not in chosen]
    return sorted(chosen | set(wrong[:max_wrong]))


def write_examples(dataset, split: str, targets, predictions, classes: list[str], out: Path) -> Path:
    """``examples/``: copies of some of ``split``'s images and ``index.csv`` (file, true and predicted label).

    Files keep their bytes (a JPEG stays the JPEG the model was scored on, so predicting it
    again gives the report's answer); images held in memory (digits, CIFAR) are saved as
    lossless PNGs. The folder is built beside the old one, then swapped in.
    """
    keep = pick_examples(targets, predictions, len(classes))
    paths = getattr(dataset, "paths", None)
    streamed = dataset.sample_files(keep) if hasattr(dataset, "sample_files") else None  # shards: one pass
    folder, staging = out / EXAMPLES, out / f".{EXAMPLES}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        rows = []
        for i in keep:
            if paths is not None:
                name = f"{split}-{i:05d}{Path(paths[i]).suffix.lower()}"
                shutil.copyfile(paths[i], staging / name)
            elif streamed is not None:
                suffix, data = streamed[i]
                name = f"{split}-{i:05d}.{suffix}"
                (staging / name).write_bytes(data)
            else:
                name = f"{split}-{i:05d}.png"
                array = np.asarray(dataset[i][0], dtype=np.uint8).transpose(1, 2, 0)
                Image.fromarray(array[..., 0] if array.shape[2] == 1 else array).save(staging / name)
            true, predicted = classes[int(targets[i])], classes[int(predictions[i])]
            rows.append([name, split, i, true, predicted, str(true == predicted).lower()])
        with open(staging / "index.csv", "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["file", "split", "index", "true_label", "predicted_label", "correct"])
            writer.writerows(rows)
        if folder.is_symlink() or folder.is_file():
            folder.unlink()
        shutil.rmtree(folder, ignore_errors=True)
        staging.rename(folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def final_report(
    cfg: TrainConfig,
    splits: DataSplits,
    loaders: dict[str, DataLoader],
    device: torch.device,
    out: Path,
    history: list[dict[str, Any]],
    best: dict[str, Any],
    train_seconds: float,
    amp_dtype: torch.dtype | None,
    log=print,
    place: Dist | None = None,
    devices: int = 1,
    runtime: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Evaluate the best checkpoint on the test split (or validation, if there is none); plot and report.

    Under torchrun every rank evaluates its shard (the run folder must be on a filesystem all
    ranks see, as for resuming); only rank 0 plots.
    """
    place = place or Dist()
    model = model_from_checkpoint(out / "best.safetensors").to(device)
    val = evaluate(model, loaders["val"], device, len(cfg.classes), amp_dtype, place, cfg.tta)
    split = "test" if "test" in loaders else "val"
    if split == "val":
        log("note: no test split, so the final evaluation uses the validation split")
    result = evaluate(model, loaders[split], device, len(cfg.classes), amp_dtype, place, cfg.tta)
    matrix = result.confusion(len(cfg.classes))
    gap = split_gap(val, result, cfg.classes) if split == "test" else None
    if gap is not None:
        log(gap_warning(gap, cfg.data))
    if place.main:
        write_samples(splits, val.targets, val.predictions, cfg.classes, out / "samples.png")
        plot_curves(history, out)
        held_out = splits.test if split == "test" else splits.val
        try:
            write_examples(held_out, split, result.targets, result.predictions, cfg.classes, out)
        except OSError as err:  # an image moved away during training, a full disk: the report comes first
            log(f"warning: examples/ not written ({err})")
        plot_confusion_matrix(
            matrix,
            cfg.classes,
            out / "confusion_matrix.png",
            f"{split} split, best epoch {best['epoch']}: accuracy {result.accuracy:.3f}",
        )
    return {
        "data": cfg.data,
        "classes": list(cfg.classes),
        "model": {
            "name": cfg.model,
            "parameters": sum(p.numel() for p in model.parameters()),
            **model.config.to_dict(),
        },
        "best_epoch": int(best["epoch"]),
        "best_metric": cfg.best_metric,
        "epochs": len(history),
        "val": {
            "accuracy": best["val_accuracy"],
            "balanced_accuracy": best.get("val_balanced_accuracy"),
            "loss": best["val_loss"],
            "images": int(len(val.targets)),
            "per_class": val.per_class_accuracy(cfg.classes),  # the best model's recall per class
        },
        **({"split_gap": gap} if gap is not None else {}),
        "test": {
            "split": split,
            "images": int(len(result.targets)),
            "accuracy": result.accuracy,
            "balanced_accuracy": result.balanced_accuracy,
            "top5": result.top5,
            "loss": result.loss,
            "per_class": result.per_class_accuracy(cfg.classes),
            "confusion_matrix": matrix.tolist(),
        },
        "splits": splits.sizes(),
        "notes": splits.notes,
        "backend": cfg.backend,
        "device": str(device),
        "processes": place.world,
        "devices_per_process": devices,
        "global_batch_size": cfg.batch_size * place.world * devices,
        **(runtime or {}),  # how the steps ran: precision, compile
        "tta": cfg.tta,
        "seed": cfg.seed,
        "train_seconds": round(train_seconds, 2),
    }


def log_epoch_scalars(writer, row: dict[str, Any], epoch: int, scalars: dict[str, float]) -> None:
    """TensorBoard scalars of an epoch: losses, accuracies, LR, speed, and ``scalars`` (parameter
    norm, mean gradient norm before clipping)."""
    for key in ("train_loss", "val_loss"):
        writer.add_scalar(f"loss/{key[:-5]}", row[key], epoch)
    for key in ("train_accuracy", "val_accuracy"):
        writer.add_scalar(f"accuracy/{key[:-9]}", row[key], epoch)
    writer.add_scalar("accuracy/val_balanced", row["val_balanced_accuracy"], epoch)
    writer.add_scalar("lr", row["lr"], epoch)
    writer.add_scalar("images_per_second", row["images_per_second"], epoch)
    for name, value in scalars.items():
        writer.add_scalar(name, value, epoch)


def finish_report(
    report: dict[str, Any],
    progress: Progress,
    splits: DataSplits,
    leakage: dict[str, Any],
    stopped_by: str,
    started: float,
    imbalanced: bool,
    out: Path,
    log=print,
) -> dict[str, Any]:
    """Add what the run met on its way (leaks, skipped batches and images, the budget) to the
    final report, write ``report.json`` and say how it went in one line."""
    report["leakage"] = leakage
    if progress.skipped_batches:
        report["skipped_batches"] = progress.skipped_batches
    if splits.skipped:
        report["skipped_images"] = {"count": len(splits.skipped), "files": splits.skipped}
    if progress.budget:
        report["time_budget"] = {**progress.budget, "done_steps": progress.step, "stopped_by": stopped_by}
    report["total_seconds"] = round(time.perf_counter() - started, 2)
    write_report(out / "report.json", report)
    score = (
        "test accuracy"
        if report["test"]["split"] == "test"
        else "accuracy on the validation split (no test split; it also chose the best epoch)"
    )
    score += f" {report['test']['accuracy']:.4f}"
    if imbalanced:
        score += f", balanced accuracy {report['test']['balanced_accuracy']:.4f}"
    best = progress.best
    log(
        f"done in {report['total_seconds']:.1f}s: {score} (best epoch {best['epoch']}, "
        f"val accuracy {best['val_accuracy']:.4f}); report in {out / 'report.json'}"
    )
    return report
