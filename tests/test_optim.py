"""Optimizer parameter groups and every learning-rate schedule, step by step."""

from __future__ import annotations

import math

import pytest
import torch

from vitrain.config import TrainConfig
from vitrain.engine.optim import build_optimizer, build_scheduler, ema_decay, ema_update, param_groups, replan
from vitrain.models import create_model


def _lrs(cfg: TrainConfig, steps_per_epoch: int) -> list[float]:
    model = torch.nn.Linear(2, 2)
    opt = build_optimizer(model, cfg, torch.device("cpu"))
    sched = build_scheduler(opt, cfg, steps_per_epoch)
    lrs = []
    for _ in range(cfg.epochs * steps_per_epoch):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


def test_weight_decay_only_on_matrices_and_not_on_embeddings():
    model = create_model("vit-digits", num_classes=10)
    decay, no_decay = param_groups(model, 0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim >= 2 for p in decay["params"])
    skipped = {names[id(p)] for p in no_decay["params"]}
    assert "pos_embed" in skipped and "blocks.0.norm1.weight" in skipped and "head.bias" in skipped
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_sgd_and_adamw_settings_reach_the_optimizer():
    model = torch.nn.Linear(2, 2)
    sgd = build_optimizer(model, TrainConfig(optimizer="sgd", lr=0.1, momentum=0.8, nesterov=True), torch.device("cpu"))
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["momentum"] == 0.8 and sgd.defaults["nesterov"]
    adamw = build_optimizer(model, TrainConfig(betas=[0.9, 0.95], eps=1e-5), torch.device("cpu"))
    assert isinstance(adamw, torch.optim.AdamW) and adamw.defaults["betas"] == (0.9, 0.95)
    assert adamw.defaults["eps"] == 1e-5


def test_step_schedule_decays_every_step_size_epochs():
    lrs = _lrs(TrainConfig(lr=1.0, epochs=25, schedule="step", step_size=10, gamma=0.1, warmup_epochs=0), 4)
    assert lrs[0] == lrs[39] == 1.0
    assert lrs[40] == pytest.approx(0.1) and lrs[79] == pytest.approx(0.1)
    assert lrs[80] == pytest.approx(0.01)


def test_multistep_decays_at_fractions_of_training():
    lrs = _lrs(
        TrainConfig(lr=1.0, epochs=20, schedule="multistep", milestones=[0.6, 0.85], gamma=0.1, warmup_epochs=0), 10
    )
    assert lrs[119] == 1.0 and lrs[120] == pytest.approx(0.1)
    assert lrs[169] == pytest.approx(0.1) and lrs[170] == pytest.approx(0.01)


def test_cosine_with_linear_warmup():
    cfg = TrainConfig(lr=1.0, epochs=10, schedule="cosine", warmup_epochs=2, min_lr=0.0)
    lrs = _lrs(cfg, 10)
    assert lrs[0] == pytest.approx(1e-3)
    assert all(a < b for a, b in zip(lrs[:20], lrs[1:21]))  # rising through the warmup
    assert lrs[20] == pytest.approx(1.0)
    # halfway through the cosine part the factor is (1 + cos(pi/2)) / 2 = 0.5
    assert lrs[60] == pytest.approx(0.5, abs=1e-6)
    assert lrs[-1] == pytest.approx(0.5 * (1 + math.cos(math.pi * 79 / 80)), abs=1e-6)


def test_constant_schedule_and_warmup_on_step():
    assert set(_lrs(TrainConfig(lr=0.3, epochs=3, schedule="constant", warmup_epochs=0), 5)) == {0.3}
    lrs = _lrs(TrainConfig(lr=1.0, epochs=12, schedule="step", step_size=10, warmup_epochs=1), 2)
    assert lrs[0] == pytest.approx(1e-3) and lrs[2] == pytest.approx(1.0)


def test_a_planned_length_keeps_the_schedules_shape():
    cfg = TrainConfig(lr=1.0, epochs=50, schedule="step", step_size=10, gamma=0.1, warmup_epochs=5)
    model = torch.nn.Linear(2, 2)
    opt = build_optimizer(model, cfg, torch.device("cpu"))
    sched = build_scheduler(opt, cfg, steps_per_epoch=10, total_steps=100)  # a fifth of the configured 500
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(1e-3) and lrs[10] == pytest.approx(1.0)  # warmup: 5 of 50 epochs -> 10 steps
    assert lrs[29] == pytest.approx(1.0) and lrs[30] == pytest.approx(0.1)  # step: 10 of 50 epochs -> 20 steps


def test_replanning_rescales_the_rest_of_the_schedule_and_survives_a_state_dict():
    cfg = TrainConfig(lr=1.0, epochs=10, schedule="cosine", warmup_epochs=0)
    opt = build_optimizer(torch.nn.Linear(2, 2), cfg, torch.device("cpu"))
    sched = build_scheduler(opt, cfg, steps_per_epoch=10)  # 100 steps
    for _ in range(25):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.25)))
    replan(sched, 50)  # the run turned out to have room for half the steps
    opt.step()
    sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5 * (1 + math.cos(math.pi * 26 / 50)))
    # a resumed run rebuilds the scheduler for the configured length, then loads the re-planned one
    fresh_opt = build_optimizer(torch.nn.Linear(2, 2), cfg, torch.device("cpu"))
    fresh = build_scheduler(fresh_opt, cfg, steps_per_epoch=10)
    fresh.load_state_dict(sched.state_dict())
    assert fresh.lr_lambdas[0].total == 50 and fresh.last_epoch == 26
    for _ in range(24):
        opt.step()
        sched.step()
        fresh_opt.step()
        fresh.step()
        assert fresh_opt.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)


def test_min_lr_is_the_floor_of_the_cosine():
    lrs = _lrs(TrainConfig(lr=2.0, min_lr=0.2, epochs=4, schedule="cosine", warmup_epochs=0), 25)
    assert lrs[0] == 2.0 and lrs[50] == pytest.approx(1.1) and min(lrs) > 0.2


def test_the_ema_warms_up_so_early_averages_follow_the_weights():
    from torch.optim.swa_utils import AveragedModel

    assert ema_decay(0.999, 1) == 2 / 11 and ema_decay(0.999, 8991) == 0.999 and ema_decay(0.9, 100) == 0.9
    model = torch.nn.Linear(4, 2)
    ema = AveragedModel(model, multi_avg_fn=ema_update(0.999), use_buffers=True)
    expected = model.weight.detach().clone()
    for n in range(50):  # the first update copies; the n-th after it decays by min(0.999, (1 + n) / (10 + n))
        with torch.no_grad():
            model.weight.add_(1.0)
        ema.update_parameters(model)
        d = 0.0 if n == 0 else ema_decay(0.999, n)
        expected = d * expected + (1 - d) * model.weight.detach()
    assert torch.allclose(ema.module.weight, expected, atol=1e-4)
    # after 50 updates the random start weighs nothing; a plain 0.999 decay would still hold 95% of it
    assert (model.weight - ema.module.weight).abs().max() < 10
