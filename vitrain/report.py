"""What a run leaves for people: metrics.csv, curves, the confusion matrix and report.json."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .checkpoint import atomic_write_bytes

METRIC_COLUMNS = [
    "epoch",
    "train_loss",
    "train_accuracy",
    "val_loss",
    "val_accuracy",
    "val_balanced_accuracy",
    "lr",
    "epoch_seconds",
    "images_per_second",
]


def _pyplot():
    """matplotlib's pyplot, drawing to files only (imported when a plot is made: only the process that
    writes the run's files pays for it, and caches its fonts)."""
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    return plt


def metrics_csv_bytes(history: Sequence[dict[str, Any]]) -> bytes:
    """The text of metrics.csv: one row per completed epoch (the file is rewritten whole each
    epoch, so a resumed run never duplicates rows)."""
    lines = [",".join(METRIC_COLUMNS)]
    for row in history:
        lines.append(",".join(_fmt(row.get(c)) for c in METRIC_COLUMNS))
    return ("\n".join(lines) + "\n").encode()


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return "" if value is None else str(value)


def read_metrics_csv(path: Path) -> list[dict[str, float]]:
    """The rows of a metrics.csv as floats."""
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(f)]


def plot_curves(history: Sequence[dict[str, Any]], out_dir: Path, labels: dict[str, str] | None = None) -> None:
    """``accuracy.png`` and ``loss.png``: the training and validation curves per epoch.

    Epochs without a value (an empty cell) are left out, and so is a split without any;
    ``labels`` renames a split's curve.
    """
    plt = _pyplot()
    names = {"train": "training", "val": "validation", **(labels or {})}
    for metric, filename, ylabel in (("accuracy", "accuracy.png", "accuracy"), ("loss", "loss.png", "loss")):
        fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
        for split, style in (("train", "-o"), ("val", "-s")):
            points = [
                (row["epoch"], row[f"{split}_{metric}"]) for row in history if row.get(f"{split}_{metric}") is not None
            ]
            if not points:
                continue
            ax.plot(*zip(*points), style, markersize=3, label=names[split])
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        if metric == "accuracy":
            ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend()
        ax.set_title(f"{ylabel} per epoch")
        fig.tight_layout()
        fig.savefig(out_dir / filename)
        plt.close(fig)


def plot_confusion_matrix(
    matrix: np.ndarray, classes: Sequence[str], path: Path, title: str, normalized: bool = False
) -> None:
    """A confusion matrix colored by row-normalized rate, with counts (or the rates) in the cells."""
    plt = _pyplot()
    n = len(classes)
    size = min(4 + 0.45 * n, 22)
    fig, ax = plt.subplots(figsize=(size, size * 0.9), dpi=120)
    rates = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    im = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), classes, rotation=45 if n > 4 else 0, ha="right" if n > 4 else "center")
    ax.set_yticks(range(n), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    if n <= 40:
        for i in range(n):
            for j in range(n):
                ax.text(
                    j,
                    i,
                    f"{rates[i, j]:.2f}" if normalized else str(int(matrix[i, j])),
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if rates[i, j] > 0.5 else "black",
                )
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_report(path: Path, report: dict[str, Any]) -> None:
    """``report.json``, written atomically."""
    atomic_write_bytes(path, (json.dumps(report, indent=2) + "\n").encode())


def plot_samples(
    images: Sequence[np.ndarray],
    true: Sequence[int],
    predicted: Sequence[int],
    classes: Sequence[str],
    path: Path,
    per_class: int,
) -> None:
    """A grid of validation images, a row per class, titled with the prediction; wrong ones in red.

    ``images`` are (C, H, W) uint8 arrays in row order (``per_class`` per row, fewer where a
    class has fewer images).
    """
    plt = _pyplot()
    rows = sorted(set(true), key=list(true).index)
    fig, axes = plt.subplots(len(rows), per_class, figsize=(1.6 * per_class, 1.75 * len(rows)), dpi=110, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    counts = {r: 0 for r in rows}
    for image, t, p in zip(images, true, predicted):
        row, col = rows.index(t), counts[t]
        counts[t] += 1
        ax = axes[row][col]
        picture = image.transpose(1, 2, 0)
        ax.imshow(
            picture[..., 0] if picture.shape[2] == 1 else picture,
            cmap="gray",
            vmin=0,
            vmax=255,
            interpolation="nearest",
        )
        wrong = p != t
        ax.set_title(("x " if wrong else "") + classes[p], fontsize=8, color="red" if wrong else "green")
        if col == 0:
            ax.text(-0.1, 0.5, classes[t], transform=ax.transAxes, ha="right", va="center", fontsize=8)
    fig.suptitle("validation samples: predicted label above each image (red x = wrong); true class at left", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
