"""The JAX backend: the Flax ViT gives the PyTorch model's logits, and ``--backend jax`` trains a run
whose checkpoints the PyTorch side reads."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from vitrain.cli import main
from vitrain.models.vit import VisionTransformer, ViTConfig

pytest.importorskip("jax")
pytest.importorskip("optax")
from flax import nnx  # noqa: E402

from vitrain.models import vit_flax  # noqa: E402

BASE = dict(img_size=16, patch_size=4, in_chans=3, num_classes=7, embed_dim=32, depth=3, num_heads=4, mlp_dim=64)


@pytest.mark.parametrize(
    "variant",
    [{}, {"pool": "avg"}, {"stem": "conv"}, {"distilled": True}, {"head_hidden": 24}, {"in_chans": 1}],
    ids=["cls", "avg", "conv-stem", "distilled", "mlp-head", "gray"],
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
