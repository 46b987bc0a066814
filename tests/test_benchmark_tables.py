"""The tables of ``benchmarks/accuracy.py``: a two-stage run (``--pretrain``) shows both stages' work."""

from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import load_script

ROOT = Path(__file__).resolve().parents[1]


def _module(name: str):
    return load_script(ROOT / "benchmarks" / f"{name}.py")


def _report(epochs: int, done: int, planned: int, **more) -> dict:
    return {
        "test": {"accuracy": 0.5, "images": 10},
        "val": {"accuracy": 0.4},
        "epochs": epochs,
        "time_budget": {"planned_steps": planned, "done_steps": done},
        "model": {"parameters": 840_000},
        **more,
    }


def test_a_two_stage_run_lists_its_first_stage_beside_the_second(monkeypatch, tmp_path):
    accuracy = _module("accuracy")
    reports = {
        "folder-best": _report(148, 2360, 2360),
        "folder-bestpretrainlabels": _report(69, 1096, 1096, pretraining=_report(202, 3231, 3300)),
    }
    monkeypatch.setattr(accuracy, "train_report", lambda run, flags: reports[run.name.split("-", 1)[1]])
    rows = [
        accuracy.run_one("flowers17", "folder-best", 15, tmp_path),
        accuracy.run_one("flowers17", "folder-best", 15, tmp_path, ["--pretrain", "labels"]),
    ]
    assert "first_stage" not in rows[0]
    assert rows[1]["first_stage"] == {"epochs": 202, "planned_steps": 3300, "done_steps": 3231, "test_accuracy": 0.5}
    table = accuracy.markdown(rows, 15, ["--only", "flowers17"]).splitlines()
    assert "| 148 | 2360 / 2360 |" in table[5]
    assert "| 202 + 69 | 3231 / 3300 + 1096 / 1096 |" in table[6]
    assert table[-1].startswith("Two-stage runs (`--pretrain`)")


def test_the_long_tailed_cifar_counts_fall_geometrically_from_largest_to_largest_over_ratio():
    imbalance = _module("imbalance")
    counts = imbalance.long_tailed_counts(1000, 20)
    assert counts[0] == 1000 and counts[-1] == 50 and len(counts) == 10
    assert all(a > b for a, b in zip(counts, counts[1:]))
    assert counts[4] == round(1000 * 20 ** (-4 / 9))


def test_the_imbalance_table_gives_each_arms_accuracy_and_tail_recall(monkeypatch, tmp_path):
    imbalance = _module("imbalance")
    (tmp_path / "cifar10.tar").touch()
    monkeypatch.setattr(imbalance, "cifar10_long_tailed", lambda largest, ratio, datasets: tmp_path)
    seen = []

    def report(run, flags):
        seen.append(flags)
        balanced = "balanced" in flags
        recall = {c: (0.5 if balanced else 0.2) if i >= 7 else 0.9 for i, c in enumerate(imbalance.CLASS_ORDER)}
        return {
            "test": {"accuracy": 0.6, "balanced_accuracy": 0.6, "per_class": recall, "images": 10000},
            "best_epoch": 3,
            "epochs": 4,
            "splits": {"train": 3064},
            "time_budget": {"done_steps": 99},
            "total_seconds": 1.0,
        }

    monkeypatch.setattr(imbalance, "train_report", report)
    assert imbalance.main(["--minutes", "1", "--datasets", str(tmp_path), "--out", str(tmp_path / "out")]) == 0
    assert seen[1][-4:] == ["--class-weights", "balanced", "--best-metric", "balanced-accuracy"]
    table = (tmp_path / "out" / "imbalance.md").read_text()
    assert "| default | 0 | 0.6000 | 0.2000 | 0.9000 | 3 / 4 |" in table
    assert "| balanced (`--class-weights balanced --best-metric balanced-accuracy`) | 0 | 0.6000 | 0.5000 |" in table


def test_the_jax_profile_classes_each_xla_kernel_by_what_it_computes():
    pytest.importorskip("jax")
    pytest.importorskip("timm")
    import jax
    import jax.numpy as jnp

    profile = _module("jax_profile")

    def step(x, w, key):
        h = x @ w  # (4, 8, 16) @ (16, 16): a dense matmul
        scores = jnp.einsum("bqd,bkd->bqk", h, h)  # a batched one
        keep = jax.random.bits(key, h.shape) < jnp.uint32(2**31)  # dropout's random bits
        return jax.nn.softmax(scores, axis=-1).sum() + jnp.where(keep, h, 0).sum()

    args = (jnp.ones((4, 8, 16)), jnp.ones((16, 16)), jax.random.key(0, impl="rbg"))
    kinds = profile.hlo_kinds(jax.jit(step).lower(*args).compile().as_text())
    found = set(kinds.values())
    assert {"dense matmul", "batched matmul (attention)", "dropout (random bits, masks)"} <= found
    assert found <= set(profile.KINDS)
    assert profile.torch_kind("aten::addmm") == "dense matmul"
    assert profile.torch_kind("aten::_scaled_dot_product_flash_attention_for_cpu") == "batched matmul (attention)"
    assert profile.torch_kind("aten::native_dropout") == "dropout (random bits, masks)"
    assert profile.torch_kind("aten::gelu") == profile.KINDS[-1]


def test_the_progressive_resizing_bound_pays_the_extra_compile_and_mixes_the_step_times():
    progressive = _module("progressive")
    assert progressive.sides(32, 8) == [16, 24, 32]
    assert progressive.sides(64, 16) == [32, 48, 64]
    result = {
        "img_size": 32,
        "batch_size": 100,
        "step_s": {16: 0.05, 32: 0.1},
        "compile_s": {16: 10.0, 32: 30.0},
    }
    rows = {row["fraction"]: row["images_ratio"] for row in progressive.bounds(result, train_seconds=100.0)}
    # half the images at twice the speed: 0.075 s per 100 images; 90 s left after the extra compile
    assert rows[0.5] == pytest.approx((90.0 / 0.075) / (100.0 / 0.1))
    assert rows[1 / 3] == pytest.approx((90.0 / (0.05 / 3 + 0.1 * 2 / 3)) / 1000.0)
