"""Accuracy at equal wall-clock budgets on the real datasets in ../shared/datasets.

Each run is a separate ``vitrain train --recipe R --time-budget M`` process, one after the
other (never two at once: they would share the CPU), and each reports test accuracy on the
dataset's test split. The table is printed and written as Markdown and JSON.

    python benchmarks/accuracy.py --budget 15                       # every comparison
    python benchmarks/accuracy.py --budget 15 --only cifar10        # one dataset
    python benchmarks/accuracy.py --budget 15 --only cifar10 --recipes cifar10-vit-tutorial
    python benchmarks/accuracy.py --budget 15 --only flowers17 --recipes folder-best \
        --flags="--pretrain labels --pretrain-img-size 32"   # an option on top of the recipes
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import shlex
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Sequence

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ROOT.parent / "shared" / "datasets"

# dataset -> (archive, extra flags for every recipe, recipes compared). "Scaled to what fits":
# ViT-B/16 at 224 px does a handful of steps in 15 CPU minutes, so the folder sets run at 64 px.
COMPARISONS = {
    "cifar10": ("cifar10.tar", [], ["cifar10-vit-tutorial", "cifar10-best"]),
    "brain-tumor-mri": ("brain-tumor-mri.tar", ["--img-size", "64", "--dedupe"], ["folder-vit-b16", "folder-best"]),
    "flowers17": ("flowers17.tar", ["--img-size", "64"], ["folder-vit-b16", "folder-best"]),
}


def cpuinfo(field: str) -> str | None:
    """The value of the first ``field`` line of /proc/cpuinfo (Linux), or None."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(field) and ":" in line:
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_name() -> str:
    return cpuinfo("model name") or platform.processor() or "unknown CPU"


def train_report(run: Path, flags: list[str], command: str = "train") -> dict:
    """Run ``vitrain COMMAND FLAGS --out RUN --overwrite --no-progress`` (``train``, or
    ``pretrain``) in a fresh process (the command is printed first) and return its report.json."""
    command = [sys.executable, "-m", "vitrain", command, *flags, "--out", str(run), "--overwrite", "--no-progress"]
    print("$", " ".join(command[2:]), flush=True)
    subprocess.run(command, check=True)
    return json.loads((run / "report.json").read_text())


CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def cifar10_sample(target: Path, counts: dict[str, int], datasets: Path = DATASETS) -> Path:
    """``target/{train,test}/<class>/``: a seeded sample (``random.Random(0)``, classes in sorted order)
    of ``counts[class]`` CIFAR-10 training images per class, and the whole test set, as symbolic links
    into one extracted copy of ``datasets/cifar10.tar`` under ``runs/cache`` (built once)."""
    if (target / "test").is_dir():
        return target
    extracted = ROOT / "runs" / "cache" / "cifar10-extracted"
    if not (extracted / "cifar10").is_dir():
        extracted.mkdir(parents=True, exist_ok=True)
        with tarfile.open(datasets / "cifar10.tar") as tar:
            tar.extractall(extracted, filter="data")
    rng = random.Random(0)
    for name in sorted(counts):
        files = sorted((extracted / "cifar10" / "train" / name).iterdir())
        (target / "train" / name).mkdir(parents=True, exist_ok=True)
        for f in rng.sample(files, counts[name]):
            (target / "train" / name / f.name).symlink_to(f.resolve())
    (target / "test").symlink_to((extracted / "cifar10" / "test").resolve(), target_is_directory=True)
    return target


def markdown_table(header: list[str], rows: list[list]) -> list[str]:
    """A Markdown table: the header line, the rule, a line per row."""
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + [
        "| " + " | ".join(str(cell) for cell in row) + " |" for row in rows
    ]


