"""``vitrain export`` (``vitrain/engine/export.py``): ONNX and TorchScript files that carry the preprocessing
and give the checkpoint's logits."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import vitrain
from vitrain.cli import main


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_has_dynamic_batch_metadata_and_parity(trained, tmp_path, fmt, capsys):
    run, _ = trained
    out = tmp_path / f"model.{fmt}"
    assert main(["export", str(run), "--format", fmt, "--out", str(out)]) == 0
    assert "max abs diff" in capsys.readouterr().out
    model = vitrain.load_model(run)
    batch = torch.randn(5, 3, 16, 16)
    with torch.inference_mode():
        expected = model(batch).numpy()
    if fmt == "onnx":
        onnx = pytest.importorskip("onnx")
        ort = pytest.importorskip("onnxruntime")
        meta = json.loads({p.key: p.value for p in onnx.load(str(out)).metadata_props}["vitrain"])
        got = ort.InferenceSession(str(out)).run(None, {"images": batch.numpy()})[0]
    else:
        extra = {"vitrain.json": ""}
        loaded = torch.jit.load(str(out), _extra_files=extra)
        meta = json.loads(extra["vitrain.json"])
        got = loaded(batch).detach().numpy()
    assert np.abs(got - expected).max() < 1e-4
    assert meta["classes"] == ["cat", "dog", "fox"] and meta["mean"] == model.meta["mean"]
    assert "center-crop 16x16" in meta["steps"] and "img.draft(None, (17, 17))" in meta["steps"][0]
