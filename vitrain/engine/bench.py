"""``vitrain bench``: training and inference throughput of vitrain's ViT vs timm's and torchvision's.

The three implementations get the same architecture and the same weights (vitrain's
parameter names are timm's; torchvision's are mapped by :mod:`vitrain.models.convert`), so
their logits and training gradients are checked equal before anything is timed. Timing is
interleaved: each repetition times every implementation once, in turn, and the median
over repetitions is reported, so a machine that speeds up or slows down during the run
affects all of them alike. vitrain's and timm's models are timed in float32 and under bf16
autocast (``--precision``), torchvision's in float32. Model FLOP utilization (MFU) is the
model's matmul FLOPs per second over the matmul rate measured on the same machine in the
same precision. Every implementation trains with fused AdamW, as ``vitrain train`` does, so the
optimizer is the same for all and the ratios compare the models.
"""

from __future__ import annotations

import copy
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..models.convert import from_torchvision, timm_args
from ..models.vit import VisionTransformer, ViTConfig
from .precision import cpu_bf16_units


@dataclass(frozen=True)
class BenchConfig:
    """One architecture to time and the batch size to time it at."""

    name: str
    img_size: int
    patch_size: int
    embed_dim: int
    depth: int
    num_heads: int
    mlp_dim: int
    batch_size: int


CONFIGS = (
    BenchConfig("cifar10-tutorial", 32, 4, 256, 6, 8, 512, 128),
    BenchConfig("vit-ti16", 224, 16, 192, 12, 3, 768, 32),
    BenchConfig("vit-b16", 224, 16, 768, 12, 12, 3072, 8),
)
NUM_CLASSES = 10


def build_models(cfg: BenchConfig, device: torch.device) -> dict[str, nn.Module]:
    """vitrain's, timm's and torchvision's ViT for ``cfg``, all holding the same weights."""
    import timm.models.vision_transformer as timm_vit
    import torchvision.models.vision_transformer as tv_vit

    torch.manual_seed(0)
    ours = VisionTransformer(
        ViTConfig(
            img_size=cfg.img_size,
            patch_size=cfg.patch_size,
            embed_dim=cfg.embed_dim,
            depth=cfg.depth,
            num_heads=cfg.num_heads,
            mlp_dim=cfg.mlp_dim,
            num_classes=NUM_CLASSES,
        )
    )
    timm_model = timm_vit.VisionTransformer(**timm_args(ours.config))
    timm_model.load_state_dict(ours.state_dict())
    tv_model = tv_vit.VisionTransformer(
        image_size=cfg.img_size,
        patch_size=cfg.patch_size,
        num_layers=cfg.depth,
        num_heads=cfg.num_heads,
        hidden_dim=cfg.embed_dim,
        mlp_dim=cfg.mlp_dim,
        num_classes=NUM_CLASSES,
    )
    # torchvision's names map onto vitrain's; load ours into it through the inverse of that map
    mapping = {
        tv_key: our_key for tv_key, our_key in zip(tv_model.state_dict(), from_torchvision(tv_model.state_dict()))
    }
    ours_state = ours.state_dict()
    tv_model.load_state_dict({tv_key: ours_state[our_key] for tv_key, our_key in mapping.items()})
    return {name: m.to(device) for name, m in (("vitrain", ours), ("timm", timm_model), ("torchvision", tv_model))}


def max_logit_difference(models: dict[str, nn.Module], cfg: BenchConfig, device: torch.device) -> dict[str, float]:
    """Max abs difference of each reference's logits from vitrain's, on one random batch."""
    x = torch.randn(2, 3, cfg.img_size, cfg.img_size, device=device)
    with torch.inference_mode():
        outputs = {name: m.eval()(x).float() for name, m in models.items()}
    return {name: float((out - outputs["vitrain"]).abs().max()) for name, out in outputs.items() if name != "vitrain"}


