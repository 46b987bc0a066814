"""Where a training step's time goes: the in-memory loader alone, the model step alone, both
together, and a torch.profiler table of the whole step.

The step is the one ``vitrain train`` runs (autocast as ``--precision`` says, fused AdamW, label
smoothing, gradient-norm check, per-step LR schedule, on-device accumulators), on random
CIFAR-sized images, so no dataset is needed. Used to find host-side overhead on a GPU,
where a small ViT's step is launch-bound:

    python benchmarks/step_profile.py --recipe cifar10-best --batch-sizes 64,512 --device cuda
    python benchmarks/step_profile.py --recipe cifar10-best --batch-sizes 64 --device cpu --steps 20
    python benchmarks/step_profile.py --recipe cifar10-best --batch-sizes 64 --device cpu --precisions fp32,bf16
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vitrain.config import config_from_dict  # noqa: E402
from vitrain.data import memory  # noqa: E402
from vitrain.engine.bench import _sync, _time  # noqa: E402
from vitrain.engine.build import model_arch  # noqa: E402
from vitrain.engine.device import resolve_device  # noqa: E402
from vitrain.engine.distributed import Dist  # noqa: E402
from vitrain.engine.optim import build_optimizer, build_scheduler  # noqa: E402
from vitrain.engine.precision import choose_precision  # noqa: E402
from vitrain.engine.runtime import use_cuda_graphs  # noqa: E402
from vitrain.models.vit import VisionTransformer  # noqa: E402
from vitrain.recipes import get_recipe  # noqa: E402

MEAN, STD = [0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616]


def _timed(fn, steps: int, device: torch.device) -> float:
    """Seconds per call of ``fn`` over ``steps`` calls (after two untimed ones)."""
    fn(), fn()
    return _time(fn, steps, device)


def measure(
    recipe: str, batch_size: int, device: torch.device, compiled: bool, steps: int, profile: bool, precision: str
) -> dict:
    """Seconds per batch of the loader, the step and both, for ``recipe``'s model at ``batch_size``
    in ``precision`` (``auto``: what ``vitrain train --precision auto`` would take for it)."""
    cfg = config_from_dict(
        {**get_recipe(recipe).config, "batch_size": batch_size, "channels": 3, "classes": [str(c) for c in range(10)]}
    )
    torch.manual_seed(0)
    images = torch.randint(0, 256, (45_000, 3, cfg.img_size, cfg.img_size), dtype=torch.uint8)
    targets = torch.randint(0, 10, (45_000,))
    augment = memory.BatchAugment(
        cfg.img_size, cfg.augment, MEAN, STD, resized_crop=False, hflip=cfg.hflip, random_erasing=cfg.random_erasing
    )
    loader = memory.MemoryLoader(
        images, targets, batch_size, shuffle=True, mean=MEAN, std=STD, augment=augment, device=device, drop_last=True
    )
    model = VisionTransformer(model_arch(cfg)).to(device).train()
    graphs = use_cuda_graphs("on" if compiled else "off", device, Dist())  # as vitrain train decides (one process)
    step_model = torch.compile(model, mode="reduce-overhead" if graphs else None) if compiled else model
    optimizer = build_optimizer(model, cfg, device)
    scheduler = build_scheduler(optimizer, cfg, len(loader), 10**6)
    amp = choose_precision(precision, device, model, batch_size).dtype
    loss_sum = torch.zeros((), device=device)
    batches = iter(())

    def next_batch():
        nonlocal batches
        try:
            return next(batches)
        except StopIteration:
            batches = iter(loader)
            return next(batches)

    def step(images, labels):
        if graphs:
            torch.compiler.cudagraph_mark_step_begin()
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            logits = step_model(images)
            loss = F.cross_entropy(logits, labels, label_smoothing=cfg.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), math.inf)
        optimizer.step()
        scheduler.step()
        loss_sum.add_(loss.detach().float() * labels.shape[0])
        return grad_norm

    fixed = next_batch()
    result = {
        "recipe": recipe,
        "batch_size": batch_size,
        "device": str(device),
        "compiled": compiled,
        "precision": "bf16" if amp else "fp32",
        "loader_s": _timed(next_batch, steps, device),
        "step_s": _timed(lambda: step(*fixed), steps, device),
        "loop_s": _timed(lambda: step(*next_batch()), steps, device),
    }
    result["loop_images_per_s"] = batch_size / result["loop_s"]
    if profile:
        activities = [torch.profiler.ProfilerActivity.CPU] + (
            [torch.profiler.ProfilerActivity.CUDA] if device.type == "cuda" else []
        )
        with torch.profiler.profile(activities=activities) as prof:
            for _ in range(20):
                step(*next_batch())
            _sync(device)
        table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30)
        print(f"--- profile, batch {batch_size}, 20 steps, by self CPU time ---\n{table}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", default="cifar10-best")
    parser.add_argument("--batch-sizes", default="64,512")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--compile", choices=["on", "off", "both"], default="both")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument(
        "--precisions", default="auto", help="comma-separated: auto (as vitrain train decides), fp32, bf16"
    )
    parser.add_argument("--profile", action="store_true", help="also print a torch.profiler table per batch size")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    device = resolve_device(args.device)
    modes = {"on": [True], "off": [False], "both": [False, True]}[args.compile]
    rows = []
    print(f"{args.recipe} on {device}, {torch.get_num_threads()} threads, torch {torch.__version__}", flush=True)
    for batch_size in (int(b) for b in args.batch_sizes.split(",")):
        for precision in args.precisions.split(","):
            for compiled in modes:
                profile = args.profile and compiled == modes[-1]
                row = measure(args.recipe, batch_size, device, compiled, args.steps, profile, precision)
                rows.append(row)
                _print(row)
    if args.json:
        print(json.dumps(rows, indent=2))


def _print(row: dict) -> None:
    print(
        f"batch {row['batch_size']:5d} {row['precision']} compile {'on ' if row['compiled'] else 'off'}"
        f"  loader {row['loader_s'] * 1e3:7.2f} ms"
        f"  step {row['step_s'] * 1e3:7.2f} ms  loader+step {row['loop_s'] * 1e3:7.2f} ms"
        f"  = {row['loop_images_per_s']:9.0f} img/s",
        flush=True,
    )


if __name__ == "__main__":
    main()
