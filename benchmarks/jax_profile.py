"""Where the time of a training step goes, JAX backend beside PyTorch backend, by kind of work.

The JAX step is traced with ``jax.profiler`` (XLA's CPU runtime reports each compiled kernel
when ``--xla_cpu_enable_xprof_traceme`` is on, which this script sets) and each kernel is
classed by what its HLO computes: a dense matmul, a batched matmul (attention), a transpose or
copy, random bits (dropout), a reduction, a softmax, or other elementwise work. The PyTorch
step is profiled with ``torch.profiler`` and its operators' own time is classed the same way.
Both steps are the ones ``vitrain train`` runs (``benchmarks/jax_vs_torch.py`` builds them).

    python benchmarks/jax_profile.py                      # the tutorial config, fp32
    python benchmarks/jax_profile.py --config vit-ti16 --steps 2
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import os
import re
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_enable_xprof_traceme=true").strip()

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy import machine_line, markdown_table  # noqa: E402
from jax_vs_torch import CONFIGS, ROOT, build  # noqa: E402

KINDS = (
    "dense matmul",
    "batched matmul (attention)",
    "softmax",
    "transposes and copies",
    "dropout (random bits, masks)",
    "reductions and norms",
    "other elementwise (GELU, AdamW, ...)",
)
TORCH_KINDS = {  # operator name patterns, first match wins
    "dense matmul": ("addmm", "aten::mm", "aten::matmul", "aten::linear"),
    "batched matmul (attention)": ("scaled_dot_product", "flash_attention", "aten::bmm", "baddbmm"),
    "softmax": ("softmax",),
    "transposes and copies": ("aten::copy_", "aten::clone", "aten::contiguous", "aten::cat", "aten::stack"),
    "dropout (random bits, masks)": ("bernoulli", "dropout", "aten::rand", "uniform_"),
    "reductions and norms": ("layer_norm", "aten::sum", "aten::mean", "norm", "batch_norm"),
}


def jax_kind(body: str, name: str) -> str:
    """The kind of an XLA kernel from its fused computation's HLO text."""
    if " dot(" in body:
        return "batched matmul (attention)" if "lhs_batch_dims" in body else "dense matmul"
    if "rng-bit-generator" in body or "rng_bit_generator" in body or "threefry" in body:
        return "dropout (random bits, masks)"
    if "copy" in name or "transpose" in name or " transpose(" in body:
        return "transposes and copies"
    if " exponential(" in body:  # a softmax (its max and sum are reductions fused with it)
        return "softmax"
    if " reduce(" in body:
        return "reductions and norms"
    return KINDS[-1]


def hlo_kinds(hlo: str) -> dict[str, str]:
    """Kernel name -> kind, for every instruction of the compiled module's entry computation."""
    bodies = {m.group(1): m.group(2) for m in re.finditer(r"^%?([\w.\-]+) [^\n]*\{\n(.*?)\n\}", hlo, re.M | re.S)}
    kinds = {}
    for line in hlo.splitlines():
        m = re.match(r"\s*(?:ROOT )?%([\w.\-]+) = \S+ ([\w\-]+)\(", line)
        if not m:
            continue
        called = re.search(r"calls=%([\w.\-]+)", line)
        body = bodies.get(called.group(1), "") if called else f" {m.group(2)}("
        kinds[m.group(1)] = jax_kind(body + line, m.group(1))
    return kinds


def profile_jax(backend, images: torch.Tensor, labels: torch.Tensor, steps: int) -> dict[str, float]:
    """Milliseconds per step of each kind of XLA kernel in the JAX backend's training step."""
    import jax

    for _ in range(3):
        float(backend.train_step(images, labels).loss)
    batch = [backend._batch(t.numpy()) for t in (images, labels, labels)]
    compiled = backend._step.lower(backend.state, *batch, np.float32(1e-3), backend.epoch_key, np.int32(0)).compile()
    kinds = hlo_kinds(compiled.as_text())
    with tempfile.TemporaryDirectory() as trace_dir:
        with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
            for _ in range(steps):
                float(backend.train_step(images, labels).loss)
        trace = next(Path(trace_dir).rglob("*.trace.json.gz"))
        events = json.load(gzip.open(trace))
    events = events["traceEvents"] if isinstance(events, dict) else events
    total: dict[str, float] = collections.Counter()
    for event in events:
        if event.get("ph") == "X" and event.get("name") in kinds:
            total[kinds[event["name"]]] += event["dur"] / 1000 / steps
    return dict(total)


