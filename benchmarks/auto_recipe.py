"""What a user who names no recipe gets, against the named recipes, at one time budget.

On MNIST-sized data (60,000 training and 10,000 test images, 28 x 28 grayscale, 10 classes)
made here: handwritten digits from scikit-learn's ``digits`` (8 x 8), enlarged to 20 x 20
and placed at a random offset on a 28 x 28 canvas with a random stroke strength, rotation
and noise, written in MNIST's own file format so that ``--data mnist --no-download``
reads them. The training images come from the first 1,400 digits and the test images
from the other 397, so the test set holds writers' digits never seen in training.

Each run is one ``vitrain train --data mnist --time-budget M`` process, one after the
other: without ``--recipe`` (``auto``), with each named recipe that fits 28 px images,
and with ``--model vit-mini4`` (the model a run without a recipe trained before ``auto``).
A logistic regression on the raw pixels is the floor any of them should clear.

    python benchmarks/auto_recipe.py --budget 3
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RUNS = {
    "auto (no --recipe)": [],
    "cifar10-best": ["--recipe", "cifar10-best"],
    "cifar10-vit-tutorial": ["--recipe", "cifar10-vit-tutorial"],
    "--model vit-mini4": ["--model", "vit-mini4"],
}


def make_images(digits: np.ndarray, count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``count`` 28 x 28 uint8 images drawn from ``digits`` (rows of sklearn's 8 x 8 images, 0-16) and their labels."""
    from scipy.ndimage import rotate, zoom

    images, labels = digits
    out = np.zeros((count, 28, 28), dtype=np.uint8)
    picks = rng.integers(0, len(images), count)
    for i, pick in enumerate(picks):
        big = zoom(images[pick].reshape(8, 8) / 16.0, 2.5, order=1)  # 20 x 20
        big = rotate(big, rng.uniform(-15, 15), reshape=False, order=1)
        canvas = np.zeros((28, 28))
        dy, dx = rng.integers(0, 9, 2)
        canvas[dy : dy + 20, dx : dx + 20] = big * rng.uniform(0.6, 1.0)
        canvas += rng.normal(0, 0.08, canvas.shape)
        out[i] = np.clip(canvas * 255, 0, 255).astype(np.uint8)
    return out, labels[picks].astype(np.uint8)


def write_idx(folder: Path, prefix: str, images: np.ndarray, labels: np.ndarray) -> None:
    """MNIST's files: ``PREFIX-images-idx3-ubyte`` and ``PREFIX-labels-idx1-ubyte``."""
    header = np.array([2051, len(images), 28, 28], dtype=">i4").tobytes()
    (folder / f"{prefix}-images-idx3-ubyte").write_bytes(header + images.tobytes())
    header = np.array([2049, len(labels)], dtype=">i4").tobytes()
    (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(header + labels.tobytes())


def make_dataset(root: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Write the data under ``root/MNIST/raw`` (once) and return train and test arrays."""
    from sklearn.datasets import load_digits

    raw = root / "MNIST" / "raw"
    cache = root / "arrays.npz"
    if cache.is_file():
        arrays = np.load(cache)
        return arrays["xtr"], arrays["ytr"], arrays["xte"], arrays["yte"]
    digits = load_digits()
    rng = np.random.default_rng(0)
    xtr, ytr = make_images((digits.data[:1400], digits.target[:1400]), 60_000, rng)
    xte, yte = make_images((digits.data[1400:], digits.target[1400:]), 10_000, rng)
    raw.mkdir(parents=True, exist_ok=True)
    write_idx(raw, "train", xtr, ytr)
    write_idx(raw, "t10k", xte, yte)
    np.savez(cache, xtr=xtr, ytr=ytr, xte=xte, yte=yte)
    return xtr, ytr, xte, yte


def logistic_regression(xtr, ytr, xte, yte) -> float:
    """Test accuracy of a logistic regression on the raw pixels (scaled to 0-1)."""
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(max_iter=200)
    model.fit(xtr.reshape(len(xtr), -1) / 255.0, ytr)
    return float(model.score(xte.reshape(len(xte), -1) / 255.0, yte))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=float, default=3.0, help="minutes per run (3)")
    parser.add_argument("--runs", help="comma-separated subset of: " + ", ".join(RUNS))
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "benchmarks" / "auto-recipe")
    args = parser.parse_args(argv)
    data_root = args.out / "data"
    xtr, ytr, xte, yte = make_dataset(data_root)
    start = time.perf_counter()
    floor = logistic_regression(xtr, ytr, xte, yte)
    rows = [
        {"run": "logistic regression on the pixels", "test_accuracy": floor, "seconds": time.perf_counter() - start}
    ]
    wanted = args.runs.split(",") if args.runs else list(RUNS)
    for name in wanted:
        out = args.out / name.replace(" ", "_").replace("(", "").replace(")", "").replace("-", "")
        command = [sys.executable, "-m", "vitrain", "train", "--data", "mnist", "--data-root", str(data_root)]
        command += ["--no-download", "--time-budget", f"{args.budget:g}", "--no-progress", "--out", str(out)]
        command += RUNS[name]
        if out.exists():
            subprocess.run(["rm", "-rf", str(out)], check=True)
        print("$", shlex.join(command), flush=True)
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True)
        log = done.stdout + done.stderr
        chosen = [line for line in log.splitlines() if line.startswith(("recipe:", "precision:", "compile:", "model:"))]
        print("\n".join(chosen), flush=True)
        if done.returncode != 0:
            print(log[-3000:], file=sys.stderr)
            return 1
        report = json.loads((out / "report.json").read_text())
        rows.append(
            {
                "run": name,
                "test_accuracy": report["test"]["accuracy"],
                "epochs": report["epochs"],
                "batch_size": report["global_batch_size"],
                "seconds": time.perf_counter() - started,
            }
        )
    print(f"\nMNIST-sized data, --time-budget {args.budget:g}; {platform.processor() or platform.machine()}\n")
    print("| run | test accuracy | epochs | batch | wall s |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['run']} | {row['test_accuracy']:.4f} | {row.get('epochs', '-')} | "
            f"{row.get('batch_size', '-')} | {row['seconds']:.0f} |"
        )
    (args.out / "results.json").write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
