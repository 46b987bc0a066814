"""Test accuracy against the time budget: one recipe at several ``--time-budget`` values.

Each point is a separate ``vitrain train --time-budget M`` process, run one after the other
(never two at once: they would share the CPU), with the same data, recipe, split and seed.
The budget counts everything from process start, so a point says what a user gets from
that many minutes. The script writes ``budget.md`` (the table), ``budget.json`` (the rows)
and ``budget.png`` (test accuracy against minutes, one line per seed) into ``--out``.

    python benchmarks/budget.py                                       # digits, 0.25 to 2 minutes
    python benchmarks/budget.py --budgets 0.25,0.5,1,2 --seeds 0,1
    python benchmarks/budget.py --data ../shared/datasets/cifar10.tar --recipe cifar10-best --budgets 1,2,4,8,15
    python benchmarks/budget.py --out runs/benchmarks/budget --replot     # redraw the plot from budget.json
    python benchmarks/budget.py --budgets 0.25,0.5,1,2,4 --reuse          # run only the points not yet in --out
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy import ROOT, machine_line, markdown_table, save_results, train_report  # noqa: E402


def run_point(
    data: str, recipe: str | None, minutes: float, seed: int, flags: list[str], out: Path, reuse: bool = False
) -> dict:
    """One budgeted run; its row of the table (also written to the run folder's point.json).

    With ``reuse``, a point whose run folder already holds a point.json is not run again.
    """
    run = out / f"{Path(data).stem}-{recipe or 'default'}-{minutes:g}min-seed{seed}"
    if reuse and (run / "point.json").is_file():
        print(f"reusing {run / 'point.json'}", flush=True)
        return json.loads((run / "point.json").read_text())
    started = time.perf_counter()
    given = [
        "--data",
        data,
        *(["--recipe", recipe] if recipe else []),
        "--time-budget",
        str(minutes),
        "--seed",
        str(seed),
        *flags,
    ]
    report = train_report(run, given)
    row = {
        "data": data,
        "recipe": recipe or "default",
        "minutes": minutes,
        "seed": seed,
        "test_accuracy": report["test"]["accuracy"],
        "test_images": report["test"]["images"],
        "epochs": report["epochs"],
        "steps": report["time_budget"]["done_steps"],
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    (run / "point.json").write_text(json.dumps(row, indent=2))
    return row


def plot(rows: list[dict], title: str, path: Path) -> None:
    """Test accuracy against minutes, one line per seed, on a log-2 minutes axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=120)
    for seed in sorted({r["seed"] for r in rows}):
        points = sorted((r["minutes"], r["test_accuracy"]) for r in rows if r["seed"] == seed)
        ax.plot(*zip(*points), marker="o", label=f"seed {seed}")
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted({r["minutes"] for r in rows}), [f"{m:g}" for m in sorted({r["minutes"] for r in rows})])
    ax.set_xlabel("--time-budget (minutes)")
    ax.set_ylabel("test accuracy")
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _title(data: str, recipe: str) -> str:
    return f"{Path(data).name}, " + ("default settings" if recipe == "default" else f"--recipe {recipe}")


def markdown(rows: list[dict], argv: list[str]) -> str:
    lines = [f"Command: `python benchmarks/budget.py {shlex.join(argv)}`  ", f"{machine_line()}.", ""]
    lines += markdown_table(
        ["budget (min)", "seed", "test accuracy", "test images", "epochs", "steps", "wall s"],
        [
            [
                f"{r['minutes']:g}",
                r["seed"],
                f"{r['test_accuracy']:.4f}",
                r["test_images"],
                r["epochs"],
                r["steps"],
                r["wall_seconds"],
            ]
            for r in rows
        ],
    )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="digits", help="any vitrain --data source (digits)")
    parser.add_argument("--recipe", help="a vitrain recipe (default: none, vitrain's defaults)")
    parser.add_argument("--budgets", default="0.25,0.5,1,2", help="comma-separated minutes (0.25,0.5,1,2)")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds (0)")
    parser.add_argument("--flags", default="", help="extra vitrain train flags for every run")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "benchmarks" / "budget")
    parser.add_argument("--replot", action="store_true", help="only redraw budget.png from --out's budget.json")
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="keep the points already run in --out (their point.json) and run only the missing ones",
    )
    args = parser.parse_args(argv)
    if args.replot:
        rows = json.loads((args.out / "budget.json").read_text())
        plot(rows, _title(rows[0]["data"], rows[0]["recipe"]), args.out / "budget.png")
        return 0
    try:
        budgets = [float(b) for b in args.budgets.split(",")]
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        parser.error(f"--budgets {args.budgets!r} / --seeds {args.seeds!r}: comma-separated numbers expected")
    if any(b <= 0 for b in budgets):
        parser.error(f"--budgets {args.budgets}: every budget must be a positive number of minutes")
    rows = [
        run_point(args.data, args.recipe, minutes, seed, shlex.split(args.flags), args.out, args.reuse)
        for seed in seeds
        for minutes in budgets
    ]
    save_results(args.out, "budget", markdown(rows, argv), rows)
    plot(rows, _title(args.data, args.recipe or "default"), args.out / "budget.png")
    print(f"plot: {args.out / 'budget.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
