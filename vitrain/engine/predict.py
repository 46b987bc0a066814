"""``vitrain predict``: classify image files with a checkpoint, optionally drawing the answers on them."""

from __future__ import annotations

import csv
import glob
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from ..checkpoint import load_model
from ..config.checks import parse_bit_depth
from ..data.images import ImageReadError, convert_channels, is_image_file, read_dicom, read_image, upright
from ..data.transforms import eval_decode_side_for, eval_transform_for
from .attention import attention_rollout_maps

RIGHT, WRONG, NEUTRAL = (30, 160, 60), (210, 40, 40), (40, 40, 40)


@dataclass
class Prediction:
    """One image's top-k answer, and its true class when its folder names one."""

    path: Path
    top: list[tuple[str, float]]
    true_label: str | None = None
    attention: np.ndarray | None = None

    @property
    def label(self) -> str:
        return self.top[0][0]

    @property
    def probability(self) -> float:
        return self.top[0][1]

    @property
    def correct(self) -> bool | None:
        return None if self.true_label is None else self.label == self.true_label


@dataclass
class PredictResult:
    predictions: list[Prediction] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (input, reason)
    meta: dict[str, Any] = field(default_factory=dict)  # the checkpoint's classes and preprocessing

    def accuracy(self) -> float | None:
        judged = [p.correct for p in self.predictions if p.correct is not None]
        return sum(judged) / len(judged) if judged else None


def collect_inputs(inputs: Sequence[str]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Image files from files, folders (recursively) and glob patterns; plus inputs that matched nothing."""
    found: list[Path] = []
    missing: list[tuple[str, str]] = []
    for item in inputs:
        path = Path(item).expanduser()
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and is_image_file(p))
            if not files:
                missing.append((item, "folder holds no image files"))
            found.extend(files)
        elif path.is_file():
            found.append(path)
        elif glob.has_magic(item):
            files = sorted(Path(p) for p in glob.glob(os.path.expanduser(item), recursive=True) if Path(p).is_file())
            if not files:
                missing.append((item, "pattern matched no files"))
            found.extend(files)
        else:
            missing.append((item, "no such file or folder"))
    return list(dict.fromkeys(found)), missing


class Predictor:
    """A checkpoint loaded once, ready to classify image files (``vitrain predict`` and ``vitrain serve``).

    ``precision`` is ``--precision`` (:mod:`~vitrain.engine.precision`; ``auto`` times a forward pass).
    """

    def __init__(
        self,
        source: str | Path,
        *,
        batch_size: int = 32,
        device: torch.device | None = None,
        precision: str = "fp32",
    ) -> None:
        from .precision import choose_precision

        self.device = device or torch.device("cpu")
        self.model = load_model(source).to(self.device)
        self.batch_size = batch_size
        self.amp = choose_precision(precision, self.device, self.model, batch_size, train=False).dtype
        self.classes = list(self.model.meta["classes"])
        self.transform = eval_transform_for(self.model.meta, self.model.config.img_size)
        self.max_side = eval_decode_side_for(self.model.meta, self.model.config.img_size)  # as training evaluated
        self.bit_depth = checkpoint_bit_depth(self.model.meta)

    @property
    def meta(self) -> dict[str, Any]:
        """The checkpoint's classes and preprocessing."""
        return dict(self.model.meta)

    def predict(self, paths: Sequence[Path], *, top_k: int = 5, attention: bool = False) -> PredictResult:
        """Classify ``paths``; unreadable files are recorded in ``result.failed`` and skipped."""
        k = max(1, min(top_k, len(self.classes)))
        result = PredictResult(meta=self.meta)
        for start in range(0, len(paths), self.batch_size):
            batch, kept = [], []
            for path in paths[start : start + self.batch_size]:
                try:
                    image = read_image(path, self.model.config.in_chans, self.max_side, self.bit_depth)
                    batch.append(self.transform(image))
                    kept.append(Path(path))
                except ImageReadError as err:
                    result.failed.append((str(path), str(err)))
            if not batch:
                continue
            images = torch.stack(batch).to(self.device)
            with (
                torch.inference_mode(),
                torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None),
            ):
                if attention:
                    logits, maps = attention_rollout_maps(self.model, images)
                else:
                    logits, maps = self.model(images), None
            probs = logits.float().softmax(dim=1)
            values, indices = probs.topk(k, dim=1)
            for i, path in enumerate(kept):
                top = [(self.classes[j], float(v)) for v, j in zip(values[i].tolist(), indices[i].tolist())]
                true = path.parent.name if path.parent.name in self.classes else None
                attn = None if maps is None else maps[i].float().cpu().numpy()
                result.predictions.append(Prediction(path, top, true, attn))
        return result


