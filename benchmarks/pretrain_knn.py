"""The first stage alone: what instance-discrimination pretraining teaches, by kNN, per setting.

Runs ``vitrain pretrain --recipe small-data`` (the recipe's first stage: its model, 32 px
inputs, InfoNCE, no instance mixing) for the same wall-clock budget once per flag set, and
reports each run's validation 20-nearest-neighbour accuracy on the backbone's features
(``--knn-every``): before training, and at the end. A cheap screen of first-stage settings
before the full two-stage comparison of ``benchmarks/small_data.py``; the untrained
backbone's kNN accuracy is the floor a setting must rise above. On ``cifar10-2040`` the
validation split is only 310 images (a standard error near 3 points), so the backbone is
also scored on 5,000 further CIFAR-10 training images outside the subset (500 per class,
never used for training or testing), with the 2,040 labelled images as neighbours.

    python benchmarks/pretrain_knn.py --minutes 5 --only cifar10-2040 \\
        --variants "|--instance-init features|--instance-smoothing 0.1"
    python benchmarks/pretrain_knn.py --score runs/benchmarks/small_data/cifar10-2040-scratch-seed0 \
        --out runs/benchmarks/knn_scores      # any model trained on the subset, by the same measure
"""

from __future__ import annotations

import argparse
import functools
import random
import shlex
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy import DATASETS, ROOT, machine_line, markdown_table, save_results, train_report  # noqa: E402
from small_data import CACHE, cifar10_subset  # noqa: E402

from vitrain import load_model  # noqa: E402
from vitrain.data import memory  # noqa: E402
from vitrain.data.sources import load_split  # noqa: E402
from vitrain.engine.pretrain import backbone_features, knn_predict  # noqa: E402

HELDOUT_PER_CLASS = 500


def cifar10_heldout() -> Path:
    """runs/cache/cifar10-heldout/<class>/: 500 CIFAR-10 training images per class outside the 2,040-image subset."""
    target = CACHE / "cifar10-heldout"
    if target.is_dir():
        return target
    subset = cifar10_subset()
    rng = random.Random(1)
    for folder in sorted((subset / "train").iterdir()):
        taken = {f.name for f in folder.iterdir()}
        source = CACHE / "cifar10-extracted" / "cifar10" / "train" / folder.name
        files = [f for f in sorted(source.iterdir()) if f.name not in taken]
        (target / folder.name).mkdir(parents=True, exist_ok=True)
        for f in rng.sample(files, HELDOUT_PER_CLASS):
            (target / folder.name / f.name).symlink_to(f.resolve())
    return target


@functools.lru_cache(maxsize=2)
def _images(folder: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Every image under folder/<class>/ as (N, 3, 32, 32) uint8, with class indices in sorted class order."""
    dataset, _, _, _ = load_split(str(folder))  # a folder without split folders: all of its images
    return memory.decode_all(dataset, 32)


def heldout_knn(backbone: Path) -> float:
    """20-NN accuracy of the 5,000 held-out CIFAR-10 images, with the 2,040 labelled images as neighbours.

    The run's own kNN report uses its 310-image validation split; this one, with 16 times
    as many queries from the same distribution (never seen in training or testing), tells
    settings apart that differ by a few points.
    """
    model = load_model(backbone)
    size, mean, std = model.config.img_size, model.meta["mean"], model.meta["std"]
    bank_images, bank_labels = _images(cifar10_subset() / "train")
    query_images, query_labels = _images(cifar10_heldout())
    bank = backbone_features(model, bank_images, size, mean, std)
    queries = backbone_features(model, query_images, size, mean, std)
    predicted = knn_predict(bank, bank_labels, queries, int(bank_labels.max()) + 1)
    return float((predicted == query_labels).float().mean())


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=5.0, help="minutes per pretraining run (5)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", choices=["flowers17", "cifar10-2040"], action="append")
    parser.add_argument(
        "--variants",
        default="",
        help="'|'-separated extra `vitrain pretrain` flags, one run each ('' is the recipe as is)",
    )
    parser.add_argument("--knn-every", type=int, default=5, help="kNN report every N epochs (5)")
    parser.add_argument(
        "--score",
        type=Path,
        action="append",
        metavar="CHECKPOINT",
        help="instead: score these checkpoints or run folders of models trained on the CIFAR-10 "
        "subset (a supervised model, say) by the same held-out kNN; no training",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "benchmarks" / "pretrain_knn")
    args = parser.parse_args(argv)
    if not DATASETS.is_dir():
        print(f"benchmarks/pretrain_knn.py needs the archives in {DATASETS}", file=sys.stderr)
        return 2
    if args.score:
        rows = [{"checkpoint": str(path), "heldout_knn": round(heldout_knn(path), 4)} for path in args.score]
        lines = [
            f"Command: `python benchmarks/pretrain_knn.py {shlex.join(argv)}`  ",
            machine_line(),
            "",
            *markdown_table(
                ["checkpoint", "kNN acc., 5,000 held-out CIFAR-10 images"],
                [[f"`{r['checkpoint']}`", r["heldout_knn"]] for r in rows],
            ),
        ]
        save_results(args.out, "knn_scores", "\n".join(lines) + "\n", rows)
        return 0
    datasets = {"flowers17": lambda: DATASETS / "flowers17.tar", "cifar10-2040": cifar10_subset}
    rows = []
    for name in args.only or list(datasets):
        data = datasets[name]()
        for i, variant in enumerate(args.variants.split("|")):
            flags = [
                "--recipe",
                "small-data",
                "--data",
                str(data),
                "--time-budget",
                str(args.minutes),
                "--seed",
                str(args.seed),
                "--knn-every",
                str(args.knn_every),
                *shlex.split(variant),
            ]
            report = train_report(args.out / f"{name}-{i}", flags, command="pretrain")
            knn = report["knn"]
            rows.append(
                {
                    "dataset": name,
                    "flags": variant.strip(),
                    "steps": report["steps"],
                    "final_loss": round(report["final_loss"], 4),
                    "instance_accuracy": round(report["instance_accuracy"], 4),
                    "knn_before": round(knn["before"], 4),
                    "knn_after": round(knn["val_accuracy"], 4),
                    "val_images": knn["val_images"],
                    "seconds": report["total_seconds"],
                    "heldout_knn": round(heldout_knn(args.out / f"{name}-{i}" / "backbone.safetensors"), 4)
                    if name == "cifar10-2040"
                    else None,
                }
            )
    lines = [
        f"Command: `python benchmarks/pretrain_knn.py {shlex.join(argv)}`  ",
        f"{machine_line()}; {args.minutes:g} min per run, seed {args.seed}",
        "",
        *markdown_table(
            [
                "dataset",
                "extra flags",
                "steps",
                "final loss",
                "instance acc.",
                "kNN val acc. untrained",
                "kNN val acc. pretrained",
                "val images",
                "kNN acc., 5,000 held-out images",
                "seconds",
            ],
            [
                [
                    r["dataset"],
                    f"`{r['flags']}`" if r["flags"] else "(recipe)",
                    r["steps"],
                    r["final_loss"],
                    r["instance_accuracy"],
                    r["knn_before"],
                    r["knn_after"],
                    r["val_images"],
                    "-" if r["heldout_knn"] is None else r["heldout_knn"],
                    r["seconds"],
                ]
                for r in rows
            ],
        ),
    ]
    save_results(args.out, "pretrain_knn", "\n".join(lines) + "\n", rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
