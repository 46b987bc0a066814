"""Reading image files into uint8 tensors with a fixed channel count."""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import ExifTags, Image, ImageOps

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".dcm"}
)
HIGH_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")  # integer samples of more than 8 bits
GRAY_MODES = frozenset({"1", "L", "LA", "F", *HIGH_BIT_MODES})  # single-channel images
# what Pillow raises for a file that is not a readable image (UnidentifiedImageError is an OSError)
UNREADABLE = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


class ImageReadError(ValueError):
    """An image file could not be read; the message names the file."""


def is_image_file(path: Path) -> bool:
    """True for a visible file with an image extension (other files in a dataset are ignored)."""
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def _to_8bit(img: Image.Image, bit_depth: str | int = "auto") -> Image.Image:
    """High-bit-depth grayscale ('I;16', 'I', 'F') -> 'L', scaling rather than clipping.

    Integer images are scaled as ``bit_depth`` says: "auto" stretches the image's own range
    (its darkest sample to 0, its brightest to 255: 12-bit MRI or CT stored in 16 bits keeps
    its grey levels); a number N maps 0..2**N - 1 onto 0..255, the same for every image
    (values above clip). Float images in [0, 1] are scaled by 255, others kept as they are.
    """
    return Image.fromarray(_scaled(np.asarray(img).astype(np.float64), img.mode == "F", bit_depth), mode="L")


