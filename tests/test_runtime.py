"""The device and precision policy (vitrain/engine/runtime.py)."""

from __future__ import annotations

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


def test_compile_is_on_for_cuda_by_default_and_off_on_cpu():
    assert use_compile("auto", torch.device("cuda"))
    assert not use_compile("auto", torch.device("cpu"))
    assert use_compile("on", torch.device("cpu")) and not use_compile("off", torch.device("cuda"))


def test_gradients_are_checked_every_step_on_cpu_or_when_batches_may_be_skipped():
    assert checks_each_step(torch.device("cpu"), 0)
    assert not checks_each_step(torch.device("cuda"), 0)  # read at the end of the epoch: no sync per step
    assert checks_each_step(torch.device("cuda"), 3)
