"""Single-image prediction latency: vitrain's ViT-Ti/16 vs timm's, same weights, same process.

Three measurements on one 500 x 375 JPEG, batch 1, ``torch.inference_mode``:

* ``forward``: the model alone on a preprocessed tensor;
* ``file -> top-5``: decode the file, resize/crop/normalize, forward, softmax, top 5. For
  vitrain that is the path ``vitrain predict`` takes (``read_image`` and the checkpoint's
  evaluation transform); for timm it is PIL plus ``timm.data.create_transform`` for the
  model's data config (ImageNet statistics, crop 0.875, bicubic);
* ``vitrain predict`` as a command: the wall time of ``python -m vitrain predict CKPT FILE``,
  start-up (Python, torch imports, checkpoint loading) included. timm ships no command to
  compare it with, so it has no ratio. Beside it, the floor under any such command:
  ``python -c "import torch, torchvision.transforms.v2, PIL.Image"`` (the libraries
  ``predict`` cannot do without), timed the same way.

The in-process timings are interleaved (vitrain, timm, vitrain, ...) and the median of
``--repeats`` is reported, as ratios timm / vitrain (above 1: vitrain is faster).

    python benchmarks/latency.py
    python benchmarks/latency.py --repeats 100 --json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vitrain.checkpoint import save_model  # noqa: E402
from vitrain.data.images import read_image  # noqa: E402
from vitrain.data.transforms import eval_transform_for  # noqa: E402
from vitrain.models.registry import create_model  # noqa: E402


def _timed(fn):
    def run() -> float:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=50, help="timed calls per measurement (50)")
    parser.add_argument("--cli-repeats", type=int, default=3, help="runs of the predict command (3)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    import timm
    from timm.data import create_transform, resolve_data_config

    torch.manual_seed(0)
    ours = create_model("vit-ti16", num_classes=1000).eval()
    ours.meta.update(
        classes=[f"class{i}" for i in range(1000)],
        mean=[0.485, 0.456, 0.406],
        std=[0.229, 0.224, 0.225],
        crop_pct=0.875,
    )
    theirs = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=1000).eval()
    theirs.load_state_dict(ours.state_dict())
    work = Path(tempfile.mkdtemp(prefix="vitrain-latency-"))
    image = work / "photo.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (375, 500, 3), dtype=np.uint8)).save(image, quality=90)
    checkpoint = work / "vit-ti16.safetensors"
    save_model(checkpoint, ours)

    ours_tf = eval_transform_for(ours.meta, 224)
    theirs_tf = create_transform(**resolve_data_config({}, model=theirs))
    x = ours_tf(read_image(image, 3))[None]
    with torch.inference_mode():
        diff = float((ours(x) - theirs(x)).abs().max())

    def ours_file() -> None:
        with torch.inference_mode():
            ours(ours_tf(read_image(image, 3))[None]).softmax(1).topk(5)

    def theirs_file() -> None:
        with Image.open(image) as img, torch.inference_mode():
            theirs(theirs_tf(img.convert("RGB"))[None]).softmax(1).topk(5)

    def forward(model):
        def run() -> None:
            with torch.inference_mode():
                model(x)

        return run

    pairs = {"forward": (forward(ours), forward(theirs)), "file -> top-5": (ours_file, theirs_file)}
    times: dict[str, tuple[list[float], list[float]]] = {k: ([], []) for k in pairs}
    for ours_fn, theirs_fn in pairs.values():  # warm-up
        for _ in range(3):
            ours_fn(), theirs_fn()
    for _ in range(args.repeats):
        for name, (ours_fn, theirs_fn) in pairs.items():
            times[name][0].append(_timed(ours_fn)())
            times[name][1].append(_timed(theirs_fn)())
    rows = []
    for name, (a, b) in times.items():
        ours_ms, theirs_ms = 1000 * statistics.median(a), 1000 * statistics.median(b)
        rows.append(
            {
                "measure": name,
                "vitrain_ms": round(ours_ms, 2),
                "timm_ms": round(theirs_ms, 2),
                "timm_over_vitrain": round(theirs_ms / ours_ms, 3),
            }
        )
    cli, floor = [], []
    for _ in range(args.cli_repeats):  # interleaved, like the in-process timings
        start = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "vitrain",
                "predict",
                str(checkpoint),
                str(image),
                "--out",
                str(work / "predictions"),
            ],
            check=True,
            capture_output=True,
        )
        cli.append(time.perf_counter() - start)
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, "-c", "import torch, torchvision.transforms.v2, PIL.Image"],
            check=True,
            capture_output=True,
        )
        floor.append(time.perf_counter() - start)
    result = {
        "model": "vit-ti16 (5.7M parameters, 1000 classes), 224 px, batch 1",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "max_logit_diff": diff,
        "repeats": args.repeats,
        "rows": rows,
        "predict_command_seconds": round(statistics.median(cli), 2),
        "import_floor_seconds": round(statistics.median(floor), 2),
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{result['model']}; {result['threads']} threads; logits differ by at most {diff:.2e}")
    print("| measure | vitrain ms | timm ms | timm / vitrain |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['measure']} | {r['vitrain_ms']} | {r['timm_ms']} | {r['timm_over_vitrain']:.2f}x |")
    print(
        f"`vitrain predict CKPT FILE` as a command, start-up included: {result['predict_command_seconds']} s "
        f"(median of {args.cli_repeats}); importing torch, torchvision's transforms and PIL alone: "
        f"{result['import_floor_seconds']} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
