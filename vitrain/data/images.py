"""Reading image files into uint8 tensors with a fixed channel count."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
)


class ImageReadError(ValueError):
    """An image file could not be read; the message names the file."""


def is_image_file(path: Path) -> bool:
    """True for a visible file with an image extension (other files in a dataset are ignored)."""
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def _to_8bit(img: Image.Image) -> Image.Image:
    """High-bit-depth grayscale ('I;16', 'I', 'F') -> 'L', scaling rather than clipping."""
    arr = np.asarray(img)
    if img.mode.startswith("I;16"):
        scaled = arr.astype(np.float32) / 257.0
    elif img.mode == "I":
        # 16-bit PNGs often open as 'I'; values above 255 mean a 16-bit range
        scaled = arr.astype(np.float32) / (257.0 if arr.max(initial=0) > 255 else 1.0)
    else:  # 'F'
        scaled = arr.astype(np.float32) * (255.0 if arr.max(initial=0) <= 1.0 else 1.0)
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), mode="L")


def convert_channels(img: Image.Image, channels: int) -> Image.Image:
    """Convert any PIL mode to 'L' (channels=1) or 'RGB' (channels=3).

    Transparency is composited onto white, the way image viewers show it; 16-bit and
    float images are rescaled to 8 bits; palette, CMYK and bilevel images are expanded.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        img = _to_8bit(img)
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    target = "L" if channels == 1 else "RGB"
    return img if img.mode == target else img.convert(target)


def upright(img: Image.Image) -> Image.Image:
    """``img`` as image viewers show it: turned as its EXIF orientation tag says (phone photos
    are often stored sideways with such a tag); unchanged when it has none."""
    if img.getexif().get(ExifTags.Base.Orientation, 1) == 1:
        return img
    return ImageOps.exif_transpose(img)


def read_image(path: str | Path, channels: int, max_side: int | None = None) -> torch.Tensor:
    """Decode ``path`` into a (channels, H, W) uint8 tensor, upright (:func:`upright`).

    ``max_side`` lets the JPEG decoder downscale by powers of two while decoding (the
    shorter side stays at least ``max_side``), which is much faster for big photos.

    Raises:
        ImageReadError: naming the file, if it is empty, truncated or not an image.
    """
    path = Path(path)
    try:
        with Image.open(path) as img:
            if max_side is not None:
                img.draft(None, (max_side, max_side))
            img.load()
            img = convert_channels(upright(img), channels)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise _read_error(path, err) from None
    arr = np.array(img, dtype=np.uint8)  # a writable copy
    if arr.ndim == 2:
        arr = arr[None]
    else:
        arr = arr.transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(arr))


def image_mode(path: Path) -> str:
    """The PIL mode of an image file, read from its header only."""
    try:
        with Image.open(path) as img:
            return img.mode
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise _read_error(path, err) from None


def _read_error(path: Path, err: Exception) -> ImageReadError:
    """The error for an unreadable image: it names the file, and says so when the file is empty."""
    reason = "empty file" if path.exists() and path.stat().st_size == 0 else str(err)
    return ImageReadError(f"cannot read image {path}: {reason}")
