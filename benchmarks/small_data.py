"""Small data: from scratch vs instance-discrimination pretraining + fine-tuning, at equal CPU time.

Two datasets, each trained twice per seed with the same total wall-clock budget:

* ``scratch``: ``--recipe small-data --pretrain none``: the same model, augmentation and
  optimizer, trained on the labels for the whole budget;
* ``pretrain + fine-tune``: ``--recipe small-data`` (half the budget pretraining on the
  training images without labels, half fine-tuning);
* ``labels first + fine-tune`` (``--arms ...,labels-first``, a control): the same two stages
  with labels in both, the first at the pretrain arm's small input (``--recipe small-data
  --pretrain labels``). It separates what the instance task gives from what a cheap
  small-input first stage gives.

flowers17 runs at 64 px (1,360 images; a seeded stratified split). ``cifar10-2040`` is a
stratified 2,040-image subset of CIFAR-10's training set (204 per class, seed 0) at 32 px,
evaluated on the full 10,000-image test set; the subset is built once, as symbolic links
into an extracted copy of ``../shared/datasets/cifar10.tar`` under ``runs/cache`` (ignored
by git). ``--write-subset FILE`` packs that subset (the same image files) into one tar of about
30 MiB; a folder given as ``--datasets`` that holds ``cifar10-2040.tar`` uses it as it
is, so a machine that cannot hold the whole cifar10.tar (a remote GPU machine) runs the same subset.
On a GPU the runs use it (vitrain's ``--device auto``), and the table's machine line says so.

    python benchmarks/small_data.py --minutes 30
    python benchmarks/small_data.py --minutes 10 --only flowers17 --seeds 0,1,2
    python benchmarks/small_data.py --minutes 15 --only flowers17 --arms pretrain \
        --pretrain-flags="--pretrain-img-size 64"     # an ablation of the recipe's first stage
    python benchmarks/small_data.py --minutes 15 --flags="--stem patch"   # both arms: a plain ViT
    python benchmarks/small_data.py --minutes 15 --arms scratch,pretrain,labels-first   # and the control
    python benchmarks/small_data.py --write-subset gpu/cifar10-2040.tar    # then, on a GPU machine:
    python benchmarks/small_data.py --minutes 4 --only cifar10-2040 --datasets gpu
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import tarfile
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

CACHE = ROOT / "runs" / "cache"
SUBSET_PER_CLASS = 204
ARMS = {"scratch": "scratch", "pretrain": "pretrain + fine-tune", "labels-first": "labels first + fine-tune"}


def cifar10_subset(datasets: Path = DATASETS) -> Path:
    """runs/cache/cifar10-2040/{train,test}/<class>/: 204 training images per class, the whole test set.

    Built from ``datasets/cifar10.tar``; where ``datasets`` holds ``cifar10-2040.tar`` instead
    (``--write-subset``), that archive is returned."""
    packed = datasets / "cifar10-2040.tar"
    if packed.is_file():
        return packed
    return cifar10_sample(CACHE / "cifar10-2040", dict.fromkeys(CIFAR10_CLASSES, SUBSET_PER_CLASS), datasets)


def write_subset(path: Path, datasets: Path = DATASETS) -> None:
    """Pack the CIFAR-10 subset (the image files themselves, not the links) into ``path``."""
    folder = cifar10_subset(datasets)
    if folder.is_file():
        raise SystemExit(f"--write-subset: {folder} is already the packed subset")
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w", dereference=True) as tar:
        tar.add(folder, arcname="cifar10-2040")
    print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB)")


def _columns(report: dict) -> dict:
    """What every arm reports, from the report.json of its last (supervised) stage."""
    return {
        "test_accuracy": report["test"]["accuracy"],
        "test_images": report["test"]["images"],
        "total_seconds": report["total_seconds"],
        "train_images": report["splits"]["train"],
        "fine_tune_steps": report["time_budget"]["done_steps"],
    }


def run(data: Path, recipe: str, minutes: float, seed: int, extra: list[str], out: Path) -> dict:
    """One ``vitrain train`` run in a fresh process; its test accuracy and sizes from report.json."""
    report = train_report(
        out, ["--recipe", recipe, "--data", str(data), "--time-budget", str(minutes), "--seed", str(seed), *extra]
    )
    result = _columns(report)
    stage = report.get("pretraining")
    if stage is not None and "instance_accuracy" in stage:
        result.update(
            pretrain_steps=stage["steps"],
            pretrain_loss=round(stage["final_loss"], 4),
            instance_accuracy=round(stage["instance_accuracy"], 4),
        )
        if "knn" in stage:  # --pretrain-flags="--knn-every N"
            result.update(knn_before=round(stage["knn"]["before"], 4), knn_after=round(stage["knn"]["val_accuracy"], 4))
    elif stage is not None:  # a first stage on the labels (--pretrain labels)
        result.update(
            first_steps=stage["time_budget"]["done_steps"],
            first_img_size=stage["model"]["img_size"],
            first_val_accuracy=round(stage["val"]["accuracy"], 4),
        )
    return result


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0, help="total minutes per run (30)")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds (0)")
    parser.add_argument("--only", choices=["flowers17", "cifar10-2040"], action="append")
    parser.add_argument(
        "--arms",
        default="scratch,pretrain",
        help="which of scratch,pretrain,labels-first to run (scratch,pretrain); labels-first is "
        "the control: both stages supervised, the first at --labels-first-img-size",
    )
    parser.add_argument(
        "--labels-first-img-size",
        type=int,
        default=32,
        metavar="PX",
        help="the labels-first arm's first-stage input (32, the recipe's --pretrain-img-size)",
    )
    parser.add_argument(
        "--pretrain-flags",
        default="",
        help="extra vitrain train flags for the pretrain arm (an ablation; named in the table)",
    )
    parser.add_argument(
        "--flags", default="", help="extra vitrain train flags for both arms (a model change, say; named in the table)"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "benchmarks" / "small_data")
    parser.add_argument(
        "--datasets",
        type=Path,
        default=DATASETS,
        help="folder of flowers17.tar and cifar10.tar (or cifar10-2040.tar) (../shared/datasets)",
    )
    parser.add_argument(
        "--write-subset",
        type=Path,
        metavar="FILE",
        help="only pack the CIFAR-10 subset into FILE (a tar), for --datasets elsewhere",
    )
    args = parser.parse_args(argv)
    if args.write_subset:
        write_subset(args.write_subset, args.datasets)
        return 0
    if not set(args.arms.split(",")) <= {"scratch", "pretrain", "labels-first"}:
        parser.error(f"--arms: expected some of scratch,pretrain,labels-first, got {args.arms}")
    if not args.datasets.is_dir():
        print(f"benchmarks/small_data.py needs the archives in {args.datasets}", file=sys.stderr)
        return 2
    datasets = {
        "flowers17": (lambda: args.datasets / "flowers17.tar", ["--img-size", "64"]),
        "cifar10-2040": (lambda: cifar10_subset(args.datasets), ["--img-size", "32"]),
    }
    arms = {
        "scratch": ["--pretrain", "none"],
        "pretrain": args.pretrain_flags.split(),
        "labels-first": ["--pretrain", "labels", "--pretrain-img-size", str(args.labels_first_img_size)],
    }
    rows = []
    for name in args.only or list(datasets):
        source, extra = datasets[name]
        extra = [*extra, *args.flags.split()]
        data = source()
        for seed in [int(s) for s in args.seeds.split(",")]:
            for tag in args.arms.split(","):
                label, flags = ARMS[tag], arms[tag]
                shown = [*args.flags.split(), *(flags if tag == "pretrain" else [])]  # not --pretrain none
                folder = args.out / f"{name}-{tag}{''.join(shown).replace('-', '')}-seed{seed}"
                if tag == "labels-first":
                    shown.append(f"--labels-first-img-size {args.labels_first_img_size}")
                result = run(data, "small-data", args.minutes, seed, [*extra, *flags], folder)
                rows.append({"dataset": name, "method": label, "flags": " ".join(shown), "seed": seed, **result})
    lines = [
        f"Command: `python benchmarks/small_data.py {shlex.join(argv)}`  ",
        f"{machine_line()}; {args.minutes:g} min per run in all",
        "",
        *markdown_table(
            [
                "dataset",
                "method",
                "seed",
                "test accuracy",
                "train images",
                "test images",
                "pretraining steps (final loss, instance acc.)",
                "supervised steps",
                "seconds",
            ],
            [
                [
                    r["dataset"],
                    r["method"] + (f" (`{r['flags']}`)" if r["flags"] else ""),
                    r["seed"],
                    f"{r['test_accuracy']:.4f}",
                    r["train_images"],
                    r["test_images"],
                    f"{r['pretrain_steps']} ({r['pretrain_loss']}, {r['instance_accuracy']}"
                    + (f"; kNN {r['knn_before']} -> {r['knn_after']})" if "knn_after" in r else ")")
                    if "pretrain_steps" in r
                    else (
                        f"{r['first_steps']} supervised at {r['first_img_size']} px "
                        f"(val acc. {r['first_val_accuracy']})"
                    )
                    if "first_steps" in r
                    else "-",
                    r["fine_tune_steps"],
                    r["total_seconds"],
                ]
                for r in rows
            ],
        ),
    ]
    for name in dict.fromkeys(r["dataset"] for r in rows):
        ran = [label for label in ARMS.values() if any(r["dataset"] == name and r["method"] == label for r in rows)]
        if len(ran) < 2:
            continue
        means = {
            m: statistics.mean(r["test_accuracy"] for r in rows if r["dataset"] == name and r["method"] == m)
            for m in ran
        }
        base = ran[0]
        lines.append(
            f"\n{name}: mean test accuracy, "
            + ", ".join(
                f"{m} {means[m]:.4f}" + (f" ({100 * (means[m] - means[base]):+.1f} points)" if m != base else "")
                for m in ran
            )
        )
    save_results(args.out, "small_data", "\n".join(lines) + "\n", rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
