"""The time-budget planner (``vitrain/engine/budget.py``): the steps that fit, and re-planning from measured epochs."""

from __future__ import annotations

import pytest


def test_steps_that_fit_pays_a_full_overhead_for_a_partial_epoch():
    from vitrain.engine.budget import recent_speed, steps_that_fit

    # 10 s: 10 steps/epoch at 0.1 s plus 1 s overhead per epoch -> 5 epochs of 2 s each
    assert steps_that_fit(10.0, 0.1, 1.0, 10) == 50
    # 10.5 s: 52 steps would need a 6th epoch and its overhead; 5 whole epochs fit
    assert steps_that_fit(10.5, 0.1, 1.0, 10) == 50
    assert steps_that_fit(0.5, 0.1, 1.0, 10) == 0
    # long epochs are measured alone; short ones are pooled until 20 s
    assert recent_speed([(100, 10.0, 1.0), (100, 30.0, 2.0)]) == pytest.approx((0.3, 2.0))
    assert recent_speed([(100, 30.0, 9.0), (10, 5.0, 0.5), (10, 5.0, 0.1), (10, 15.0, 0.3)]) == pytest.approx(
        (20 / 20, 0.2)
    )
    assert recent_speed([(100, 30.0, 3.0), (10, 5.0, 0.0), (10, 5.0, 0.0), (10, 5.0, 0.0)]) == pytest.approx(
        (45 / 130, 0.75)
    )


def test_replanning_from_pooled_overheads_does_not_swing_with_alternating_checkpoint_costs():
    # 2 s epochs of 28 steps whose overhead alternates between 0.1 s and 0.3 s (an improved
    # epoch also writes best.safetensors): the plan from the pooled overhead holds still, where
    # one made from each epoch's own overhead swung by more than 2% every epoch
    from vitrain.engine.budget import recent_speed, replan_budget, steps_that_fit

    speed: list[tuple[int, float, float]] = []
    budget = {"planned_steps": 28 * 1000, "replans": []}
    seconds_left, done = 2300.0, 0
    for epoch in range(1, 41):
        overhead = 0.1 if epoch % 2 else 0.3
        speed.append((28, 2.0, overhead))
        done, seconds_left = done + 28, seconds_left - 2.0 - overhead
        alone = done + steps_that_fit(seconds_left, 2.0 / 28, overhead, 28)
        if epoch > 10:
            assert abs(alone - budget["planned_steps"]) > 0.02 * budget["planned_steps"]
        replan_budget(budget, done, seconds_left, *recent_speed(speed), 28, epoch)
    # re-plans while the first epochs fill the 20 s window, none after it
    assert budget["replans"] and all(r["after_epoch"] <= 10 for r in budget["replans"])
    assert budget["planned_steps"] == pytest.approx(28 * 2300 / 2.2, rel=0.01)
