"""Imbalanced classes: ``--class-weights balanced --best-metric balanced-accuracy`` vs the defaults.

The training set is a long-tailed CIFAR-10 ("CIFAR-10-LT", the usual benchmark for
imbalanced classification): class ``i`` of the 10, in CIFAR-10's class order, keeps
``--largest x --ratio ** (-i / 9)`` of its training images (a seeded sample), so the last
class has ``1 / --ratio`` of the first's. The validation split is carved from it as usual
(so it is imbalanced too); the test set is CIFAR-10's whole, balanced 10,000-image test set,
on which accuracy and balanced accuracy are the same figure. The subset is built once, as
symbolic links into an extracted copy of ``../shared/datasets/cifar10.tar`` under
``runs/cache`` (ignored by git).

Each arm is one ``vitrain train --recipe cifar10-best --time-budget M`` process, one after
the other, with the same seed and split:

* ``default``: no extra flag (loss unweighted, best epoch by validation accuracy);
* ``balanced``: ``--class-weights balanced --best-metric balanced-accuracy``;
* ``weights`` and ``metric`` (``--arms weights,metric``, an ablation): each of the two alone.

The table gives test accuracy, the recall of the three smallest classes (the tail), and the
recall of the largest class.

    python benchmarks/imbalance.py --minutes 8 --seeds 0,1
    python benchmarks/imbalance.py --minutes 8 --seeds 0,1 --arms weights,metric   # each flag alone
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy import (  # noqa: E402
    CIFAR10_CLASSES,
    DATASETS,
    ROOT,
    cifar10_sample,
    machine_line,
    markdown_table,
    save_results,
    train_report,
)

ARMS = {
    "default": [],
    "balanced": ["--class-weights", "balanced", "--best-metric", "balanced-accuracy"],
    "weights": ["--class-weights", "balanced"],
    "metric": ["--best-metric", "balanced-accuracy"],
}
CLASS_ORDER = CIFAR10_CLASSES  # CIFAR-10's own class order: the largest class first


def long_tailed_counts(largest: int, ratio: float, classes: int = 10) -> list[int]:
    """Images per class: ``largest x ratio ** (-i / (classes - 1))`` for class ``i``, rounded."""
    return [round(largest * ratio ** (-i / (classes - 1))) for i in range(classes)]


def cifar10_long_tailed(largest: int, ratio: float, datasets: Path = DATASETS) -> Path:
    """runs/cache/cifar10-lt-LARGEST-RATIO/{train,test}/<class>/, linking into an extracted cifar10.tar."""
    counts = dict(zip(CLASS_ORDER, long_tailed_counts(largest, ratio)))
    return cifar10_sample(ROOT / "runs" / "cache" / f"cifar10-lt-{largest}-{ratio:g}", counts, datasets)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=8.0, help="minutes per run (8)")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds (0)")
    parser.add_argument("--largest", type=int, default=1000, help="training images of the largest class (1000)")
    parser.add_argument("--ratio", type=float, default=20.0, help="largest class / smallest class (20)")
    parser.add_argument(
        "--arms", default="default,balanced", help="which of default,balanced,weights,metric to run (default,balanced)"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "benchmarks" / "imbalance")
    parser.add_argument("--datasets", type=Path, default=DATASETS, help="folder of cifar10.tar (../shared/datasets)")
    args = parser.parse_args(argv)
    if not set(args.arms.split(",")) <= set(ARMS):
        parser.error(f"--arms: expected some of {','.join(ARMS)}, got {args.arms}")
    if not (args.datasets / "cifar10.tar").is_file():
        print(f"benchmarks/imbalance.py needs {args.datasets / 'cifar10.tar'}", file=sys.stderr)
        return 2
    data = cifar10_long_tailed(args.largest, args.ratio, args.datasets)
    tail = CLASS_ORDER[-3:]
    rows = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        for arm in args.arms.split(","):
            report = train_report(
                args.out / f"{arm}-seed{seed}",
                [
                    "--recipe",
                    "cifar10-best",
                    "--data",
                    str(data),
                    "--time-budget",
                    str(args.minutes),
                    "--seed",
                    str(seed),
                    *ARMS[arm],
                ],
            )
            recall = report["test"]["per_class"]
            rows.append(
                {
                    "arm": arm,
                    "flags": " ".join(ARMS[arm]),
                    "seed": seed,
                    "test_accuracy": report["test"]["accuracy"],
                    "test_balanced_accuracy": report["test"]["balanced_accuracy"],
                    "tail_recall": statistics.mean(recall[c] for c in tail),
                    "largest_recall": recall[CLASS_ORDER[0]],
                    "best_epoch": report["best_epoch"],
                    "epochs": report["epochs"],
                    "train_images": report["splits"]["train"],
                    "test_images": report["test"]["images"],
                    "steps": report["time_budget"]["done_steps"],
                    "seconds": report["total_seconds"],
                }
            )
    counts = long_tailed_counts(args.largest, args.ratio)
    lines = [
        f"Command: `python benchmarks/imbalance.py {shlex.join(argv)}`  ",
        f"{machine_line()}; {args.minutes:g} min per run",
        "",
        f"Training images per class before the validation split ({', '.join(CLASS_ORDER)}): "
        f"{', '.join(map(str, counts))}",
        "",
        *markdown_table(
            [
                "arm",
                "seed",
                "test accuracy",
                f"tail recall ({', '.join(tail)})",
                f"{CLASS_ORDER[0]} recall",
                "best epoch / epochs",
                "train images",
                "test images",
                "steps",
                "seconds",
            ],
            [
                [
                    r["arm"] + (f" (`{r['flags']}`)" if r["flags"] else ""),
                    r["seed"],
                    f"{r['test_accuracy']:.4f}",
                    f"{r['tail_recall']:.4f}",
                    f"{r['largest_recall']:.4f}",
                    f"{r['best_epoch']} / {r['epochs']}",
                    r["train_images"],
                    r["test_images"],
                    r["steps"],
                    r["seconds"],
                ]
                for r in rows
            ],
        ),
    ]
    arms = list(dict.fromkeys(r["arm"] for r in rows))
    if len(arms) > 1:
        means = {
            a: {k: statistics.mean(r[k] for r in rows if r["arm"] == a) for k in ("test_accuracy", "tail_recall")}
            for a in arms
        }
        lines.append(
            "\nMeans over the seeds: "
            + "; ".join(
                f"{a}: test accuracy {m['test_accuracy']:.4f}, tail recall {m['tail_recall']:.4f}"
                for a, m in means.items()
            )
        )
    save_results(args.out, "imbalance", "\n".join(lines) + "\n", rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
