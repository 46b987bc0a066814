"""--precision (vitrain/engine/precision.py): what each setting means on each device, and why."""

from __future__ import annotations

import json

import pytest
import torch

from vitrain.config import ConfigError
from vitrain.engine import precision
from vitrain.engine.precision import choose_precision
from vitrain.models.vit import VisionTransformer, ViTConfig

CPU, CUDA = torch.device("cpu"), torch.device("cuda")
TINY = ViTConfig(img_size=16, patch_size=4, in_chans=3, num_classes=3, embed_dim=32, depth=2, num_heads=2, mlp_dim=64)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    return tmp_path / "vitrain" / "precision.json"


def test_fp32_and_bf16_are_what_they_say_on_a_cpu():
    assert choose_precision("fp32", CPU).dtype is None
    chosen = choose_precision("bf16", CPU)
    assert chosen.dtype == torch.bfloat16 and chosen.to_dict() == {
        "compute": "bf16",
        "setting": "bf16",
        "reason": "--precision bf16",
    }


def test_a_gpu_autocasts_to_bf16_where_it_has_it(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert choose_precision("auto", CUDA).dtype == torch.bfloat16 and choose_precision("fp32", CUDA).dtype is None
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: "Tesla V100")
    assert choose_precision("auto", CUDA).dtype is None
    with pytest.raises(ConfigError, match=r"--precision bf16: Tesla V100 has no bfloat16"):
        choose_precision("bf16", CUDA)


def test_auto_stays_float32_on_a_cpu_without_bf16_units_and_measures_nothing(monkeypatch, cache):
    monkeypatch.setattr(precision, "cpu_bf16_units", lambda: [])
    monkeypatch.setattr(precision, "measure_speedup", lambda *a, **k: pytest.fail("measured"))
    chosen = choose_precision("auto", CPU, VisionTransformer(TINY), 8)
    assert chosen.dtype is None and "no bf16 matrix units" in chosen.reason
    assert not cache.exists()


@pytest.mark.parametrize("speedup, expected", [(2.0, torch.bfloat16), (1.05, None)])
def test_auto_on_a_cpu_with_bf16_units_takes_bf16_when_the_model_runs_faster(monkeypatch, cache, speedup, expected):
    monkeypatch.setattr(precision, "cpu_bf16_units", lambda: ["AMX-BF16"])
    calls = []
    monkeypatch.setattr(precision, "measure_speedup", lambda *a, **k: calls.append(a) or speedup)
    model = VisionTransformer(TINY)
    chosen = choose_precision("auto", CPU, model, 8)
    assert chosen.dtype == expected and f"ran {speedup:.2f}x as fast in bf16" in chosen.reason
    assert "AMX-BF16" in chosen.reason and "(cached)" not in chosen.reason
    again = choose_precision("auto", CPU, model, 8)  # the same CPU, model and batch: measured once
    assert again.dtype == expected and "(cached)" in again.reason and len(calls) == 1
    choose_precision("auto", CPU, model, 16)  # another batch size is another measurement
    assert len(calls) == 2 and len(json.loads(cache.read_text())) == 2


def test_the_speedup_is_a_real_measurement_of_both_precisions():
    model = VisionTransformer(TINY)
    before = torch.random.get_rng_state()
    speedup = precision.measure_speedup(model, 4, train=True, seconds=0.1)
    assert speedup > 0 and precision.measure_speedup(model, 4, train=False, seconds=0.1) > 0
    assert torch.equal(torch.random.get_rng_state(), before)  # a measured run trains as a cached one does


def test_a_run_logs_and_reports_its_precision_and_why(monkeypatch, cache, flat_folder, tmp_path, tiny_args, capsys):
    from vitrain.cli import main

    monkeypatch.setattr(precision, "cpu_bf16_units", lambda: ["AMX-BF16"])
    monkeypatch.setattr(precision, "measure_speedup", lambda *a, **k: 1.8)
    run = tmp_path / "run"
    assert main(["train", "--data", str(flat_folder), *tiny_args, "--epochs", "1", "--out", str(run)]) == 0
    out = capsys.readouterr().out
    assert "on cpu (bf16 autocast)" in out
    assert "precision: bf16 autocast (auto: this CPU has AMX-BF16, and this model's training step ran 1.80x" in out
    report = json.loads((run / "report.json").read_text())
    assert report["precision"]["compute"] == "bf16" and report["precision"]["setting"] == "auto"
    monkeypatch.setattr(precision, "cpu_bf16_units", lambda: [])
    assert main(["eval", str(run), "--precision", "auto"]) == 0
    evaluated = json.loads(next((run / "eval").glob("*/report.json")).read_text())
    assert evaluated["precision"]["compute"] == "fp32" and "no bf16 matrix units" in evaluated["precision"]["reason"]