def run_one(dataset: str, recipe: str, budget: float, out: Path, flags: Sequence[str] = ()) -> dict:
    archive, extra, _ = COMPARISONS[dataset]
    extra = [*extra, *flags]
    started = time.perf_counter()
    folder = out / f"{dataset}-{recipe}{''.join(flags).replace('-', '')}"
    report = train_report(
        folder, ["--recipe", recipe, "--data", str(DATASETS / archive), "--time-budget", str(budget), *extra]
    )
    row = {
        "dataset": dataset,
        "recipe": recipe,
        "budget_minutes": budget,
        "extra_flags": " ".join(extra),
        "test_accuracy": report["test"]["accuracy"],
        "test_images": report["test"]["images"],
        "val_accuracy": report["val"]["accuracy"],
        "epochs": report["epochs"],
        "planned_steps": report["time_budget"]["planned_steps"],
        "done_steps": report["time_budget"]["done_steps"],
        "parameters": report["model"]["parameters"],
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    if "pretraining" in report:  # a two-stage run (--pretrain): its first stage's share of the work
        first = report["pretraining"]
        row["first_stage"] = {
            "epochs": first["epochs"],
            "planned_steps": first["time_budget"]["planned_steps"],
            "done_steps": first["time_budget"]["done_steps"],
            "test_accuracy": first.get("test", {}).get("accuracy"),
        }
    return row


def _stages(row: dict, *fields: str) -> str:
    """``fields`` of a row joined by " / ", prefixed with its first stage's and " + " for a two-stage run."""
    text = " / ".join(str(row[f]) for f in fields)
    first = row.get("first_stage")
    return f"{' / '.join(str(first[f]) for f in fields)} + {text}" if first else text


def gpu_name() -> str:
    """The first CUDA GPU's name and torch's version, or "no GPU" (the runs use the GPU when there is one)."""
    import torch

    if not torch.cuda.is_available():
        return "no GPU"
    return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"


def cpu_flags() -> str:
    """The CPU's vector and matrix units that decide its float32/bf16 speed, e.g. "AVX2, AVX-512, AVX512-BF16"."""
    found = cpuinfo("flags")
    if found is None:
        return "flags unknown"
    flags = set(found.split())
    names = {"avx2": "AVX2", "avx512f": "AVX-512", "avx512_bf16": "AVX512-BF16", "amx_bf16": "AMX-BF16"}
    return ", ".join(name for flag, name in names.items() if flag in flags) or "no AVX2"


def code_at() -> str:
    """The commit the benchmark runs at (short hash), with "+changes" when vitrain/ differs from it."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "vitrain"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+changes" if dirty else "")


def machine_line() -> str:
    """The machine, date and code line every benchmark table starts with."""
    return (
        f"Machine: {cpu_name()} ({cpu_flags()}), {__import__('os').cpu_count()} CPU cores, {gpu_name()}; "
        f"date {time.strftime('%Y-%m-%d')}; code at {code_at()}"
    )


def save_results(out: Path, name: str, table: str, rows) -> None:
    """Write ``NAME.md`` and ``NAME.json`` into ``out`` and print the table."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.md").write_text(table)
    (out / f"{name}.json").write_text(json.dumps(rows, indent=2))
    print(table)


def markdown(rows: list[dict], budget: float, argv: list[str]) -> str:
    lines = [
        f"Command: `python benchmarks/accuracy.py {shlex.join(argv)}`  ",
        f"{machine_line()}; budget {budget:g} min per run.",
        "",
    ]
    lines += markdown_table(
        [
            "dataset",
            "recipe",
            "extra flags",
            "test accuracy",
            "test images",
            "epochs",
            "steps done / planned",
            "params",
            "wall s",
        ],
        [
            [
                r["dataset"],
                r["recipe"],
                r["extra_flags"] or "-",
                f"{r['test_accuracy']:.4f}",
                r["test_images"],
                _stages(r, "epochs"),
                _stages(r, "done_steps", "planned_steps"),
                f"{r['parameters'] / 1e6:.2f}M",
                r["wall_seconds"],
            ]
            for r in rows
        ],
    )
    if any("first_stage" in r for r in rows):
        lines += ["", "Two-stage runs (`--pretrain`): epochs and steps of the first stage + the second."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=float, default=15.0, help="minutes per run (15)")
    parser.add_argument("--only", choices=list(COMPARISONS), action="append", help="datasets to run (all)")
    parser.add_argument("--recipes", help="comma-separated subset of each comparison's recipes")
    parser.add_argument(
        "--flags",
        default="",
        help="extra vitrain train flags for every run (an option on top of the recipes; in the table)",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "benchmarks" / "accuracy")
    args = parser.parse_args(argv)
    if not DATASETS.is_dir():
        print(f"benchmarks/accuracy.py needs the archives in {DATASETS}", file=sys.stderr)
        return 2
    wanted = set(args.recipes.split(",")) if args.recipes else None
    rows = []
    for dataset in args.only or list(COMPARISONS):
        for recipe in COMPARISONS[dataset][2]:
            if wanted is None or recipe in wanted:
                rows.append(run_one(dataset, recipe, args.budget, args.out, shlex.split(args.flags)))
    save_results(args.out, "accuracy", markdown(rows, args.budget, argv), rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