def _scaled(values: np.ndarray, is_float: bool, bit_depth: str | int) -> np.ndarray:
    if is_float:
        scaled = values * (255.0 if values.max(initial=0) <= 1.0 else 1.0)
    elif bit_depth == "auto":
        lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
        scaled = (values - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(values)
    else:
        scaled = values * (255.0 / (2 ** int(bit_depth) - 1))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def convert_channels(img: Image.Image, channels: int, bit_depth: str | int = "auto") -> Image.Image:
    """Convert any PIL mode to 'L' (channels=1) or 'RGB' (channels=3).

    Transparency is composited onto white, the way image viewers show it; 16-bit and
    float images are rescaled to 8 bits (as ``bit_depth`` says, see :func:`_to_8bit`);
    palette, CMYK and bilevel images are expanded.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    if img.mode in (*HIGH_BIT_MODES, "F"):
        img = _to_8bit(img, bit_depth)
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


def read_image(
    path: str | Path, channels: int, max_side: int | None = None, bit_depth: str | int = "auto"
) -> torch.Tensor:
    """Decode ``path`` into a (channels, H, W) uint8 tensor, upright (:func:`upright`).

    ``max_side`` lets the JPEG decoder downscale by powers of two while decoding (the
    shorter side stays at least ``max_side``), which is much faster for big photos.
    ``bit_depth`` says how 16-bit images become 8-bit (:func:`_to_8bit`). DICOM files
    (``.dcm``) are read with pydicom (:func:`read_dicom`).

    Raises:
        ImageReadError: naming the file, if it is empty, truncated or not an image.
    """
    path = Path(path)
    try:
        if path.suffix.lower() == ".dcm":
            return _tensor(convert_channels(read_dicom(path, bit_depth), channels))
        return decode_image(path, channels, max_side, bit_depth)
    except UNREADABLE as err:
        raise _read_error(path, err) from None


def decode_image(
    source: str | Path | BinaryIO, channels: int, max_side: int | None = None, bit_depth: str | int = "auto"
) -> torch.Tensor:
    """What :func:`read_image` does with an image Pillow reads, from a path or a file object (an image
    held in memory, such as a shard's sample); Pillow's errors (:data:`UNREADABLE`) pass through."""
    with Image.open(source) as img:
        if max_side is not None:
            img.draft(None, (max_side, max_side))
        img.load()
        return _tensor(convert_channels(upright(img), channels, bit_depth))


def _tensor(img: Image.Image) -> torch.Tensor:
    """A PIL image as a (C, H, W) uint8 tensor that owns its memory."""
    arr = np.array(img, dtype=np.uint8)  # a writable copy
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(arr))


def read_dicom(path: Path, bit_depth: str | int = "auto") -> Image.Image:
    """A single-frame DICOM image as an 8-bit PIL image ('L', or 'RGB' for colour files).

    Grayscale pixels go through the modality transform (Rescale Slope/Intercept), then the
    file's first window (Window Center/Width, with DICOM's linear function, PS3.3
    C.11.2.1.2), as a viewer first shows them; a file without a window is scaled as
    ``bit_depth`` says (:func:`_to_8bit`). MONOCHROME1 (where white is low) is inverted.
    """
    pydicom = _pydicom()
    from pydicom.multival import MultiValue
    from pydicom.pixels import apply_modality_lut

    try:
        ds = pydicom.dcmread(path)
        pixels = ds.pixel_array
    except Exception as err:  # pydicom raises many kinds for a broken file
        raise ValueError(f"not a readable DICOM image ({type(err).__name__}: {err})") from None
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if frames > 1:
        raise ValueError(f"a DICOM file of {frames} frames; vitrain reads single images (one frame per file)")
    if int(getattr(ds, "SamplesPerPixel", 1)) == 3:
        return Image.fromarray(np.asarray(pixels, dtype=np.uint8), mode="RGB")
    values = np.asarray(apply_modality_lut(pixels, ds), dtype=np.float64)
    if "WindowCenter" in ds and "WindowWidth" in ds:
        center, width = (
            float(v[0]) if isinstance(v, MultiValue) else float(v) for v in (ds.WindowCenter, ds.WindowWidth)
        )
        if width > 1:
            scaled = ((values - (center - 0.5)) / (width - 1) + 0.5) * 255.0
        else:  # a width of 1 is a threshold
            scaled = np.where(values > center - 0.5, 255.0, 0.0)
        gray = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    else:
        gray = _scaled(values - min(0.0, float(values.min(initial=0))), False, bit_depth)  # negative: from 0
    if getattr(ds, "PhotometricInterpretation", "") == "MONOCHROME1":
        gray = 255 - gray
    return Image.fromarray(gray, mode="L")


def image_mode(path: Path) -> str:
    """The PIL mode of an image file, read from its header only (a DICOM file: decoded)."""
    if path.suffix.lower() == ".dcm":
        return "RGB" if int(getattr(_dicom_header(path), "SamplesPerPixel", 1)) == 3 else "L"
    try:
        with Image.open(path) as img:
            return img.mode
    except UNREADABLE as err:
        raise _read_error(path, err) from None


def image_side(path: Path) -> int:
    """The shorter side of an image, in pixels, read from its header only."""
    if path.suffix.lower() == ".dcm":
        header = _dicom_header(path)
        return min(int(header.Rows), int(header.Columns))
    try:
        with Image.open(path) as img:
            return min(img.size)
    except UNREADABLE as err:
        raise _read_error(path, err) from None


def _dicom_header(path: Path):
    """A DICOM file's header (its pixel data left unread)."""
    try:
        pydicom = _pydicom()
    except ValueError as err:
        raise _read_error(path, err) from None
    try:
        header = pydicom.dcmread(path, stop_before_pixels=True)
        header.Rows, header.Columns  # noqa: B018 - an image has both
        return header
    except Exception as err:  # pydicom raises many kinds for a broken file
        raise _read_error(path, ValueError(f"not a readable DICOM image ({type(err).__name__}: {err})")) from None


def _pydicom():
    """The pydicom module, or a ValueError that says how to install it."""
    try:
        import pydicom
    except ImportError:
        raise ValueError("reading DICOM files needs pydicom: pip install 'vitrain[dicom]'") from None
    return pydicom


def _read_error(path: Path, err: Exception) -> ImageReadError:
    """The error for an unreadable image: it names the file, and says so when the file is empty."""
    reason = "empty file" if path.exists() and path.stat().st_size == 0 else str(err)
    return ImageReadError(f"cannot read image {path}: {reason}")
