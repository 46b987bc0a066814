"""``--compile``'s decision (vitrain/engine/compiling.py)."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from vitrain.engine import compiling
from vitrain.engine.compiling import choose_compile
from vitrain.engine.distributed import Dist
from vitrain.engine.precision import Precision
from vitrain.models.vit import VisionTransformer, ViTConfig

CPU, CUDA = torch.device("cpu"), torch.device("cuda")
FP32, BF16 = Precision(None, "fp32", "--precision fp32"), Precision(torch.bfloat16, "bf16", "--precision bf16")
AUTO32 = Precision(None, "auto", "auto: eager bf16 was slower")
TINY = ViTConfig(img_size=16, patch_size=4, in_chans=3, num_classes=3, embed_dim=32, depth=2, num_heads=2, mlp_dim=64)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    return tmp_path / "vitrain" / "compile.json"


def never(*args, **kwargs):
    raise AssertionError("compiled although the decision needed no measurement")


def test_on_and_off_are_what_they_say_and_auto_compiles_on_a_gpu(monkeypatch):
    monkeypatch.setattr(compiling, "eager_step_seconds", never)
    model = VisionTransformer(TINY)
    assert not choose_compile("off", CUDA, Dist(), model, 8, FP32, 10**6).on
    on_cpu = choose_compile("on", CPU, Dist(), model, 8, FP32, 1)
    assert on_cpu.on and not on_cpu.graphs and on_cpu.reason == "--compile on"
    gpu = choose_compile("auto", CUDA, Dist(), model, 8, BF16, 1)
    assert gpu.on and gpu.graphs  # one process on one GPU also records CUDA graphs
    assert not choose_compile("auto", CUDA, Dist(rank=0, world=2), model, 8, BF16, 1).graphs  # DDP's hooks


def test_auto_leaves_a_short_cpu_run_eager_without_compiling_anything(monkeypatch, cache):
    monkeypatch.setattr(compiling, "time_compiled", never)
    monkeypatch.setattr(compiling, "eager_step_seconds", lambda *a: 0.01)
    chosen = choose_compile("auto", CPU, Dist(), VisionTransformer(TINY), 8, FP32, 1000)  # 10 s of steps
    assert not chosen.on and chosen.reason == "auto: about 10s of steps, too short to win back compiling"
    assert not cache.exists()


@pytest.mark.parametrize(
    "steps, expected",
    [(100_000, True), (40_000, False)],  # each step saves 1 ms; compiling two shapes costs 2 x 25 s
)
def test_auto_compiles_a_long_cpu_run_when_the_steps_win_back_the_compile_time(monkeypatch, cache, steps, expected):
    calls = []

    def timing(*args):
        calls.append(args)
        return {"eager": 0.005, "compiled": 0.004, "compile": 25.0}

    monkeypatch.setattr(compiling, "eager_step_seconds", lambda *a: 0.005)
    monkeypatch.setattr(compiling, "time_compiled", timing)
    model = VisionTransformer(TINY)
    chosen = choose_compile("auto", CPU, Dist(), model, 8, BF16, steps, shapes=2)
    assert chosen.on is expected and not chosen.graphs and chosen.precision is None
    assert "compiled bf16 steps ran 1.25x as fast as eager bf16 ones after 25s of compiling" in chosen.reason
    again = choose_compile("auto", CPU, Dist(), model, 8, BF16, steps, shapes=2)
    assert again.on is expected and "(cached)" in again.reason and len(calls) == 1
    choose_compile("auto", CPU, Dist(), model, 8, FP32, steps)  # float32 is another measurement
    assert len(calls) == 2 and len(json.loads(cache.read_text())) == 2


def test_the_timing_compiles_a_copy_for_real_and_leaves_the_random_state_alone():
    model = VisionTransformer(TINY)
    before = torch.random.get_rng_state()
    timing = compiling.time_compiled(model, 4, None, steps=2)
    assert timing["eager"] > 0 and timing["compiled"] > 0 and timing["compile"] >= 0
    assert compiling.eager_step_seconds(model, 4, torch.bfloat16) > 0
    assert torch.equal(torch.random.get_rng_state(), before)


def test_a_run_logs_and_reports_the_compile_decision(flat_folder, tmp_path, tiny_args, capsys):
    from vitrain.cli import main

    run = tmp_path / "run"
    assert main(["train", "--data", str(flat_folder), *tiny_args, "--epochs", "1", "--out", str(run)]) == 0
    out = capsys.readouterr().out
    assert "compile: off (auto: about 0s of steps, too short to win back compiling)" in out
    report = json.loads((run / "report.json").read_text())
    assert report["compile"]["on"] is False and "too short" in report["compile"]["reason"]


def test_precision_auto_takes_bf16_when_it_is_faster_compiled_though_not_eager(monkeypatch, cache):
    from vitrain.engine import precision

    timings = {"None": {"eager": 0.010, "compiled": 0.008, "compile": 5.0}}
    timings["torch.bfloat16"] = {"eager": 0.0105, "compiled": 0.006, "compile": 6.0}
    monkeypatch.setattr(compiling, "cpu_bf16_units", lambda: ["AMX-BF16"])
    monkeypatch.setattr(compiling, "eager_step_seconds", lambda *a: 0.010)
    monkeypatch.setattr(compiling, "time_compiled", lambda model, batch, dtype: timings[str(dtype)])
    chosen = choose_compile("auto", CPU, Dist(), VisionTransformer(TINY), 8, AUTO32, 50_000, shapes=2)
    assert chosen.on and chosen.precision.dtype == torch.bfloat16 and chosen.precision.setting == "auto"
    assert "compiled, this model's training step ran 1.33x as fast in bf16" in chosen.precision.reason
    assert "compiled bf16 steps ran 1.67x as fast as eager float32 ones" in chosen.reason
    fixed = choose_compile("auto", CPU, Dist(), VisionTransformer(TINY), 8, FP32, 50_000, shapes=2)
    assert fixed.on and fixed.precision is None  # --precision fp32 is kept, compiled
    assert precision.cpu_bf16_units() == []  # the tests' CPU has none unless a test says so


def test_compiled_logits_are_checked_against_the_eager_ones():
    eager = torch.tensor([[1.0, -2.0], [0.5, 3.0]])
    nan = eager.clone()
    nan[0, 1] = float("nan")
    assert compiling.compiled_problem(eager, eager + 1e-4, True, None) is None
    assert compiling.compiled_problem(eager, nan, False, None) == "non-finite logits where eager ones were finite"
    assert compiling.compiled_problem(eager, eager + 0.5, True, None) == "logits up to 0.5 away from the eager ones"
    assert compiling.compiled_problem(eager, eager + 0.2, True, torch.bfloat16) is None  # bf16 rounds more
    assert compiling.compiled_problem(eager, eager + 0.5, False, None) is None  # dropout: only finiteness counts
    assert compiling.compiled_problem(nan, nan, True, None) is not None  # NaN is never "close"
    assert not compiling.draws_random_numbers(VisionTransformer(TINY))
    assert compiling.draws_random_numbers(VisionTransformer(dataclasses.replace(TINY, drop_path=0.1)))


def test_a_compiler_that_gives_nan_is_caught_by_the_timing_and_auto_stays_eager(monkeypatch, cache):
    class Faulty(torch.nn.Module):  # what a miscompiled step does: NaN logits from the same weights
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, images):
            return self.model(images) * float("nan")

    monkeypatch.setattr(compiling.torch, "compile", lambda model, **kwargs: Faulty(model))
    timing = compiling.time_compiled(VisionTransformer(TINY), 4, None, steps=2)
    assert timing["problem"] == "non-finite logits where eager ones were finite"
    monkeypatch.setattr(compiling, "eager_step_seconds", lambda *a: 0.01)
    chosen = choose_compile("auto", CPU, Dist(), VisionTransformer(TINY), 4, FP32, 10**6)
    assert not chosen.on
    faulty = "compiled float32 steps gave non-finite logits where eager ones were finite"
    assert chosen.reason == f"auto: {faulty}; left eager"
    again = choose_compile("auto", CPU, Dist(), VisionTransformer(TINY), 4, FP32, 10**6)
    assert not again.on and "(cached); left eager" in again.reason  # the fault is remembered, not re-measured


def test_precision_auto_skips_a_precision_whose_compiled_step_is_wrong(monkeypatch, cache):
    timings = {"None": {"eager": 0.010, "compiled": 0.006, "compile": 5.0, "problem": "non-finite logits"}}
    timings["torch.bfloat16"] = {"eager": 0.0105, "compiled": 0.008, "compile": 6.0}
    monkeypatch.setattr(compiling, "cpu_bf16_units", lambda: ["AVX512-BF16"])
    monkeypatch.setattr(compiling, "eager_step_seconds", lambda *a: 0.010)
    monkeypatch.setattr(compiling, "time_compiled", lambda model, batch, dtype: timings[str(dtype)])
    chosen = choose_compile("auto", CPU, Dist(), VisionTransformer(TINY), 8, AUTO32, 50_000, shapes=2)
    assert chosen.on and chosen.precision.dtype == torch.bfloat16  # the faster float32 step is wrong
    assert chosen.precision.reason == "auto: this CPU has AVX512-BF16; compiled float32 steps gave non-finite logits"
    assert "compiled bf16 steps ran 1.25x as fast as eager float32 ones" in chosen.reason
    assert "(compiled float32 steps gave non-finite logits)" in chosen.reason


def test_a_nonfinite_loss_in_a_compiled_step_suggests_compile_off(tmp_path):
    from vitrain.engine.epoch import TrainingError, record_nonfinite

    with pytest.raises(TrainingError, match="the step is compiled: try --compile off"):
        record_nonfinite([], 0, 1, 1, 1, math.nan, tmp_path, print, compiled=True)