def max_gradient_difference(models: dict[str, nn.Module], cfg: BenchConfig, device: torch.device) -> dict[str, float]:
    """Max abs difference of each reference's loss gradients from vitrain's, on one training batch.

    The logits check runs in inference mode; this one covers the training path, where
    vitrain computes attention and its last block differently (see ``models/vit.py``).
    torchvision's gradients are compared under vitrain's names (:func:`from_torchvision`).
    """
    x = torch.randn(4, 3, cfg.img_size, cfg.img_size, device=device)
    y = torch.arange(4, device=device) % NUM_CLASSES
    grads = {}
    for name in ("vitrain", "timm", "torchvision"):
        model = copy.deepcopy(models[name]).train()
        F.cross_entropy(model(x), y).backward()
        grads[name] = {k: p.grad for k, p in model.named_parameters()}
    grads["torchvision"] = from_torchvision(grads["torchvision"])
    return {
        name: max(float((g - grads[name][k]).abs().max()) for k, g in grads["vitrain"].items())
        for name in ("timm", "torchvision")
    }


def forward_flops(cfg: BenchConfig) -> float:
    """Matmul FLOPs of one image's forward pass (patch projection, qkv/proj, attention, MLP, head)."""
    tokens = (cfg.img_size // cfg.patch_size) ** 2 + 1
    d = cfg.embed_dim
    patch = 2 * (tokens - 1) * 3 * cfg.patch_size**2 * d
    per_block = 2 * tokens * (4 * d * d + 2 * d * cfg.mlp_dim) + 4 * tokens * tokens * d
    return patch + cfg.depth * per_block + 2 * d * NUM_CLASSES


def matmul_peak(device: torch.device, dtype: torch.dtype = torch.float32, seconds: float = 1.0) -> float:
    """Matmul FLOP/s of a square product in ``dtype`` on ``device``, measured here (2048 on a CPU, 8192 on a GPU)."""
    n = 8192 if device.type == "cuda" else 2048  # a GPU needs a big product to reach its peak
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    _sync(device)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    _sync(device)
    return 2 * n**3 * count / (time.perf_counter() - start)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _train_step_fn(model: nn.Module, cfg: BenchConfig, device: torch.device, amp) -> Callable[[], None]:
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    x = torch.randn(cfg.batch_size, 3, cfg.img_size, cfg.img_size, device=device)
    y = torch.randint(0, NUM_CLASSES, (cfg.batch_size,), device=device)

    def step() -> None:
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def _infer_fn(model: nn.Module, cfg: BenchConfig, device: torch.device, amp) -> Callable[[], None]:
    x = torch.randn(cfg.batch_size, 3, cfg.img_size, cfg.img_size, device=device)

    def step() -> None:
        with torch.inference_mode(), torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            model.eval()(x)

    return step


def _time(fn: Callable[[], None], steps: int, device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    _sync(device)
    return (time.perf_counter() - start) / steps


DTYPES = {"fp32": None, "bf16": torch.bfloat16}


def implementations(
    models: dict[str, nn.Module], precisions: tuple[str, ...], compiled: bool
) -> dict[str, tuple[nn.Module, str]]:
    """What is timed, by label ("vitrain bf16"): vitrain's and timm's model in each precision, torchvision's in
    float32 (and ``torch.compile`` of vitrain's in each precision), each its own copy of the same weights."""
    found = {}
    for precision in precisions:
        for name in ("vitrain", "timm"):
            found[f"{name} {precision}"] = (copy.deepcopy(models[name]), precision)
        if compiled:
            found[f"vitrain+compile {precision}"] = (torch.compile(copy.deepcopy(models["vitrain"])), precision)
    if "fp32" in precisions:
        found["torchvision fp32"] = (models["torchvision"], "fp32")
    return found


def run_benchmark(
    configs: tuple[BenchConfig, ...] = CONFIGS,
    repeats: int = 5,
    steps: int = 3,
    device: torch.device | None = None,
    log=print,
    compiled: bool = False,
    precisions: tuple[str, ...] = ("fp32", "bf16"),
) -> dict[str, Any]:
    """Time every config's train step and inference for each implementation and precision; return medians,
    ratios and MFU.

    ``precisions``: float32 and/or bf16 autocast. With ``compiled``, ``torch.compile`` of vitrain's model is
    timed too (as ``vitrain+compile``; its compilation happens in the warm-up and is not timed).
    """
    device = device or torch.device("cpu")
    peaks = {p: matmul_peak(device, DTYPES[p] or torch.float32) for p in precisions}
    log(
        f"timing on {device}, {torch.get_num_threads()} threads; matmul peak here: "
        + ", ".join(f"{p} {peak / 1e9:.0f} GFLOP/s" for p, peak in peaks.items())
    )
    results = []
    for cfg in configs:
        models = build_models(cfg, device)
        diffs = max_logit_difference(models, cfg, device)
        grad_diff = max_gradient_difference(models, cfg, device)
        log(
            f"{cfg.name}: logits differ from timm's by at most {diffs['timm']:.1e}, from torchvision's by at "
            f"most {diffs['torchvision']:.1e}; training gradients from timm's by at most {grad_diff['timm']:.1e}, "
            f"from torchvision's by at most {grad_diff['torchvision']:.1e}"
        )
        timed = implementations(models, precisions, compiled)
        for mode, make in (("train", _train_step_fn), ("inference", _infer_fn)):
            fns = {label: make(model, cfg, device, DTYPES[p]) for label, (model, p) in timed.items()}
            for fn in fns.values():  # warm-up: one-time allocations, kernel selection, compilation
                fn()
                fn()
            seconds: dict[str, list[float]] = {label: [] for label in fns}
            for _ in range(repeats):
                for label, fn in fns.items():
                    seconds[label].append(_time(fn, steps, device))
            ips = {label: cfg.batch_size / statistics.median(s) for label, s in seconds.items()}
            flops = forward_flops(cfg) * (3 if mode == "train" else 1)
            row = {
                "config": cfg.name,
                "mode": mode,
                "batch_size": cfg.batch_size,
                "images_per_second": {k: round(v, 2) for k, v in ips.items()},
                "vitrain_vs_timm": {p: round(ips[f"vitrain {p}"] / ips[f"timm {p}"], 3) for p in precisions},
                **(
                    {"vitrain_vs_torchvision": round(ips["vitrain fp32"] / ips["torchvision fp32"], 3)}
                    if "fp32" in precisions
                    else {}
                ),
                **(
                    {"bf16_vs_fp32": {n: round(ips[f"{n} bf16"] / ips[f"{n} fp32"], 3) for n in ("vitrain", "timm")}}
                    if {"fp32", "bf16"} <= set(precisions)
                    else {}
                ),
                **(
                    {
                        "compiled_vs_timm": {
                            p: round(ips[f"vitrain+compile {p}"] / ips[f"timm {p}"], 3) for p in precisions
                        }
                    }
                    if compiled
                    else {}
                ),
                "mfu": {label: round(v * flops / peaks[timed[label][1]], 3) for label, v in ips.items()},
                "max_logit_diff": diffs,
                "max_grad_diff": grad_diff,
            }
            results.append(row)
            log(
                f"{cfg.name:17s} {mode:9s} batch {cfg.batch_size:3d}  "
                + "  ".join(f"{k} {v:8.1f} img/s" for k, v in ips.items())
                + "  "
                + "  ".join(f"vitrain/timm {p} {r:.2f}x" for p, r in row["vitrain_vs_timm"].items())
                + (
                    "  bf16/fp32 " + ", ".join(f"{n} {r:.2f}x" for n, r in row["bf16_vs_fp32"].items())
                    if "bf16_vs_fp32" in row
                    else ""
                )
                + "  MFU "
                + ", ".join(f"vitrain {p} {row['mfu'][f'vitrain {p}']:.1%}" for p in precisions)
            )
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    return {
        "device": str(device),
        **({"gpu": name} if name else {}),
        "precisions": list(precisions),
        "cpu_bf16_units": cpu_bf16_units() if device.type == "cpu" else None,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "matmul_peak_gflops": {p: round(peak / 1e9, 1) for p, peak in peaks.items()},
        "repeats": repeats,
        "steps_per_repeat": steps,
        "results": results,
    }
