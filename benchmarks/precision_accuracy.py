"""Does bf16 cost accuracy? The same training job in float32 and under bf16 autocast, several seeds.

Each run is one ``vitrain train ... --precision P --seed S`` process, one after the other
(never two at once). The table gives each run's test accuracy, then per precision the mean
and the spread (max - min) over the seeds: bf16 passes when its mean is within the float32
seeds' spread of float32's mean.

    python benchmarks/precision_accuracy.py                            # the default digits job, seeds 0-4
    python benchmarks/precision_accuracy.py --seeds 0,1,2 --flags="--data ../shared/datasets/cifar10.tar \
        --recipe cifar10-best --time-budget 5"
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="0,1,2,3,4", help="comma-separated seeds (0,1,2,3,4)")
    parser.add_argument("--precisions", default="fp32,bf16", help="comma-separated (fp32,bf16)")
    parser.add_argument("--flags", default="", help="vitrain train flags for every run (default: the digits job)")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "benchmarks" / "precision-accuracy")
    args = parser.parse_args(argv)
    results: dict[str, list[float]] = {}
    rows = []
    for precision in args.precisions.split(","):
        for seed in args.seeds.split(","):
            out = args.out / f"{precision}-seed{seed}"
            command = [sys.executable, "-m", "vitrain", "train", *shlex.split(args.flags)]
            command += ["--precision", precision, "--seed", seed, "--no-progress", "--overwrite", "--out", str(out)]
            print("$", shlex.join(command), flush=True)
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                print((done.stdout + done.stderr)[-3000:], file=sys.stderr)
                return 1
            report = json.loads((out / "report.json").read_text())
            accuracy = report["test"]["accuracy"]
            results.setdefault(precision, []).append(accuracy)
            rows.append({"precision": precision, "seed": int(seed), "test_accuracy": accuracy})
            print(f"  {report['precision']['reason']}: test accuracy {accuracy:.4f}", flush=True)
    print(f"\nvitrain train {args.flags or '(the digits job)'}\n")
    print("| precision | " + " | ".join(f"seed {s}" for s in args.seeds.split(",")) + " | mean | spread |")
    print("|---|" + "---|" * (len(args.seeds.split(",")) + 2))
    for precision, accuracies in results.items():
        spread = max(accuracies) - min(accuracies)
        cells = " | ".join(f"{a:.4f}" for a in accuracies)
        print(f"| {precision} | {cells} | {statistics.mean(accuracies):.4f} | {spread:.4f} |")
    (args.out / "results.json").write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
