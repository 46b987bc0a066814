"""``vitrain export``: ONNX or TorchScript with a dynamic batch and the preprocessing in the metadata, or a
Hugging Face / timm folder (:mod:`.hub_export`); every export is parity checked and gets a model card."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import torch

from ..checkpoint import load_model, resolve_checkpoint_path
from ..data.transforms import eval_decode_side_for
from .card import CardError, model_card, write_card
from .hub_export import FOLDER_FORMATS, FolderExportError, export_folder

FILE_FORMATS = ("onnx", "torchscript")
FORMATS = FILE_FORMATS + FOLDER_FORMATS
PARITY_TOLERANCE = 1e-3


class ExportError(RuntimeError):
    """Exporting failed, or the exported model disagrees with PyTorch."""


def _preprocessing(model) -> dict:
    cfg = model.config
    side = eval_decode_side_for(model.meta, cfg.img_size)
    return {
        "input": f"float32 (batch, {cfg.in_chans}, {cfg.img_size}, {cfg.img_size}), RGB order"
        if cfg.in_chans == 3
        else f"float32 (batch, 1, {cfg.img_size}, {cfg.img_size}), grayscale",
        "steps": [
            f"decode JPEGs with Pillow's draft mode, img.draft(None, ({side}, {side})), as vitrain does "
            "(a full decode gives slightly different pixels)",
            "turn the image upright as its EXIF orientation tag says (PIL.ImageOps.exif_transpose)",
            f"resize the shorter side to {round(cfg.img_size / model.meta.get('crop_pct', 1.0))} px (bilinear)",
            f"center-crop {cfg.img_size}x{cfg.img_size}",
            "scale pixel values to [0, 1]",
            "subtract mean and divide by std per channel",
        ],
        "mean": model.meta["mean"],
        "std": model.meta["std"],
        "crop_pct": model.meta.get("crop_pct", 1.0),
        "classes": model.meta["classes"],
        "output": "logits (batch, num_classes); softmax gives probabilities",
        "arch": cfg.to_dict(),
    }


def _export_onnx(model, example: torch.Tensor, out: Path, metadata: dict) -> None:
    try:
        import onnx
    except ImportError:
        raise ExportError("ONNX export needs the onnx and onnxscript packages: pip install 'vitrain[onnx]'") from None
    batch = torch.export.Dim("batch", min=1, max=65536)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (example,),
            str(out),
            input_names=["images"],
            output_names=["logits"],
            dynamo=True,
            dynamic_shapes={"x": {0: batch}},
            verbose=False,
        )
    proto = onnx.load(str(out))
    entry = proto.metadata_props.add()
    entry.key, entry.value = "vitrain", json.dumps(metadata)
    onnx.save(proto, str(out))


def _run_onnx(path: Path, batch: np.ndarray) -> tuple[np.ndarray, str]:
    try:
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(None, {session.get_inputs()[0].name: batch})[0], "onnxruntime"
    except ImportError:
        from onnx.reference import ReferenceEvaluator

        return ReferenceEvaluator(str(path)).run(None, {"images": batch})[0], "onnx reference evaluator"


def _card_for(checkpoint: Path, fmt: str | None, license: str | None, log, model=None) -> str | None:
    """The model card of the run the checkpoint belongs to, or None (with a note) when there is none to write:
    a checkpoint outside a finished run folder, or not the run's best model, which the card describes."""
    from ..checkpoint import CheckpointError

    if resolve_checkpoint_path(checkpoint.parent) != checkpoint:
        log(f"note: no model card written: it describes {checkpoint.parent / 'best.safetensors'}, not {checkpoint}")
        return None
    try:
        return model_card(checkpoint.parent, fmt, license=license, model=model)
    except (CardError, CheckpointError, KeyError, ValueError) as err:
        log(f"note: no model card written ({err})")
        return None


def export_model(
    source: str | Path, fmt: str, out: str | Path | None = None, log=print, license: str | None = None
) -> tuple[Path, float]:
    """Export a checkpoint; returns what was written and the max abs logit difference against PyTorch.

    ``onnx`` and ``torchscript`` write a file (the parity check runs a random batch of a different
    size than the one traced, so the dynamic batch dimension is checked too) and the model card
    (README.md) beside it, unless one is there already (with ``license``, vitrain's own card is
    written again); ``hf`` and ``timm`` write a folder with the card inside.
    """
    if fmt not in FORMATS:
        raise ExportError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    checkpoint = resolve_checkpoint_path(source)
    model = load_model(checkpoint)
    if fmt in FOLDER_FORMATS:
        target = Path(out) if out else checkpoint.parent / f"export-{fmt}"
        card = _card_for(checkpoint, fmt, license, log, model)
        try:
            return export_folder(model, fmt, target, card=card, log=log, source=str(checkpoint))
        except FolderExportError as err:
            raise ExportError(str(err)) from None
    written, diff = _export_file(model, checkpoint, fmt, out, log)
    readme = written.parent / "README.md"
    if readme.exists() and license is None:  # an earlier card (perhaps with its license) stays
        log(f"model card: kept {readme} (vitrain card {checkpoint.parent} writes it again)")
        return written, diff
    card = _card_for(checkpoint, None, license, log, model)
    if card is not None:
        try:
            log(f"model card: {write_card(readme, card)}")
        except CardError as err:
            log(f"note: model card not written: {err}")
    return written, diff


def _export_file(model, checkpoint: Path, fmt: str, out: str | Path | None, log) -> tuple[Path, float]:
    """ONNX or TorchScript of ``model`` (loaded from ``checkpoint``): the file and its parity with PyTorch."""
    cfg = model.config
    out = Path(out) if out else checkpoint.with_suffix(".onnx" if fmt == "onnx" else ".torchscript.pt")
    if out.is_dir():
        raise ExportError(
            f"--out {out} is a folder; give the file to write, e.g. {out / checkpoint.stem}"
            + (".onnx" if fmt == "onnx" else ".torchscript.pt")
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    metadata = _preprocessing(model)
    generator = torch.Generator().manual_seed(0)
    example = torch.randn(2, cfg.in_chans, cfg.img_size, cfg.img_size, generator=generator)
    check = torch.randn(3, cfg.in_chans, cfg.img_size, cfg.img_size, generator=generator)
    with torch.inference_mode():
        expected = model(check).numpy()
    if fmt == "onnx":
        _export_onnx(model, example, out, metadata)
        got, runtime = _run_onnx(out, check.numpy())
    else:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(model, example)
        traced.save(str(out), _extra_files={"vitrain.json": json.dumps(metadata)})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit's deprecation notice, about the format itself
            got, runtime = torch.jit.load(str(out))(check).detach().numpy(), "torch.jit.load"
    diff = float(np.abs(got - expected).max())
    log(f"exported {checkpoint} -> {out} ({fmt}); parity on a batch of 3 via {runtime}: max abs diff {diff:.2e}")
    if not diff <= PARITY_TOLERANCE:
        raise ExportError(f"{out}: exported model differs from PyTorch by {diff:.2e} (> {PARITY_TOLERANCE})")
    return out, diff