def predict_files(
    source: str | Path,
    inputs: Sequence[str],
    *,
    top_k: int = 5,
    batch_size: int = 32,
    attention: bool = False,
    device: torch.device | None = None,
    precision: str = "fp32",
) -> PredictResult:
    """Classify every image in ``inputs`` (files, folders, glob patterns) with the checkpoint (or run folder)
    ``source``.

    Unreadable files are recorded in ``result.failed`` and skipped. ``precision`` is
    ``--precision`` (:mod:`~vitrain.engine.precision`; ``auto`` times a forward pass).
    """
    predictor = Predictor(source, batch_size=batch_size, device=device, precision=precision)
    paths, missing = collect_inputs(inputs)
    result = predictor.predict(paths, top_k=top_k, attention=attention)
    result.failed = missing + result.failed
    return result


def in_training_data(paths: Sequence[Path], meta: dict[str, Any]) -> tuple[Path, int] | None:
    """(the checkpoint's training folder, how many of ``paths`` lie in it) when some do, else None.

    Images under a test or validation split folder (``test/``, ``Testing/``, ``val/``, ...)
    are held out by the folder layout and not counted. A flat folder's held-out images are
    carved by a seed, so there every image counts: the model may have trained on it.
    """
    from ..data.sources import SPLIT_NAMES

    data = meta.get("data")
    root = Path(data).expanduser() if isinstance(data, str) and data else None
    if root is None or not root.is_dir():
        return None
    root = root.resolve()
    count = 0
    for path in paths:
        path = path.resolve()
        if path.is_relative_to(root) and not any(
            SPLIT_NAMES.get(part.lower()) in ("val", "test") for part in path.relative_to(root).parts[:-1]
        ):
            count += 1
    return (root, count) if count else None


def write_predictions_csv(path: Path, result: PredictResult, top_k: int) -> None:
    """``path,label,probability``, the top-k labels and probabilities, then the true label where known."""
    k = max((len(p.top) for p in result.predictions), default=min(top_k, 1))
    header = ["path", "label", "probability"]
    for i in range(1, k + 1):
        header += [f"top{i}_label", f"top{i}_probability"]
    header += ["true_label", "correct"]
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for p in result.predictions:
            row: list[Any] = [str(p.path), p.label, f"{p.probability:.6f}"]
            for label, prob in p.top:
                row += [label, f"{prob:.6f}"]
            row += ["", ""] * (k - len(p.top))
            row += [p.true_label or "", "" if p.correct is None else str(p.correct).lower()]
            writer.writerow(row)


def checkpoint_bit_depth(meta: dict[str, Any]) -> str | int:
    """How the checkpoint's training decoded 16-bit images (``--bit-depth``; checkpoints from before the
    option divided by 2**16 - 1)."""
    return parse_bit_depth(meta.get("bit_depth", 16))


