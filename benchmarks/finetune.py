"""Fine-tuning from a CIFAR-10 checkpoint vs training from scratch, on flowers17, at equal CPU budgets.

Both runs use the same recipe and flags (cifar10-best's model and optimizer at 64 px, with
random resized crops for the large flower photos); the only difference is ``--pretrained``,
a vitrain checkpoint trained on CIFAR-10 (32 px; its 4x4 position grid is resampled to 8x8).
The CIFAR-10 training time is not counted: the question is what a user with such a
checkpoint gains on a small dataset.

    python benchmarks/finetune.py --budget 10
    python benchmarks/finetune.py --budget 10 --checkpoint runs/my-cifar-run/best.safetensors

Without ``--checkpoint`` it uses the cifar10-best run of ``benchmarks/accuracy.py``, or
trains one (15 minutes) when that run is absent.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy import DATASETS, ROOT, machine_line, markdown_table, save_results, train_report  # noqa: E402

FLAGS = [
    "--recipe",
    "cifar10-best",
    "--img-size",
    "64",
    "--crop",
    "resized",
    "--crop-scale",
    "0.35,1",
    "--val-fraction",
    "0.15",
]


def train(run: Path, budget: float, extra: list[str]) -> dict:
    report = train_report(
        run, ["--data", str(DATASETS / "flowers17.tar"), *FLAGS, "--time-budget", str(budget), *extra]
    )
    return {
        "test_accuracy": report["test"]["accuracy"],
        "test_images": report["test"]["images"],
        "epochs": report["epochs"],
        "done_steps": report["time_budget"]["done_steps"],
        "total_seconds": report["total_seconds"],
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=float, default=10.0, help="minutes per flowers17 run (10)")
    parser.add_argument("--checkpoint", type=Path, help="a vitrain CIFAR-10 checkpoint (see above)")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "benchmarks" / "finetune")
    args = parser.parse_args(argv)
    if not DATASETS.is_dir():
        print(f"benchmarks/finetune.py needs the archives in {DATASETS}", file=sys.stderr)
        return 2
    checkpoint = (
        args.checkpoint or ROOT / "runs" / "benchmarks" / "accuracy" / "cifar10-cifar10-best" / "best.safetensors"
    )
    if not checkpoint.is_file():
        cifar = args.out / "cifar10-best"
        train_report(
            cifar, ["--recipe", "cifar10-best", "--data", str(DATASETS / "cifar10.tar"), "--time-budget", "15"]
        )
        checkpoint = cifar / "best.safetensors"
    rows = {
        "scratch": train(args.out / "scratch", args.budget, []),
        "fine-tuned from CIFAR-10": train(args.out / "pretrained", args.budget, ["--pretrained", str(checkpoint)]),
    }
    lines = [
        f"Command: `python benchmarks/finetune.py {shlex.join(argv)}`  ",
        f"{machine_line()}; {args.budget:g} min per flowers17 run; checkpoint {checkpoint}",
        "",
        *markdown_table(
            ["flowers17 at 64 px", "test accuracy", "test images", "epochs", "steps", "seconds"],
            [
                [name, f"{r['test_accuracy']:.4f}", r["test_images"], r["epochs"], r["done_steps"], r["total_seconds"]]
                for name, r in rows.items()
            ],
        ),
    ]
    save_results(args.out, "finetune", "\n".join(lines) + "\n", rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
