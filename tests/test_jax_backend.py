"""The JAX backend: the Flax ViT gives the PyTorch model's logits, and ``--backend jax`` trains a run
whose checkpoints the PyTorch side reads."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from vitrain.cli import main
from vitrain.models.vit import VisionTransformer, ViTConfig

from .conftest import _metrics, _without_timing, interrupt_validation

pytest.importorskip("jax")
pytest.importorskip("optax")
from flax import nnx  # noqa: E402

from vitrain.models import vit_flax  # noqa: E402

BASE = dict(img_size=16, patch_size=4, in_chans=3, num_classes=7, embed_dim=32, depth=3, num_heads=4, mlp_dim=64)


@pytest.mark.parametrize(
    "variant",
    [
        {},
        {"pool": "avg"},
        {"stem": "conv"},
        {"stem": "conv", "stem_width": 24},
        {"distilled": True},
        {"head_hidden": 24},
        {"in_chans": 1},
    ],
    ids=["cls", "avg", "conv-stem", "wide-conv-stem", "distilled", "mlp-head", "gray"],
)
def test_the_same_weights_give_the_same_logits_in_both_backends(variant):
    cfg = ViTConfig(**{**BASE, **variant})
    torch.manual_seed(0)
    model = VisionTransformer(cfg).eval()
    for module in model.modules():  # running statistics that are not the initial ones
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_()
            module.running_var.uniform_(0.5, 2.0)
    flax_model = vit_flax.FlaxViT(cfg, nnx.Rngs(1))
    vit_flax.load_torch_state(flax_model, model.state_dict())
    images = torch.randn(5, cfg.in_chans, 16, 16)
    with torch.no_grad():
        expected = model(images).numpy()
    np.testing.assert_allclose(np.asarray(flax_model(images.numpy())), expected, atol=1e-5, rtol=0)
    back = vit_flax.to_torch_state(flax_model)  # and back to PyTorch's names and layouts, bit for bit
    state = model.state_dict()
    assert set(state) - set(back) <= {k for k in state if k.endswith("num_batches_tracked")}
    assert all(np.array_equal(back[k], state[k].numpy()) for k in back)


def test_a_jax_run_is_read_by_eval_and_lands_near_the_pytorch_run(tmp_path, capsys):
    common = ["--epochs", "4", "--no-progress", "--mixup", "0.2", "--ema", "0.9", "--clip-grad", "1"]
    assert main(["train", "--backend", "jax", "--out", str(tmp_path / "jax"), *common]) == 0
    assert main(["train", "--out", str(tmp_path / "torch"), *common]) == 0
    jax_report = json.loads((tmp_path / "jax" / "report.json").read_text())
    torch_report = json.loads((tmp_path / "torch" / "report.json").read_text())
    assert abs(jax_report["test"]["accuracy"] - torch_report["test"]["accuracy"]) < 0.1
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "jax"), "--data", "digits"]) == 0
    assert f"accuracy {jax_report['test']['accuracy']:.4f}" in capsys.readouterr().out


def test_without_jax_the_backend_says_how_to_install_it(monkeypatch, tmp_path, capsys):
    import builtins

    real_import = builtins.__import__

    def no_jax(name, *args, **kwargs):
        if name == "jax" or name.startswith(("jax.", "flax", "optax")):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_jax)
    assert main(["train", "--backend", "jax", "--out", str(tmp_path / "run")]) == 2
    assert "pip install 'vitrain[jax]'" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def _both_backends(tmp_path, **settings):
    """A PyTorch and a JAX backend for the same digits run, from the same initial weights."""
    from vitrain.config import TrainConfig
    from vitrain.engine.jax_backend import JaxBackend
    from vitrain.engine.setup import prepare_run
    from vitrain.engine.torch_backend import TorchBackend

    cfg = TrainConfig(out=str(tmp_path / "run"), dropout=0.0, drop_path=0.0, precision="fp32", **settings)
    run = prepare_run(cfg, resume=False, log=lambda *a, **k: None)
    torch.manual_seed(0)
    torch_side = TorchBackend(run.cfg, run.splits, run.device, run.place)
    torch.manual_seed(0)
    jax_side = JaxBackend(run.cfg, run.splits, run.device, run.place)
    jax_side.state["params"], jax_side.state["rest"] = jax_side._from_torch(torch_side.model.state_dict())
    return run.cfg, torch_side, jax_side


def _assert_same_weights(torch_side, jax_side, atol):
    jax_weights = jax_side._torch_weights(jax_side.state)
    for name, value in torch_side.model.state_dict().items():
        if name in jax_weights:
            np.testing.assert_allclose(jax_weights[name].numpy(), value.numpy(), atol=atol, rtol=0, err_msg=name)


@pytest.mark.parametrize(
    "settings",
    [
        dict(optimizer="adamw", weight_decay=0.05, clip_grad=0.5, label_smoothing=0.1),
        dict(optimizer="sgd", lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3),
        dict(optimizer="adam", weight_decay=1e-4, layer_decay=0.7, head_lr=3e-3),
        dict(optimizer="adamw", stem="conv", pool="avg"),  # BatchNorm's statistics are updated by the step
    ],
    ids=["adamw", "sgd-nesterov", "adam-layer-decay", "conv-stem"],
)
def test_the_same_steps_from_the_same_weights_give_the_same_weights_in_both_backends(tmp_path, settings):
    cfg, torch_side, jax_side = _both_backends(tmp_path, epochs=2, warmup_epochs=0.5, schedule="cosine", **settings)
    total = 8  # a warmup of two steps, then the cosine: every step runs at a different rate
    torch_side.start(total, total // 2)
    jax_side.start(total, total // 2)
    torch_side.start_epoch(1)
    jax_side.start_epoch(1)
    generator = torch.Generator().manual_seed(1)
    model = torch_side.model.config
    size = (16, model.in_chans, model.img_size, model.img_size)
    for step in range(5):
        assert jax_side.lr() == pytest.approx(torch_side.lr(), rel=1e-12), f"learning rate of step {step}"
        images = torch.randn(size, generator=generator)
        labels = torch.randint(0, len(cfg.classes), (16,), generator=generator)
        expected, got = torch_side.train_step(images, labels), jax_side.train_step(images, labels)
        assert float(got.loss) == pytest.approx(float(expected.loss), abs=1e-5)
        assert float(got.grad_norm) == pytest.approx(float(expected.grad_norm), rel=1e-4)
        _assert_same_weights(torch_side, jax_side, atol=1e-5)


@pytest.mark.parametrize(
    "settings",
    [
        dict(schedule="cosine", warmup_epochs=1, min_lr=1e-5),
        dict(schedule="step", step_size=1, gamma=0.5),
        dict(schedule="multistep", milestones=[0.6, 0.85], gamma=0.1),  # the tutorial's piecewise-constant one
        dict(schedule="constant", warmup_epochs=0.5),
    ],
    ids=["warmup-cosine", "step", "multistep", "constant"],
)
def test_the_schedules_agree_step_by_step(tmp_path, settings):
    cfg, torch_side, jax_side = _both_backends(tmp_path, epochs=4, **settings)
    total, per_epoch = 20, 5
    for side in (torch_side, jax_side):
        side.start(total, per_epoch)
        side.start_epoch(1)
    model = torch_side.model.config
    images = torch.zeros(4, model.in_chans, model.img_size, model.img_size)
    labels = torch.zeros(4, dtype=torch.long)
    rates = []
    for step in range(16):
        if step == 10:  # a time budget re-plans a running schedule: 16 steps instead of 20
            torch_side.replan(16)
            jax_side.replan(16)
        expected = torch_side.lr()
        assert jax_side.lr() == pytest.approx(expected, rel=1e-12), f"step {step}"
        torch_side.train_step(images, labels)
        jax_side.train_step(images, labels)
        applied = float(jax_side.state["opt"].hyperparams["learning_rate"])  # what the jitted step used
        assert applied == pytest.approx(expected, rel=1e-6), f"step {step}"
        rates.append(expected)
    assert len(set(rates)) > 2  # the schedule moved


def test_a_stopped_and_resumed_jax_run_ends_with_the_same_weights(flat_folder, tmp_path, tiny_args, monkeypatch):
    from safetensors.torch import load_file

    from vitrain.engine.jax_backend import JaxBackend

    # 24 training images in batches of 7: a short last batch, with MixUp/CutMix, EMA, dropout and drop path
    common = ["--data", str(flat_folder), *tiny_args, "--backend", "jax", "--epochs", "3", "--batch-size", "7"]
    common += ["--mixup", "0.8", "--cutmix", "1.0", "--ema", "0.9", "--dropout", "0.1", "--drop-path", "0.1"]
    assert main(["train", "--out", str(tmp_path / "full"), *common]) == 0
    undo = interrupt_validation(monkeypatch, JaxBackend)
    assert main(["train", "--out", str(tmp_path / "cut"), *common]) == 130
    undo()
    assert main(["train", "--resume", str(tmp_path / "cut"), "--no-progress"]) == 0
    full, resumed = (load_file(str(tmp_path / name / "last.safetensors")) for name in ("full", "cut"))
    assert full.keys() == resumed.keys()
    assert all(torch.equal(full[k], resumed[k]) for k in full)
    assert _without_timing(_metrics(tmp_path / "full")) == _without_timing(_metrics(tmp_path / "cut"))


def test_two_devices_train_as_one_device_with_their_global_batch(flat_folder, tmp_path, tiny_args):
    import os
    import subprocess
    import sys

    from safetensors.torch import load_file

    # XLA makes its CPU devices when JAX starts, so the runs go in a process of their own
    common = ["train", "--data", str(flat_folder), *tiny_args, "--backend", "jax", "--epochs", "3"]
    common += ["--dropout", "0.1", "--mixup", "0.5"]  # the same dropout masks and mixing, however the batch is split
    outputs = {}
    for name, devices, batch in (("two", 2, 4), ("one", 1, 8)):
        args = [*common, "--device", "cpu", "--batch-size", str(batch), "--out", str(tmp_path / name)]
        env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
        script = f"from vitrain.cli import main; raise SystemExit(main({args!r}))"
        done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        outputs[name] = done.stdout
    assert "batch 4 per device x 2 = 8" in outputs["two"] and "JAX on 2 cpu device(s)" in outputs["two"]
    report = json.loads((tmp_path / "two" / "report.json").read_text())
    assert (report["devices_per_process"], report["global_batch_size"]) == (2, 8)
    two_weights, one_weights = (load_file(str(tmp_path / name / "last.safetensors")) for name in ("two", "one"))
    for name, value in one_weights.items():
        np.testing.assert_allclose(two_weights[name].numpy(), value.numpy(), atol=1e-5, rtol=0, err_msg=name)
    rows = [_without_timing(_metrics(tmp_path / name)) for name in ("two", "one")]
    for a, b in zip(*rows):
        assert float(a["train_loss"]) == pytest.approx(float(b["train_loss"]), abs=1e-5)
        assert a["val_accuracy"] == b["val_accuracy"]


def test_a_jax_run_loads_files_in_worker_processes_started_from_a_fork_server(flat_folder, tmp_path, tiny_args):
    args = ["train", "--data", str(flat_folder), *tiny_args, "--backend", "jax", "--epochs", "1"]
    assert main([*args, "--in-memory", "off", "--workers", "2", "--out", str(tmp_path / "run")]) == 0
    assert json.loads((tmp_path / "run" / "report.json").read_text())["test"]["images"] == 3


def test_compiled_steps_are_kept_in_the_user_cache_unless_jax_is_told_otherwise(monkeypatch, tmp_path):
    import jax

    from vitrain.engine.jax_backend import import_jax

    before = jax.config.jax_compilation_cache_dir
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    try:
        jax.config.update("jax_compilation_cache_dir", None)
        import_jax()
        assert jax.config.jax_compilation_cache_dir == str(tmp_path / "vitrain" / "jax")
        jax.config.update("jax_compilation_cache_dir", str(tmp_path / "mine"))  # JAX_COMPILATION_CACHE_DIR's effect
        import_jax()
        assert jax.config.jax_compilation_cache_dir == str(tmp_path / "mine")
    finally:
        jax.config.update("jax_compilation_cache_dir", before)


def test_a_checkpoint_loads_into_the_flax_model_as_the_jax_guide_shows(tmp_path, tiny_args, flat_folder):
    from safetensors.numpy import load_file

    import vitrain

    run = tmp_path / "run"
    assert main(["train", "--data", str(flat_folder), *tiny_args, "--epochs", "1", "--out", str(run)]) == 0
    model = vitrain.load_model(run)
    flax_model = vit_flax.FlaxViT(model.config, nnx.Rngs(0))
    vit_flax.load_torch_state(flax_model, load_file(str(run / "best.safetensors")))
    images = torch.randn(2, model.config.in_chans, model.config.img_size, model.config.img_size)
    with torch.no_grad():
        expected = model.eval()(images).numpy()
    np.testing.assert_allclose(np.asarray(flax_model(images.numpy())), expected, atol=1e-5, rtol=0)


def test_a_jax_run_starts_from_the_weights_of_a_pytorch_run(flat_folder, tmp_path, tiny_args):
    from safetensors.torch import load_file

    from vitrain.config import TrainConfig
    from vitrain.engine.setup import prepare_run
    from vitrain.engine.train import make_backend

    source = tmp_path / "torch-run"
    assert main(["train", "--data", str(flat_folder), *tiny_args, "--epochs", "2", "--out", str(source)]) == 0
    cfg = TrainConfig(data=str(flat_folder), backend="jax", pretrained=str(source), out=str(tmp_path / "jax"))
    backend = make_backend(prepare_run(cfg, resume=False, log=lambda *a, **k: None))
    start, trained = backend._torch_weights(backend.state), load_file(str(source / "best.safetensors"))
    assert start.keys() == trained.keys()  # the same classes: the trained head is kept too
    assert all(torch.equal(start[k], trained[k]) for k in trained)


def test_dropout_masks_keep_each_element_with_the_asked_probability():
    import jax

    key = jax.random.key(0, impl="rbg")
    kept = np.asarray(vit_flax._keep(key, 0.8, (101, 99)))  # an odd number of elements
    assert kept.shape == (101, 99) and abs(kept.mean() - 0.8) < 0.01
    assert np.asarray(vit_flax._keep(key, 1 - 1e-7, (5,))).all()  # too small a rate for 16 bits: nothing dropped
