"""The device and precision policy (vitrain/engine/runtime.py)."""

from __future__ import annotations

import json

import pytest
import torch

from vitrain.engine.runtime import checks_each_step, use_compile, use_cuda_graphs


def test_cuda_graphs_only_for_a_compiled_single_gpu_step():
    from vitrain.engine.distributed import Dist

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert use_cuda_graphs("auto", cuda, Dist())
    assert use_cuda_graphs("on", cuda, Dist())
    assert not use_cuda_graphs("off", cuda, Dist())  # no compile, no graphs
    assert not use_cuda_graphs("on", cpu, Dist())  # compiled on CPU: no graphs there
    assert not use_cuda_graphs("auto", cuda, Dist(rank=0, world=2))  # DDP's hooks run between graphs


def test_pretraining_compiles_on_cuda_by_default_and_not_on_cpu():
    assert use_compile("auto", torch.device("cuda"))
    assert not use_compile("auto", torch.device("cpu"))
    assert use_compile("on", torch.device("cpu")) and not use_compile("off", torch.device("cuda"))


def test_gradients_are_checked_every_step_on_cpu_or_when_batches_may_be_skipped():
    assert checks_each_step(torch.device("cpu"), 0)
    assert not checks_each_step(torch.device("cuda"), 0)  # read at the end of the epoch: no sync per step
    assert checks_each_step(torch.device("cuda"), 3)


def test_bf16_training_on_a_cpu_says_so_and_learns(flat_folder, tmp_path, tiny_args, capsys):
    from vitrain.cli import main

    common = ["train", "--data", str(flat_folder), *tiny_args, "--epochs", "3", "--precision", "bf16"]
    assert main([*common, "--out", str(tmp_path / "torch")]) == 0
    assert "on cpu (bf16 autocast)" in capsys.readouterr().out
    report = json.loads((tmp_path / "torch" / "report.json").read_text())
    assert report["test"]["accuracy"] > 0.5  # three separable classes, 3 epochs
    assert main([*common, "--out", str(tmp_path / "again")]) == 0  # the same seed: the same numbers in bf16
    metrics = [(tmp_path / run / "metrics.csv").read_text() for run in ("torch", "again")]
    assert [line.split(",")[:-2] for line in metrics[0].splitlines()] == [
        line.split(",")[:-2] for line in metrics[1].splitlines()
    ]
    pytest.importorskip("jax")
    assert main([*common, "--backend", "jax", "--out", str(tmp_path / "jax")]) == 0
    assert "JAX on 1 cpu device(s) (bf16)" in capsys.readouterr().out
    report = json.loads((tmp_path / "jax" / "report.json").read_text())
    assert report["test"]["accuracy"] > 0.5
