"""vitrain bench: the same weights in all three implementations, and a well-formed result."""

from __future__ import annotations

import json

import pytest
import torch

from vitrain.cli import main
from vitrain.engine import bench

TINY = bench.BenchConfig(
    "tiny", img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2, mlp_dim=64, batch_size=4
)


def test_timm_and_torchvision_get_vitrains_weights_and_agree():
    models = bench.build_models(TINY, torch.device("cpu"))
    assert set(models) == {"vitrain", "timm", "torchvision"}
    diffs = bench.max_logit_difference(models, TINY, torch.device("cpu"))
    assert diffs["timm"] < 1e-5 and diffs["torchvision"] < 1e-5


def test_training_gradients_equal_timms_and_torchvisions():
    # vitrain's training path (per-head attention on CPU, class-token rows only in the last
    # block) must give timm's gradients, not only its inference logits
    models = bench.build_models(TINY, torch.device("cpu"))
    differences = bench.max_gradient_difference(models, TINY, torch.device("cpu"))
    assert set(differences) == {"timm", "torchvision"} and max(differences.values()) < 1e-5


def test_forward_flops_counts_the_matmuls_of_a_known_case():
    # 16 patches + class token = 17 tokens, dim 32, MLP 64, 2 blocks, 10 classes
    patch = 2 * 16 * 3 * 16 * 32  # 16 patches of 4x4x3 projected to 32 dims
    block = 2 * 17 * (4 * 32 * 32 + 2 * 32 * 64) + 4 * 17 * 17 * 32
    assert bench.forward_flops(TINY) == patch + 2 * block + 2 * 32 * 10


def test_run_benchmark_reports_ratios_and_mfu_for_train_and_inference():
    result = bench.run_benchmark((TINY,), repeats=2, steps=1, log=lambda *a: None)
    assert [r["mode"] for r in result["results"]] == ["train", "inference"]
    for row in result["results"]:
        ips = row["images_per_second"]
        labels = {"vitrain fp32", "vitrain bf16", "timm fp32", "timm bf16", "torchvision fp32"}
        assert set(ips) == labels and all(v > 0 for v in ips.values())
        for p in ("fp32", "bf16"):
            assert row["vitrain_vs_timm"][p] == pytest.approx(ips[f"vitrain {p}"] / ips[f"timm {p}"], rel=0.01)
        assert row["bf16_vs_fp32"]["vitrain"] == pytest.approx(ips["vitrain bf16"] / ips["vitrain fp32"], rel=0.01)
        assert 0 < row["mfu"]["vitrain fp32"] < 1
    assert set(result["matmul_peak_gflops"]) == {"fp32", "bf16"} and min(result["matmul_peak_gflops"].values()) > 0


def test_bench_times_the_precisions_it_is_asked_for(capsys):
    result = bench.run_benchmark((TINY,), repeats=1, steps=1, log=lambda *a: None, precisions=("fp32",))
    assert set(result["results"][0]["images_per_second"]) == {"vitrain fp32", "timm fp32", "torchvision fp32"}
    assert main(["bench", "--precision", "fp16"]) == 2
    assert "--precision: a comma-separated list of fp32 and bf16 (got fp16)" in capsys.readouterr().err


def test_bench_command_refuses_unknown_configs(capsys):
    assert main(["bench", "--configs", "vit-huge"]) == 2
    assert "--configs: unknown vit-huge" in capsys.readouterr().err


def test_bench_command_prints_json(capsys, monkeypatch):
    monkeypatch.setattr(bench, "CONFIGS", (TINY,))
    assert main(["bench", "--configs", "tiny", "--repeats", "1", "--steps", "1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["results"][0]["config"] == "tiny"
