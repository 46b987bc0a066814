"""Augmented images per second: vitrain's in-memory batched pipeline vs torchvision's DataLoader + PIL.

Both produce normalized float batches of CIFAR-10 training images with the same
augmentation (pad-and-crop + flip, optionally AutoAugment or RandAugment). The baseline is
what tutorials write: ``torchvision.datasets.ImageFolder`` with a v2 pipeline on PIL
images, a DataLoader with one worker per core. vitrain decodes once (timed separately),
then augments whole batches in this process. The model's training throughput (the
``cifar10-best`` architecture, in float32 and bf16, eager and compiled) is measured too,
since the goal is a pipeline that is never the bottleneck (at least 10x the fastest model).

    python benchmarks/pipeline.py                 # needs ../shared/datasets/cifar10.tar
    python benchmarks/pipeline.py --json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
import torchvision
from torch.utils.data import DataLoader
from torchvision.transforms import v2

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vitrain.config import config_from_dict  # noqa: E402
from vitrain.data import memory  # noqa: E402
from vitrain.data.archive import extract_archive  # noqa: E402
from vitrain.data.sources import FileImageDataset  # noqa: E402
from vitrain.engine.build import model_arch  # noqa: E402
from vitrain.engine.compiling import time_compiled  # noqa: E402
from vitrain.models.vit import VisionTransformer  # noqa: E402
from vitrain.recipes import get_recipe  # noqa: E402

ARCHIVE = ROOT.parent / "shared" / "datasets" / "cifar10.tar"
MEAN, STD = [0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616]
POLICIES = {
    "flip-crop": None,
    "autoaugment": lambda: v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10),
    "randaugment": v2.RandAugment,
}


def torchvision_loader(root: Path, augment: str, batch_size: int, workers: int) -> DataLoader:
    steps = [v2.RandomCrop(32, padding=4), v2.RandomHorizontalFlip()]
    if POLICIES[augment] is not None:
        steps.append(POLICIES[augment]())
    steps += [v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)]
    dataset = torchvision.datasets.ImageFolder(str(root), transform=v2.Compose(steps))
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers, persistent_workers=True)


def images_per_second(loader, batches: int) -> float:
    it = iter(loader)
    next(it)  # workers started, first batch ready
    start = time.perf_counter()
    n = 0
    for _ in range(batches):
        n += len(next(it)[1])
    return n / (time.perf_counter() - start)


def model_images_per_second(batch_size: int, steps: int = 30) -> dict[str, float]:
    """Training images per second of the cifar10-best architecture, eager and compiled, in float32 and
    under bf16 autocast (the ways ``vitrain train`` may run it), with fused AdamW."""
    recipe = get_recipe("cifar10-best").config
    cfg = config_from_dict({**recipe, "channels": 3, "classes": [str(c) for c in range(10)]})
    torch.manual_seed(0)
    model = VisionTransformer(model_arch(cfg))  # the architecture `vitrain train --recipe cifar10-best` builds
    found = {}
    for name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        timing = time_compiled(model, batch_size, dtype, steps=steps)
        found[f"{name} eager"] = batch_size / timing["eager"]
        found[f"{name} compiled"] = batch_size / timing["compiled"]
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--batches", type=int, default=40, help="batches timed per pipeline (40)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    if not ARCHIVE.is_file():
        print(f"benchmarks/pipeline.py needs {ARCHIVE}", file=sys.stderr)
        return 2
    workers = os.cpu_count() or 1
    root = extract_archive(ARCHIVE) / "cifar10" / "train"
    folder = torchvision.datasets.ImageFolder(str(root))  # the same 50,000 files the baseline reads
    files = FileImageDataset([Path(p) for p, _ in folder.samples], [t for _, t in folder.samples], channels=3)
    start = time.perf_counter()
    images, targets = memory.decode_all(files, 32, workers=workers)
    decode_seconds = time.perf_counter() - start
    rows = []
    for augment in POLICIES:
        aug = memory.BatchAugment(32, augment, MEAN, STD, resized_crop=False)
        ours = memory.MemoryLoader(images, targets, args.batch_size, shuffle=True, mean=MEAN, std=STD, augment=aug)
        theirs = torchvision_loader(root, augment, args.batch_size, workers)
        rows.append(
            {
                "augment": augment,
                "vitrain_images_per_s": images_per_second(ours, args.batches),
                "torchvision_images_per_s": images_per_second(theirs, args.batches),
            }
        )
    model_batch = int(get_recipe("cifar10-best").config["batch_size"])  # the batch the recipe trains with
    speeds = model_images_per_second(model_batch)
    fastest = max(speeds, key=speeds.get)
    model = speeds[fastest]
    result = {
        "machine": f"{os.cpu_count()} CPU cores, torch {torch.__version__}",
        "images": len(targets),
        "decode_seconds": round(decode_seconds, 2),
        "model_train_images_per_s": {k: round(v, 1) for k, v in speeds.items()},
        "fastest_model": fastest,
        "model_batch_size": model_batch,
        "batch_size": args.batch_size,
        "rows": rows,
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(
        f"decode once: {len(targets)} images in {decode_seconds:.1f}s; the cifar10-best model trains at "
        + ", ".join(f"{v:.0f} images/s {k}" for k, v in speeds.items())
        + f" (batch {model_batch}); the last column is against the fastest, {fastest}\n"
    )
    print("| augmentation | vitrain in-memory img/s | torchvision DataLoader + PIL img/s | ratio | vitrain / model |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['augment']} | {r['vitrain_images_per_s']:.0f} | {r['torchvision_images_per_s']:.0f} | "
            f"{r['vitrain_images_per_s'] / r['torchvision_images_per_s']:.1f}x | "
            f"{r['vitrain_images_per_s'] / model:.1f}x |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