def torch_kind(name: str) -> str:
    for kind, patterns in TORCH_KINDS.items():
        if any(p in name for p in patterns):
            return kind
    return KINDS[-1]


def profile_torch(backend, images: torch.Tensor, labels: torch.Tensor, steps: int) -> dict[str, float]:
    """Milliseconds per step of each kind of operator (own time) in the PyTorch backend's training step."""
    from torch.profiler import ProfilerActivity, profile

    for _ in range(3):
        float(backend.train_step(images, labels).loss)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            float(backend.train_step(images, labels).loss)
    total: dict[str, float] = collections.Counter()
    for event in prof.key_averages():
        total[torch_kind(event.key)] += event.self_cpu_time_total / 1000 / steps
    return dict(total)


def matmul_rates(n: int = 2048, seconds: float = 1.0) -> dict[str, dict[str, float]]:
    """GFLOP/s of an n x n x n matrix product in JAX (XLA) and PyTorch, in float32 and bf16."""
    import jax
    import jax.numpy as jnp

    def rate(run: Callable[[], Any]) -> float:
        run()
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            run()
            count += 1
        return 2 * n**3 * count / (time.perf_counter() - start) / 1e9

    rates: dict[str, dict[str, float]] = {}
    for name, jax_type, torch_type in (("fp32", jnp.float32, torch.float32), ("bf16", jnp.bfloat16, torch.bfloat16)):
        a, b = jnp.ones((n, n), jax_type), jnp.ones((n, n), jax_type)
        product = jax.jit(jnp.matmul)
        x, y = torch.ones(n, n, dtype=torch_type), torch.ones(n, n, dtype=torch_type)
        rates[name] = {"jax": rate(lambda: product(a, b).block_until_ready()), "pytorch": rate(lambda: x @ y)}
    return rates


def step_ms(backend, images, labels, steps: int) -> float:
    """The step's own time without a profiler (median of ``steps``)."""
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        float(backend.train_step(images, labels).loss)
        times.append(time.perf_counter() - start)
    return float(np.median(times)) * 1000


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="tutorial", choices=sorted(CONFIGS))
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--steps", type=int, default=3, help="profiled steps (the table is per step)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    config = CONFIGS[args.config]
    size, channels = config.settings["img_size"], config.settings.get("channels", 3)
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(config.batch_size, channels, size, size, generator=generator)
    labels = torch.randint(0, 10, (config.batch_size,), generator=generator)
    backends = {"jax": build("jax", config, args.precision), "pytorch": build("pytorch", config, args.precision)}
    for backend in backends.values():  # warm-up (JAX compiles), then each step timed without a profiler
        step_ms(backend, images, labels, 2)
    steps = {name: step_ms(backend, images, labels, args.steps) for name, backend in backends.items()}
    found = {
        "jax": profile_jax(backends["jax"], images, labels, args.steps),
        "pytorch": profile_torch(backends["pytorch"], images, labels, args.steps),
    }
    rows = []
    for kind in KINDS:
        j, t = found["jax"].get(kind, 0.0), found["pytorch"].get(kind, 0.0)
        rows.append([kind, f"{j:.0f}", f"{t:.0f}", f"{j - t:+.0f}"])
    rates = matmul_rates()
    sums = {k: sum(v.values()) for k, v in found.items()}
    rows.append(["**kernels/operators, summed**", f"{sums['jax']:.0f}", f"{sums['pytorch']:.0f}", ""])
    rows.append(["**step, unprofiled**", f"{steps['jax']:.0f}", f"{steps['pytorch']:.0f}", ""])
    lines = [
        f"Command: `python benchmarks/jax_profile.py {shlex.join(argv)}`  ",
        f"{machine_line()}; {torch.get_num_threads()} threads; config {args.config} (batch {config.batch_size}), "
        f"{args.precision}; milliseconds per training step.",
        "",
        *markdown_table(["kind of work", "JAX ms", "PyTorch ms", "JAX - PyTorch"], rows),
        "",
        *markdown_table(
            ["2048 x 2048 matmul", "JAX GFLOP/s", "PyTorch GFLOP/s"],
            [[name, f"{r['jax']:.0f}", f"{r['pytorch']:.0f}"] for name, r in rates.items()],
        ),
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"jax_profile_{args.config}.md").write_text("\n".join(lines) + "\n")
    (args.out / f"jax_profile_{args.config}.json").write_text(
        json.dumps({"ms": found, "step_ms": steps, "matmul_gflops": rates}, indent=2)
    )
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