def _display_copy(path: Path, min_side: int = 224, bit_depth: str | int = "auto") -> Image.Image:
    """The image as RGB, enlarged (nearest neighbour, pixels stay visible) when it is small."""
    if path.suffix.lower() == ".dcm":
        rgb = read_dicom(path, bit_depth).convert("RGB")
    else:
        with Image.open(path) as img:
            img.load()
            rgb = convert_channels(upright(img), 3, bit_depth)
    scale = max(1, -(-min_side // min(rgb.size)))
    return rgb.resize((rgb.width * scale, rgb.height * scale), Image.NEAREST) if scale > 1 else rgb


def annotate(prediction: Prediction, out_path: Path) -> None:
    """Save a copy of the image with the predicted label and probability (and the true label) drawn on it."""
    img = _display_copy(prediction.path)
    draw = ImageDraw.Draw(img)
    lines = [f"{prediction.label} {prediction.probability:.0%}"]
    color = NEUTRAL
    border = max(2, min(img.size) // 40)
    if prediction.true_label is not None:
        color = RIGHT if prediction.correct else WRONG
        lines.append(("right" if prediction.correct else "wrong") + f" (true: {prediction.true_label})")
        draw.rectangle((0, 0, img.width - 1, img.height - 1), outline=color, width=border)
    text = "\n".join(lines)
    font_size = max(12, img.height // 14)
    for _ in range(3):  # long class names: shrink the text until it fits inside the border
        pad = max(2, font_size // 4)
        font = ImageFont.load_default(size=font_size)
        box = draw.multiline_textbbox((pad, pad), text, font=font)
        room = img.width - border - 2 * pad - 1
        if box[2] - pad <= room or font_size <= 10:
            break
        font_size = max(10, int(font_size * room / (box[2] - pad)))
    draw.rectangle((0, 0, box[2] + pad, box[3] + pad), fill=color)
    draw.multiline_text((pad, pad), text, fill=(255, 255, 255), font=font)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    img.save(out_path)


def attention_overlay(prediction: Prediction, crop_pct: float = 1.0, max_side: int | None = None) -> Image.Image:
    """The rollout map drawn over the region the model saw; the rest of the image is dimmed.

    The model sees the central square of the image (``crop_pct`` of the shorter side). With
    ``max_side``, a larger image is drawn shrunk to that longer side.
    """
    import matplotlib

    raw = prediction.attention
    if raw is None:
        raise ValueError(f"{prediction.path}: predicted without attention maps")
    picture = _display_copy(prediction.path)
    if max_side is not None and max(picture.size) > max_side:
        picture.thumbnail((max_side, max_side), Image.BILINEAR)
    img = np.asarray(picture, dtype=np.float32) / 255
    height, width = img.shape[:2]
    side = int(round(min(height, width) * crop_pct))
    top, left = (height - side) // 2, (width - side) // 2
    heat = (raw - raw.min()) / max(float(raw.max() - raw.min()), 1e-12)
    heat = np.asarray(Image.fromarray((heat * 255).astype(np.uint8)).resize((side, side), Image.BILINEAR)) / 255.0
    blend = img * 0.35  # outside the model's view
    seen = img[top : top + side, left : left + side]
    blend[top : top + side, left : left + side] = 0.55 * seen + 0.45 * matplotlib.colormaps["inferno"](heat)[..., :3]
    return Image.fromarray((blend * 255).clip(0, 255).astype(np.uint8))


def save_attention(prediction: Prediction, png_path: Path, crop_pct: float = 1.0) -> None:
    """The rollout overlay (:func:`attention_overlay`) as a PNG, and the raw map as ``.npy`` beside it."""
    png_path.parent.mkdir(parents=True, exist_ok=True)
    np.save(png_path.with_suffix(".npy"), prediction.attention)
    attention_overlay(prediction, crop_pct).save(png_path)


def output_names(paths: Sequence[Path]) -> dict[Path, Path]:
    """Each input's path relative to the inputs' common folder, so outputs never collide."""
    if not paths:
        return {}
    parents = [str(p.resolve().parent) for p in paths]
    root = Path(os.path.commonpath(parents))
    return {p: p.resolve().relative_to(root) for p in paths}


def write_outputs(
    result: PredictResult, out: str | Path, top_k: int, *, annotated: bool = False, attention: bool = False
) -> Path:
    """Write ``out/predictions.csv`` and, if asked, ``out/annotated/`` copies and ``out/attention/`` maps.

    Output paths mirror the inputs below their common folder. Returns the CSV's path.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_predictions_csv(out / "predictions.csv", result, top_k)
    names = output_names([p.path for p in result.predictions])
    crop_pct = result.meta.get("crop_pct", 1.0)
    for p in result.predictions:
        if annotated:
            annotate(p, (out / "annotated" / names[p.path]).with_suffix(".png"))
        if attention:
            save_attention(p, (out / "attention" / names[p.path]).with_suffix(".png"), crop_pct)
    return out / "predictions.csv"
