"""``vitrain export --format hf|timm``: folders that Hugging Face ``transformers`` and timm load as their own.

* ``hf``: ``config.json`` (with ``id2label``), ``model.safetensors`` and
  ``preprocessor_config.json``, written by ``transformers`` itself (``ViTForImageClassification``
  and ``ViTImageProcessor``), so ``pipeline("image-classification", model=DIR)`` works;
* ``timm``: ``model.safetensors`` and ``config.json`` (timm's ``pretrained_cfg`` with
  ``label_names``, and the architecture's arguments), written by ``timm.models.save_for_hf``,
  so ``timm.create_model("local-dir:DIR", pretrained=True)`` (or ``hf-hub:USER/NAME`` once
  pushed) builds the model.

Each folder is written beside its destination, loaded back with that library and checked
against vitrain's logits before it replaces anything. A model the library cannot express
(a convolutional stem, an MLP head; for ``hf`` also average pooling or a distillation token) is
refused with the reason, pointing to ``--format onnx``.
"""

from __future__ import annotations

import json
import shutil
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import torch

from ..models.convert import timm_args, to_huggingface
from ..models.vit import VisionTransformer

FOLDER_FORMATS = ("hf", "timm")
# what an export folder holds; a folder holding anything else is never replaced
EXPORT_FILES = frozenset({"config.json", "model.safetensors", "preprocessor_config.json", "README.md"})
STAMP = "vitrain_export"  # a key of the export's config.json: the folder is vitrain's to replace
PARITY_TOLERANCE = 1e-4
# Pillow's RGB -> L weights (ITU-R 601-2 luma): a grayscale model exported for RGB input weighs the
# channels as vitrain's own reading of an RGB file as grayscale does
LUMA = (0.299, 0.587, 0.114)


class FolderExportError(RuntimeError):
    """The model cannot be exported in this format, or the export disagrees with vitrain."""


def unsupported(model: VisionTransformer, fmt: str) -> list[str]:
    """What ``fmt``'s model class cannot express about ``model`` (empty when it can)."""
    cfg = model.config
    problems = []
    if cfg.stem == "conv":
        problems.append("its convolutional stem")
    if cfg.head_hidden:
        problems.append("its MLP head (--head-hidden)")
    if fmt == "hf":
        if cfg.pool != "cls":
            problems.append("average pooling without a class token (ViTForImageClassification reads the class token)")
        if cfg.distilled:
            problems.append("its distillation token")
    if fmt == "timm" and int(cfg.embed_dim * (cfg.mlp_dim / cfg.embed_dim)) != cfg.mlp_dim:
        problems.append(f"an MLP width ({cfg.mlp_dim}) that timm's mlp_ratio cannot give")
    return problems


def _resize_side(model: VisionTransformer) -> int:
    """The shorter side images are resized to before the center crop, as vitrain evaluates."""
    return int(round(model.config.img_size / model.meta.get("crop_pct", 1.0)))


def _huggingface(model: VisionTransformer, folder: Path) -> Callable[[torch.Tensor], torch.Tensor]:
    """Write the ``transformers`` folder; returns its model loaded back from disk (3-channel input)."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    cfg, classes = model.config, list(model.meta["classes"])
    config = ViTConfig(
        image_size=cfg.img_size,
        patch_size=cfg.patch_size,
        num_channels=3,  # the pipeline hands every image over as RGB
        hidden_size=cfg.embed_dim,
        num_hidden_layers=cfg.depth,
        num_attention_heads=cfg.num_heads,
        intermediate_size=cfg.mlp_dim,
        hidden_act="gelu",
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        layer_norm_eps=cfg.norm_eps,
        qkv_bias=True,
        id2label=dict(enumerate(classes)),
        label2id={name: i for i, name in enumerate(classes)},
        **{STAMP: True},  # kept in config.json
    )
    hf_model = ViTForImageClassification(config).eval()
    state = model.state_dict()
    if cfg.in_chans == 1:  # an RGB image reaches the 1-channel kernel as its luma
        luma = torch.tensor(LUMA, dtype=state["patch_embed.proj.weight"].dtype).view(1, 3, 1, 1)
        state = {**state, "patch_embed.proj.weight": state["patch_embed.proj.weight"] * luma}
    hf_model.load_state_dict(to_huggingface(state, hf_model.state_dict().keys()), strict=True)
    hf_model.save_pretrained(folder)  # model.safetensors
    mean, std = list(model.meta["mean"]), list(model.meta["std"])
    side = _resize_side(model)
    ViTImageProcessor(
        do_resize=True,
        size={"shortest_edge": side},
        resample=2,  # PIL.Image.BILINEAR, with antialiasing, as vitrain resizes
        do_center_crop=True,
        crop_size={"height": cfg.img_size, "width": cfg.img_size},
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=mean * 3 if len(mean) == 1 else mean,
        image_std=std * 3 if len(std) == 1 else std,
        do_convert_rgb=True,
    ).save_pretrained(folder)
    loaded = ViTForImageClassification.from_pretrained(folder).eval()
    return lambda x: loaded(pixel_values=x).logits


def _timm(model: VisionTransformer, folder: Path) -> Callable[[torch.Tensor], torch.Tensor]:
    """Write the timm folder; returns its model loaded back from disk."""
    import timm
    from timm.models import save_for_hf

    cfg = model.config
    args = timm_args(cfg)
    architecture = "deit_base_distilled_patch16_224" if cfg.distilled else "vit_base_patch16_224"
    timm_model = timm.create_model(architecture, pretrained=False, **args).eval()
    timm_model.load_state_dict(model.state_dict(), strict=True)
    data_config = {
        "input_size": (cfg.in_chans, cfg.img_size, cfg.img_size),
        "interpolation": "bilinear",
        "mean": tuple(model.meta["mean"]),
        "std": tuple(model.meta["std"]),
        "crop_pct": model.meta.get("crop_pct", 1.0),
        "crop_mode": "center",
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        save_for_hf(
            timm_model,
            str(folder),
            model_config={"label_names": list(model.meta["classes"]), STAMP: True},
            safe_serialization=True,
            data_config=data_config,
        )
        loaded = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    return loaded


@contextmanager
def _quiet_progress_bars():
    """Without transformers' bars for writing and loading a few tensors (they say nothing here)."""
    try:
        from transformers.utils import logging as transformers_logging
    except ImportError:
        yield
        return
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        transformers_logging.enable_progress_bar()


