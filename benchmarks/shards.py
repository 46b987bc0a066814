"""Images per second from WebDataset shards against the same images as files, in one run.

Writes the training images of a folder (default ``../shared/datasets/brain-tumor-mri.tar``,
224 px JPEGs) as shards with ``vitrain shards``' code, then times the training loader of
each (the file pipeline: decode, augment, batch; no model) over the same number of batches,
with the same workers, alternately in this process (the median of ``--rounds`` timings); also the time the shards'
scan takes (what ``--data SHARDS`` reads once before training), and the peak memory of a
process that scans and streams an epoch of half the training shards, then of all::

    python benchmarks/shards.py                       # writes runs/bench/shards.json
    python benchmarks/shards.py --workers 1 --batches 100

The JSON records the CPU; compare the two rows of one run only.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vitrain.config import TrainConfig  # noqa: E402
from vitrain.data.shards import shard_splits, write_shards  # noqa: E402
from vitrain.data.sources import load_data  # noqa: E402
from vitrain.engine.build import build_loaders, resolve_config_for_data  # noqa: E402

ARCHIVE = ROOT.parent / "shared" / "datasets" / "brain-tumor-mri.tar"


def cpu() -> str:
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = re.search(r"model name\s*:\s*(.*)", info)
    flags = set(re.search(r"flags\s*:\s*(.*)", info)[1].split()) if "flags" in info else set()
    return f"{model[1] if model else '?'} ({', '.join(f for f in ('avx2', 'avx512f', 'amx_bf16') if f in flags)})"


def images_per_second(splits, args) -> float:
    cfg = TrainConfig(
        data=splits.name, model=args.model, in_memory="off", workers=args.workers, batch_size=args.batch_size
    )
    cfg = resolve_config_for_data(cfg, splits)
    loader = build_loaders(cfg, splits, torch.device("cpu"), log=lambda *a: None)["train"]
    loader.generator.manual_seed(0)
    seen, t0 = 0, 0.0
    for i, (images, _) in enumerate(loader):
        if i == 2:  # the workers' start is not counted
            seen, t0 = 0, time.perf_counter()
        seen += len(images)
        if i + 1 == args.batches + 2:
            break
    return seen / (time.perf_counter() - t0)


# a process that scans the first N training shards and streams an epoch of them: its peak memory (KiB)
PEAK = """
import resource, sys, torch
from pathlib import Path
from vitrain.data.shards import ShardLoader, ShardStream, read_classes, scan_split
root, n = Path(sys.argv[1]), int(sys.argv[2])
split = scan_split(root, "train", len(read_classes(root)))
for name in ("shards", "counts"):
    setattr(split, name, getattr(split, name)[:n])
split.targets = split.targets[: sum(split.counts)]
stream = ShardStream(split, lambda image: image.float(), 64)
images = sum(len(labels) for _, labels in ShardLoader(stream, batch_size=None, generator=torch.Generator()))
print(images, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def peak_memory(root: Path, shards: int) -> tuple[int, int]:
    """(images streamed, peak RSS in KiB) of one epoch over the first ``shards`` training shards."""
    import subprocess

    done = subprocess.run(
        [sys.executable, "-c", PEAK, str(root), str(shards)], capture_output=True, text=True, check=True, cwd=ROOT
    )
    images, peak = map(int, done.stdout.split())
    return images, peak


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(ARCHIVE))
    parser.add_argument("--model", default="vit-ti16", help="decides the input size and augmentation (224 px)")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--batches", type=int, default=60)
    parser.add_argument("--shard-size", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3, help="timings of each, alternated (3)")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench" / "shards.json")
    args = parser.parse_args(argv)
    if not Path(args.data).exists():
        print(f"benchmarks/shards.py needs {args.data}", file=sys.stderr)
        return 2
    files = load_data(args.data)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        write_shards({"train": files.train, "val": files.val}, files.classes, Path(tmp), args.shard_size, log=print)
        written = time.perf_counter() - t0
        t0 = time.perf_counter()
        streamed = shard_splits(Path(tmp))
        scanned = time.perf_counter() - t0
        rounds: dict[str, list[float]] = {"files": [], "shards": []}
        for _ in range(args.rounds):  # alternated, so that a drift of the machine's speed hits both
            rounds["files"].append(images_per_second(files, args))
            rounds["shards"].append(images_per_second(streamed, args))
        rows = {k: statistics.median(v) for k, v in rounds.items()}
        half = len(streamed.train.shards) // 2
        memory = [peak_memory(Path(tmp), n) for n in (half, 2 * half)]
    result = {
        "command": " ".join(["python", "benchmarks/shards.py", *(argv if argv is not None else sys.argv[1:])]),
        "cpu": cpu(),
        "torch_threads": torch.get_num_threads(),
        "data": args.data,
        "training_images": len(files.train),
        "workers": args.workers,
        "batch_size": args.batch_size,
        "images_per_second_median": {k: round(v, 1) for k, v in rows.items()},
        "images_per_second_rounds": {k: [round(x, 1) for x in v] for k, v in rounds.items()},
        "shards_over_files": round(rows["shards"] / rows["files"], 3),
        "write_seconds": round(written, 1),
        "scan_seconds": round(scanned, 1),
        "peak_rss_mib_of_a_streamed_epoch": {f"{images} images": round(kib / 1024) for images, kib in memory},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
