"""The first stage alone: what instance-discrimination pretraining teaches, by kNN, per setting.

Runs ``vitrain pretrain --recipe small-data`` (the recipe's first stage: its model, 32 px
inputs, InfoNCE, no instance mixing) for the same wall-clock budget once per flag set, and
reports each run's validation 20-nearest-neighbour accuracy on the backbone's features
(``--knn-every``): before training, and at the end. A cheap screen of first-stage settings
before the full two-stage comparison of ``benchmarks/small_data.py``; the untrained
backbone's kNN accuracy is the floor a setting must rise above.

    python benchmarks/pretrain_knn.py --minutes 5 --only cifar10-2040 \\
        --variants "|--instance-init features|--instance-smoothing 0.1"
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy import DATASETS, ROOT, machine_line, markdown_table, save_results  # noqa: E402
from small_data import cifar10_subset  # noqa: E402


def pretrain_report(run: Path, flags: list[str]) -> dict:
    """Run ``vitrain pretrain FLAGS --out RUN --overwrite --no-progress`` in a fresh process; its report.json."""
    command = [sys.executable, "-m", "vitrain", "pretrain", *flags, "--out", str(run), "--overwrite", "--no-progress"]
    print("$", " ".join(command[2:]), flush=True)
    subprocess.run(command, check=True)
    return json.loads((run / "report.json").read_text())


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=5.0, help="minutes per pretraining run (5)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", choices=["flowers17", "cifar10-2040"], action="append")
    parser.add_argument("--variants", default="",
                        help="'|'-separated extra `vitrain pretrain` flags, one run each ('' is the recipe as is)")
    parser.add_argument("--knn-every", type=int, default=5, help="kNN report every N epochs (5)")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "benchmarks" / "pretrain_knn")
    args = parser.parse_args(argv)
    if not DATASETS.is_dir():
        print(f"benchmarks/pretrain_knn.py needs the archives in {DATASETS}", file=sys.stderr)
        return 2
    datasets = {"flowers17": lambda: DATASETS / "flowers17.tar", "cifar10-2040": cifar10_subset}
    rows = []
    for name in args.only or list(datasets):
        data = datasets[name]()
        for i, variant in enumerate(args.variants.split("|")):
            flags = ["--recipe", "small-data", "--data", str(data), "--time-budget", str(args.minutes),
                     "--seed", str(args.seed), "--knn-every", str(args.knn_every), *shlex.split(variant)]
            report = pretrain_report(args.out / f"{name}-{i}", flags)
            knn = report["knn"]
            rows.append({"dataset": name, "flags": variant.strip(), "steps": report["steps"],
                         "final_loss": round(report["final_loss"], 4),
                         "instance_accuracy": round(report["instance_accuracy"], 4),
                         "knn_before": round(knn["before"], 4), "knn_after": round(knn["val_accuracy"], 4),
                         "val_images": knn["val_images"], "seconds": report["total_seconds"]})
    lines = [f"Command: `python benchmarks/pretrain_knn.py {shlex.join(argv)}`  ",
             f"{machine_line()}; {args.minutes:g} min per run, seed {args.seed}", "",
             *markdown_table(["dataset", "extra flags", "steps", "final loss", "instance acc.",
                              "kNN val acc. untrained", "kNN val acc. pretrained", "val images", "seconds"],
                             [[r["dataset"], f"`{r['flags']}`" if r["flags"] else "(recipe)", r["steps"],
                               r["final_loss"], r["instance_accuracy"], r["knn_before"], r["knn_after"],
                               r["val_images"], r["seconds"]] for r in rows])]
    save_results(args.out, "pretrain_knn", "\n".join(lines) + "\n", rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