def is_vitrain_export(folder: Path) -> bool:
    """Whether ``folder`` is an hf/timm export that vitrain wrote (its config.json carries the stamp)."""
    try:
        return json.loads((folder / "config.json").read_text(encoding="utf-8")).get(STAMP) is True
    except (OSError, ValueError, AttributeError):
        return False


def _replaceable(out: Path) -> None:
    """Refuse an ``--out`` that vitrain may not replace: anything but a new or empty folder, or an
    earlier export (its config.json stamped by vitrain, nothing else in it but an export's files)."""
    if out.resolve() in (Path.cwd().resolve(), *Path.cwd().resolve().parents) or out.name in ("", ".", ".."):
        raise FolderExportError(f"--out {out}: give a folder of its own for the export (it is replaced whole)")
    if out.exists() and not out.is_dir():
        raise FolderExportError(f"--out {out} is a file; an hf or timm export is a folder")
    if not out.is_dir() or not any(out.iterdir()):
        return
    foreign = sorted(p.name for p in out.iterdir() if p.name not in EXPORT_FILES)
    if foreign or not is_vitrain_export(out):
        what = f"files an export does not write ({', '.join(foreign[:3])})" if foreign else "an export of another tool"
        raise FolderExportError(f"--out {out} holds {what}; choose an empty or new folder")


def export_folder(
    model: VisionTransformer, fmt: str, out: Path, card: str | None = None, log=print, source: str = "the model"
) -> tuple[Path, float]:
    """Write ``model`` as a ``fmt`` folder at ``out`` (and ``card`` as its README.md); returns (out, parity).

    Parity is the largest absolute logit difference between the folder's model, loaded back
    by its library, and vitrain's on a random batch of 3.
    """
    if fmt not in FOLDER_FORMATS:
        raise FolderExportError(f"--format must be one of {', '.join(FOLDER_FORMATS)}, got {fmt!r}")
    problems = unsupported(model, fmt)
    if problems:
        library = "transformers' ViTForImageClassification" if fmt == "hf" else "timm's VisionTransformer"
        raise FolderExportError(
            f"{library} cannot express this model: {'; '.join(problems)}. "
            "--format onnx (or torchscript) exports any vitrain model"
        )
    try:
        writer = _huggingface if fmt == "hf" else _timm
        __import__("transformers" if fmt == "hf" else "timm")
    except ImportError:
        raise FolderExportError(
            f"--format {fmt} needs {'transformers' if fmt == 'hf' else 'timm'}: pip install 'vitrain[hub]'"
        ) from None
    out = Path(out)
    _replaceable(out)
    staging = out.parent / f".{out.name}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        with _quiet_progress_bars():
            theirs = writer(model, staging)
        cfg = model.config
        generator = torch.Generator().manual_seed(0)
        check = torch.randn(3, cfg.in_chans, cfg.img_size, cfg.img_size, generator=generator)
        given = check.expand(-1, 3, -1, -1) if fmt == "hf" and cfg.in_chans == 1 else check  # gray as RGB
        with torch.inference_mode():
            diff = float((theirs(given) - model(check)).abs().max())
        if not diff <= PARITY_TOLERANCE:
            raise FolderExportError(f"the {fmt} model differs from vitrain's by {diff:.2e} (> {PARITY_TOLERANCE})")
        if card is not None:
            (staging / "README.md").write_text(card)
        shutil.rmtree(out, ignore_errors=True)
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    library = "transformers" if fmt == "hf" else "timm"
    log(
        f"exported {source} -> {out} ({fmt}{', with its model card' if card else ''}); loaded back with {library}: "
        f"max abs logit diff on a batch of 3 {diff:.2e}"
    )
    return out, diff
