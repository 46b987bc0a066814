"""The JAX backend against the PyTorch backend (eager and ``torch.compile``) and timm, as ratios.

Throughput: each implementation trains (and evaluates) through the backend ``vitrain train``
uses, on random images: ``JaxBackend.train_step`` (the Flax ViT, optax, one jitted step),
``TorchBackend.train_step`` (vitrain's ViT, eager or compiled), and the same PyTorch step with
timm's ``VisionTransformer`` holding the same weights. All start from the same weights and use
the recipe's optimizer, clipping and dropout. Timing is interleaved (each repetition times every
implementation once, in turn) and the median over repetitions is reported, in one process; the
first step of each (where JAX and ``torch.compile`` compile) is timed apart, with both
compilation caches off so that it is a real compilation. Inference is ``evaluate()`` of one
batch; for ``pytorch+compile`` the evaluated model is compiled too (``vitrain train``
evaluates its eager model).

    python benchmarks/jax_vs_torch.py                                   # both configs, fp32 and bf16
    python benchmarks/jax_vs_torch.py --configs tutorial --precisions fp32 --repeats 3

Accuracy at one budget: ``--budget MINUTES`` also runs the ``cifar10-vit-tutorial`` recipe on
CIFAR-10 (``../shared/datasets/cifar10.tar``) for that many minutes with each backend, one after
the other, and reports their test accuracy (``benchmarks/accuracy.py`` runs them).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

# the first call's time is a compilation, not a cache hit (inductor's cache; JAX's is turned off below)
os.environ.setdefault("TORCHINDUCTOR_FORCE_DISABLE_CACHES", "1")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from accuracy import machine_line, markdown_table, run_one  # noqa: E402

from vitrain.config import TrainConfig  # noqa: E402
from vitrain.engine.jax_backend import JaxBackend  # noqa: E402
from vitrain.engine.torch_backend import TorchBackend  # noqa: E402
from vitrain.place import Dist  # noqa: E402


@dataclass(frozen=True)
class Config:
    """An architecture, its batch size and the recipe settings its step runs with."""

    name: str
    batch_size: int
    settings: dict = field(default_factory=dict)


CONFIGS = {
    # the cifar10-vit-tutorial recipe's model and step: dropout 0.2, AdamW 3e-4, weight decay 0.01, clipping 1.0
    "tutorial": Config(
        "tutorial",
        128,
        dict(
            img_size=32,
            patch_size=4,
            embed_dim=256,
            depth=6,
            num_heads=8,
            mlp_dim=512,
            dropout=0.2,
            clip_grad=1.0,
            lr=3e-4,
        ),
    ),
    # the default digits job's model: 8 px grayscale, 16 tokens, average pooling, batch 32 (AdamW 1e-3)
    "digits": Config(
        "digits",
        32,
        dict(
            img_size=8, patch_size=2, embed_dim=64, depth=4, num_heads=4, mlp_dim=128, pool="avg", channels=1, lr=1e-3
        ),
    ),
    "vit-ti16": Config(
        "vit-ti16", 32, dict(img_size=224, patch_size=16, embed_dim=192, depth=12, num_heads=3, mlp_dim=768, lr=3e-4)
    ),
}
IMPLEMENTATIONS = ("pytorch", "pytorch+compile", "timm", "jax")


def train_config(config: Config, precision: str, compile: str = "off") -> TrainConfig:
    """A resolved config for ``config`` (10 classes), as a run would save it."""
    channels = config.settings.get("channels", 3)
    return TrainConfig(
        model="vit",
        classes=[str(i) for i in range(10)],
        mean=[0.5] * channels,
        std=[0.25] * channels,
        crop_pct=1.0,
        stem="patch",
        distilled=False,
        norm_eps=1e-6,
        drop_path=0.0,
        batch_size=config.batch_size,
        optimizer="adamw",
        weight_decay=0.01,
        precision=precision,
        compile=compile,
        **{"dropout": 0.0, "clip_grad": 0.0, "pool": "cls", "channels": 3, **config.settings},
    )


def build(name: str, config: Config, precision: str):
    """The backend that trains ``config`` as ``name`` says, started for a long run."""
    splits = SimpleNamespace(train=range(50_000))  # the backends read the training split's size only
    cfg = train_config(config, precision, compile="on" if name == "pytorch+compile" else "off")
    if name == "jax":
        backend = JaxBackend(cfg, splits, torch.device("cpu"), Dist())
    else:
        backend = TorchBackend(cfg, splits, torch.device("cpu"), Dist())
    if name == "timm":
        import timm.models.vision_transformer as timm_vit

        s = config.settings
        timm_model = timm_vit.VisionTransformer(
            img_size=s["img_size"],
            patch_size=s["patch_size"],
            embed_dim=s["embed_dim"],
            depth=s["depth"],
            num_heads=s["num_heads"],
            mlp_ratio=s["mlp_dim"] / s["embed_dim"],
            num_classes=10,
            in_chans=s.get("channels", 3),
            class_token=s.get("pool", "cls") == "cls",
            global_pool="avg" if s.get("pool") == "avg" else "token",
            fc_norm=False,  # vitrain normalizes the tokens, then pools
            qkv_bias=True,
            pos_drop_rate=s.get("dropout", 0.0),  # where vitrain's --dropout applies (timm's drop_rate is the head's)
            proj_drop_rate=s.get("dropout", 0.0),
            attn_drop_rate=s.get("dropout", 0.0),
        )
        timm_model.load_state_dict(backend.model.state_dict())  # vitrain's names are timm's
        backend.model = backend.eval_model = backend.step_model = timm_model
    if name == "pytorch+compile":  # the step is compiled by start(); evaluation too, here
        backend.eval_model = torch.compile(backend.eval_model)
    backend.start(10_000, 100)
    backend.start_epoch(1)
    return backend


def timed_pair(backend, images: torch.Tensor, labels: torch.Tensor) -> dict[str, Callable[[], None]]:
    """A training step and an evaluation of one batch, each waiting for its result."""
    batch = [(images, labels)]
    return {
        "train": lambda: float(backend.train_step(images, labels).loss),
        "inference": lambda: backend.evaluate(batch),
    }


def measure(config: Config, precision: str, names: tuple[str, ...], repeats: int, steps: int) -> list[dict]:
    """Images/s of each implementation (median over interleaved repetitions), training and inference."""
    generator = torch.Generator().manual_seed(0)
    size, channels = config.settings["img_size"], config.settings.get("channels", 3)
    images = torch.randn(config.batch_size, channels, size, size, generator=generator)
    labels = torch.randint(0, 10, (config.batch_size,), generator=generator)
    backends = {name: build(name, config, precision) for name in names}
    fns = {name: timed_pair(backend, images, labels) for name, backend in backends.items()}
    rows = []
    for mode in ("train", "inference"):
        first = {}
        for name, pair in fns.items():  # the first call compiles (JAX, torch.compile): timed apart
            start = time.perf_counter()
            pair[mode]()
            first[name] = time.perf_counter() - start
            pair[mode]()
            pair[mode]()
        seconds: dict[str, list[float]] = {name: [] for name in fns}
        for _ in range(repeats):
            for name, pair in fns.items():
                start = time.perf_counter()
                for _ in range(steps):
                    pair[mode]()
                seconds[name].append((time.perf_counter() - start) / steps)
        ips = {name: config.batch_size / statistics.median(s) for name, s in seconds.items()}
        row = {
            "config": config.name,
            "mode": mode,
            "precision": precision,
            "batch_size": config.batch_size,
            "images_per_second": {k: round(v, 1) for k, v in ips.items()},
            "jax_vs": {k: round(ips["jax"] / v, 3) for k, v in ips.items() if k != "jax"} if "jax" in ips else {},
            "first_call_seconds": {k: round(v, 2) for k, v in first.items()},
        }
        rows.append(row)
        print(
            f"{config.name:9s} {mode:9s} {precision:4s} batch {config.batch_size:3d}  "
            + "  ".join(f"{k} {v:7.1f} img/s" for k, v in ips.items())
            + "  "
            + "  ".join(f"jax/{k} {v:.2f}x" for k, v in row["jax_vs"].items())
            + "  first call: "
            + ", ".join(f"{k} {v:.1f}s" for k, v in first.items()),
            flush=True,
        )
    return rows


def throughput_table(rows: list[dict], names: tuple[str, ...]) -> list[str]:
    header = ["config", "mode", "precision", *[f"{n} img/s" for n in names]]
    header += [f"JAX / {n}" for n in names if n != "jax"] + ["first call (s): " + ", ".join(names)]
    body = []
    for r in rows:
        ips, ratio, first = r["images_per_second"], r["jax_vs"], r["first_call_seconds"]
        body.append(
            [r["config"], r["mode"], r["precision"], *[f"{ips[n]:.1f}" for n in names]]
            + [f"{ratio[n]:.2f}x" for n in names if n != "jax"]
            + [" / ".join(f"{first[n]:.1f}" for n in names)]
        )
    return markdown_table(header, body)


def budget_rows(budget: float, out: Path) -> list[dict]:
    """The tutorial recipe on CIFAR-10 for ``budget`` minutes with each backend (one after the other)."""
    rows = []
    for backend in ("torch", "jax"):
        row = run_one("cifar10", "cifar10-vit-tutorial", budget, out, ["--backend", backend])
        rows.append({"backend": backend, **row})
    return rows


def budget_table(rows: list[dict]) -> list[str]:
    header = ["backend", "budget (min)", "epochs", "steps done", "test accuracy", "val accuracy", "wall (s)"]
    return markdown_table(
        header,
        [
            [
                r["backend"],
                f"{r['budget_minutes']:g}",
                r["epochs"],
                r["done_steps"],
                f"{r['test_accuracy']:.4f}",
                f"{r['val_accuracy']:.4f}",
                r["wall_seconds"],
            ]
            for r in rows
        ],
    )


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", default="tutorial,vit-ti16", help="comma-separated: tutorial, vit-ti16, digits")
    parser.add_argument("--precisions", default="fp32,bf16", help="comma-separated: fp32, bf16")
    parser.add_argument("--implementations", default=",".join(IMPLEMENTATIONS), help="comma-separated subset")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved repetitions; the median is kept")
    parser.add_argument("--steps", type=int, default=2, help="steps timed per repetition")
    parser.add_argument("--budget", type=float, default=None, help="also train the tutorial recipe this many minutes")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results", help="where tables are written")
    args = parser.parse_args(argv)
    names = tuple(n for n in args.implementations.split(",") if n)
    if "jax" in names:
        from vitrain.engine.jax_backend import import_jax

        import_jax().config.update("jax_enable_compilation_cache", False)
    print(machine_line(), f"threads {torch.get_num_threads()}", flush=True)
    rows = []
    for config in args.configs.split(","):
        for precision in args.precisions.split(","):
            rows += measure(CONFIGS[config], precision, names, args.repeats, args.steps)
    lines = [
        f"Command: `python benchmarks/jax_vs_torch.py {shlex.join(argv)}`  ",
        f"{machine_line()}; {torch.get_num_threads()} threads; median of {args.repeats} x {args.steps} steps.",
        "",
        *throughput_table(rows, names),
    ]
    results = {"throughput": rows}
    if args.budget:
        results["budget"] = budget_rows(args.budget, args.out / "jax-budget-runs")
        lines += ["", *budget_table(results["budget"])]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "jax_vs_torch.md").write_text("\n".join(lines) + "\n")
    (args.out / "jax_vs_torch.json").write_text(json.dumps(results, indent=2))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.exit(main(sys.argv[1:]))
