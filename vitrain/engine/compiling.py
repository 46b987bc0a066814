"""``--compile``: whether the training step runs through ``torch.compile``, and why.

``on`` and ``off`` are what they say. ``auto`` compiles on a GPU (fixed batch shapes there
make it pay, and one process on one GPU also records CUDA graphs). On a CPU, whether it
pays depends on the model, the precision and the run's length: inductor's CPU kernels fuse
the elementwise work around the matrix products, which is most of a small model's step
(a small ViT's step in bf16, whose casts autocast adds, gains most), but compiling costs
seconds to a minute. So ``auto`` on a CPU:

1. leaves a run whose steps take under :data:`SHORT_RUN_SECONDS` in eager mode (timed
   over a few steps) uncompiled: it could not win the compile time back;
2. otherwise compiles a copy of the model, times its steps against eager ones (cached per
   CPU, PyTorch version, threads, model, batch and precision, like ``--precision auto``),
   and compiles when the time the run's steps save exceeds what compiling costs, and the
   compiled step's outputs match the eager step's (a compiler fault on some CPUs gives NaN
   or wrong logits; such a step stays eager, and the log says why). Under
   ``--precision auto`` on a CPU with bf16 units, it times both precisions compiled and
   takes the faster: bf16 autocast adds casts, elementwise work that compiling fuses, so a
   small model whose eager step gains nothing from bf16 can gain compiled.

Measuring on a copy also leaves the compiled code in PyTorch's caches, so compiling the
run's own model afterwards takes a fraction of the first compile.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .distributed import Dist
from .measured import cached, machine_key, probe_copy, train_step
from .precision import Precision, cpu_bf16_units

SHORT_RUN_SECONDS = 180.0  # eager step time of a whole run below which auto does not try to compile on a CPU


@dataclass(frozen=True)
class CompileChoice:
    """Whether the step is compiled (``on``), with CUDA graphs (``graphs``), and why; ``precision``
    replaces the run's when ``--precision auto`` finds the other one faster compiled."""

    on: bool
    graphs: bool
    reason: str
    precision: Precision | None = None

    def to_dict(self) -> dict[str, Any]:
        """``report.json``'s ``compile``."""
        return {"on": self.on, "graphs": self.graphs, "reason": self.reason}


def choose_compile(
    setting: str,
    device: torch.device,
    place: Dist,
    model: nn.Module,
    batch_size: int,
    precision: Precision,
    total_steps: int,
    shapes: int = 1,
    max_seconds: float | None = None,
) -> CompileChoice:
    """What ``--compile setting`` means for a run of ``total_steps`` steps of ``model`` (see the module docstring).

    ``precision`` is the run's; when it is ``--precision auto`` on a CPU with bf16 units, both
    precisions are timed compiled (autocast's casts are elementwise work that compiling fuses,
    so bf16 can pay compiled where it did not eager). ``shapes`` is how many batch shapes the
    steps have (2 when each epoch ends with a short batch): each is compiled once.
    ``max_seconds`` bounds the run's training time (its time budget): a budgeted run's steps
    are those that fit.
    """
    if setting == "off":
        return CompileChoice(False, False, "--compile off")
    graphs = device.type == "cuda" and not place.active  # DDP's gradient hooks run between graphs
    if setting == "on" or device.type != "cpu":
        return CompileChoice(True, graphs, "--compile on" if setting == "on" else f"auto: {device.type}")
    amp = precision.dtype
    eager = eager_step_seconds(model, batch_size, amp)
    if max_seconds is not None:
        total_steps = max(1, min(total_steps, int(max_seconds / eager)))
    if total_steps * eager < SHORT_RUN_SECONDS:
        return CompileChoice(
            False, False, f"auto: about {total_steps * eager:.0f}s of steps, too short to win back compiling"
        )
    units = cpu_bf16_units() if precision.setting == "auto" else []
    dtypes = [None, torch.bfloat16] if units else [amp]
    timings, was_cached = {}, True
    for dtype in dtypes:
        key = machine_key(model, batch_size, str(dtype))
        timings[dtype], hit = cached("compile", key, lambda d=dtype: time_compiled(model, batch_size, d))
        was_cached = was_cached and hit
    eager = timings[amp]["eager"] if amp in timings else eager
    faulty = {d: t["problem"] for d, t in timings.items() if t.get("problem")}  # a compiler fault: never used
    problems = "; ".join(f"compiled {_name(d)} steps gave {p}" for d, p in faulty.items())
    if len(faulty) == len(timings):
        return CompileChoice(False, False, f"auto: {problems}{' (cached)' if was_cached else ''}; left eager")
    costs = {d: total_steps * t["compiled"] + shapes * t["compile"] for d, t in timings.items() if d not in faulty}
    best = min(costs, key=costs.get)
    faster = eager / timings[best]["compiled"]
    measured = (
        f"compiled {_name(best)} steps ran {faster:.2f}x as fast as eager {_name(amp)} ones after "
        f"{timings[best]['compile']:.0f}s of compiling{' (cached)' if was_cached else ''}"
    ) + (f" ({problems})" if problems else "")
    if costs[best] >= total_steps * eager:
        return CompileChoice(False, False, f"auto: {measured}, which {total_steps} steps do not win back")
    saved = f"auto: {measured}; {total_steps} steps save about {total_steps * eager - costs[best]:.0f}s"
    if best == amp:
        return CompileChoice(True, False, saved)
    ratio = timings[None]["compiled"] / timings[torch.bfloat16]["compiled"]
    # when the run's own precision compiled wrong, that is why the other one is taken
    why = problems if faulty else f"compiled, this model's training step ran {ratio:.2f}x as fast in bf16"
    changed = Precision(best, precision.setting, f"auto: this CPU has {', '.join(units)}; {why}")
    return CompileChoice(True, False, saved, changed)


