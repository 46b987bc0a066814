"""What progressive resizing (small inputs first) could buy a recipe's budgeted run: the step's
speed at every input size its token grid allows, and an upper bound on the extra images.

For each input side that is a multiple of the patch size (from two patches across up to the
recipe's ``img_size``), a fresh copy of the recipe's model is compiled as ``vitrain train
--compile on`` compiles it (one graph per input shape), in the precision ``--precision auto``
takes for it, and its training step on random images is timed. PyTorch's compile caches are
off, so each shape's compile time is what a run on a fresh machine pays. The sizes are timed in turn
over several rounds and the median kept, so a drift in the machine's speed reaches every
size alike.

From those timings it prints, for each schedule "the first F of the training images at side S,
the rest at the full side", how many images a run training for ``--train-seconds`` would see
against a run at the full side throughout, after paying the extra compile. That is an upper
bound on what the schedule gives: an image seen at a lower resolution teaches at most what
it teaches at the full one.

    python benchmarks/progressive.py --recipe cifar10-best --train-seconds 820
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch._inductor.config

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vitrain.config import config_from_dict  # noqa: E402
from vitrain.engine.build import model_arch  # noqa: E402
from vitrain.engine.measured import probe_copy, train_step  # noqa: E402
from vitrain.engine.precision import choose_precision  # noqa: E402
from vitrain.models.vit import VisionTransformer  # noqa: E402
from vitrain.recipes import get_recipe  # noqa: E402

FRACTIONS = (1 / 3, 1 / 2)  # the share of the training images seen at the lower side


def sides(img_size: int, patch_size: int) -> list[int]:
    """Input sides a ``patch_size`` grid accepts, from two patches across up to ``img_size``."""
    return list(range(2 * patch_size, img_size + 1, patch_size))


def measure(recipe: str, batch_size: int | None, rounds: int, steps: int) -> dict:
    """Compile seconds and median seconds per training step of ``recipe``'s model at each side."""
    cfg = config_from_dict({**get_recipe(recipe).config, "channels": 3, "classes": [str(c) for c in range(10)]})
    batch = batch_size or cfg.batch_size
    torch.manual_seed(0)
    model = VisionTransformer(model_arch(cfg))
    model.dynamic_img_size = True
    torch._inductor.config.force_disable_caches = True  # time cold compiles, as a fresh machine pays them
    precision = choose_precision("auto", torch.device("cpu"), model, batch)
    probe, optimizer, _, labels = probe_copy(model, batch)
    compiled = torch.compile(probe, dynamic=False)
    all_sides = sides(cfg.img_size, cfg.patch_size)
    images = {side: torch.randn(batch, model.config.in_chans, side, side) for side in all_sides}

    def step(side: int) -> None:
        train_step(compiled, optimizer, images[side], labels, precision.dtype)

    compile_s = {}
    for side in all_sides:  # the first two steps at each shape compile it
        start = time.perf_counter()
        step(side)
        step(side)
        compile_s[side] = time.perf_counter() - start
    timings: dict[int, list[float]] = {side: [] for side in all_sides}
    for _ in range(rounds):
        for side in all_sides:
            start = time.perf_counter()
            for _ in range(steps):
                step(side)
            timings[side].append((time.perf_counter() - start) / steps)
    step_s = {side: statistics.median(t) for side, t in timings.items()}
    return {
        "recipe": recipe,
        "batch_size": batch,
        "precision": precision.name,
        "img_size": cfg.img_size,
        "patch_size": cfg.patch_size,
        "threads": torch.get_num_threads(),
        "compile_s": compile_s,
        "step_s": step_s,
    }


def bounds(result: dict, train_seconds: float) -> list[dict]:
    """For each lower side and fraction: images trained on in ``train_seconds``, as a ratio to the full side's."""
    full = result["img_size"]
    t_full = result["step_s"][full]
    rows = []
    for side, t_side in result["step_s"].items():
        if side == full:
            continue
        for fraction in FRACTIONS:
            seconds_per_image = (fraction * t_side + (1 - fraction) * t_full) / result["batch_size"]
            images = (train_seconds - result["compile_s"][side]) / seconds_per_image
            rows.append(
                {
                    "side": side,
                    "fraction": fraction,
                    "images_ratio": images / (train_seconds / t_full * result["batch_size"]),
                }
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", default="cifar10-best")
    parser.add_argument("--batch-size", type=int, default=None, help="the recipe's when not given")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of timing, every side in turn (median kept)")
    parser.add_argument("--steps", type=int, default=10, help="steps timed per side per round")
    parser.add_argument(
        "--train-seconds", type=float, default=820.0, help="seconds a budgeted run trains for (the bound's horizon)"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = measure(args.recipe, args.batch_size, args.rounds, args.steps)
    result["bounds"] = bounds(result, args.train_seconds)
    full = result["img_size"]
    print(
        f"{args.recipe}: batch {result['batch_size']}, {result['precision']}, compiled, "
        f"{result['threads']} threads, torch {torch.__version__}"
    )
    print("| input side | tokens | images/s | speed vs full side | compile s |\n|---|---|---|---|---|")
    for side, t in result["step_s"].items():
        tokens = (side // result["patch_size"]) ** 2
        print(
            f"| {side} | {tokens} | {result['batch_size'] / t:,.0f} | {result['step_s'][full] / t:.2f}x "
            f"| {result['compile_s'][side]:.1f} |"
        )
    print(f"\nupper bound, {args.train_seconds:.0f} s of training, extra compile paid:")
    print("| first part at side | share of images | images trained on vs full side |\n|---|---|---|")
    for row in result["bounds"]:
        print(f"| {row['side']} | {row['fraction']:.2f} | {row['images_ratio']:.2f}x |")
    if args.json:
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