def _name(dtype: torch.dtype | None) -> str:
    return "bf16" if dtype == torch.bfloat16 else "float32"


def _median_seconds(step, count: int) -> float:
    times = []
    for _ in range(count):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def eager_step_seconds(model: nn.Module, batch_size: int, amp_dtype: torch.dtype | None) -> float:
    """The median time of 3 eager training steps of a copy of ``model`` (after one warm-up step) on random data."""
    with torch.random.fork_rng(devices=[]):
        probe, optimizer, images, labels = probe_copy(model, batch_size)
        train_step(probe, optimizer, images, labels, amp_dtype)
        return _median_seconds(lambda: train_step(probe, optimizer, images, labels, amp_dtype), 3)


def compiled_problem(
    eager: torch.Tensor, compiled: torch.Tensor, exact: bool, amp_dtype: torch.dtype | None
) -> str | None:
    """What is wrong with a compiled step's logits against the eager step's on the same batch, or None.

    Non-finite logits where the eager ones are finite are always wrong. With ``exact`` (a model
    without dropout, whose two steps draw no random numbers) the logits must also agree to
    1% of their scale in float32, 10% under bf16 autocast; the weights differ by the one
    tiny update (learning rate 1e-6) that the eager step made in between.
    """
    eager, compiled = eager.float(), compiled.float()
    if torch.isfinite(eager).all() and not torch.isfinite(compiled).all():
        return "non-finite logits where eager ones were finite"
    if exact:
        tolerance = (0.1 if amp_dtype is not None else 0.01) * (eager.abs().max().item() + 1.0)
        away = (compiled - eager).abs().max().item()
        if not away <= tolerance:
            return f"logits up to {away:.3g} away from the eager ones"
    return None


def draws_random_numbers(model: nn.Module) -> bool:
    """Whether ``model``'s training step uses dropout or stochastic depth (from its config)."""
    config = model.config
    return any(getattr(config, name, 0.0) > 0 for name in ("dropout", "drop_path", "head_dropout"))


def time_compiled(model: nn.Module, batch_size: int, amp_dtype: torch.dtype | None, steps: int = 10) -> dict:
    """Seconds to compile a copy of ``model``'s training step (its first two steps, less two eager
    ones), and the median seconds of ``steps`` eager and compiled steps, timed in turn. When
    the compiled step's logits are wrong (:func:`compiled_problem`), ``problem`` says how."""
    with torch.random.fork_rng(devices=[]):
        probe, optimizer, images, labels = probe_copy(model, batch_size)
        compiled = torch.compile(probe, dynamic=False)

        def eager() -> torch.Tensor:
            return train_step(probe, optimizer, images, labels, amp_dtype)

        def fast() -> torch.Tensor:
            return train_step(compiled, optimizer, images, labels, amp_dtype)

        want = eager()  # also the warm-up
        start = time.perf_counter()
        got = fast()
        fast()
        first_two = time.perf_counter() - start
        problem = compiled_problem(want, got, not draws_random_numbers(probe), amp_dtype)
        times: dict[str, list[float]] = {"eager": [], "compiled": []}
        for _ in range(steps):
            times["eager"].append(_median_seconds(eager, 1))
            times["compiled"].append(_median_seconds(fast, 1))
        median = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
        timing = {
            "eager": round(median["eager"], 6),
            "compiled": round(median["compiled"], 6),
            "compile": round(max(0.0, first_two - 2 * median["compiled"]), 2),
        }
        return {**timing, "problem": problem} if problem else timing
