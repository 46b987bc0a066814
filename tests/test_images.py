"""Decoding image files: every common mode to 1 or 3 channels, and errors that name the file."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from vitrain.data.images import ImageReadError, is_image_file, read_image


def _save(tmp_path, img: Image.Image, name: str):
    path = tmp_path / name
    img.save(path)
    return path


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize(
    "mode, name",
    [
        ("RGB", "rgb.jpg"),
        ("L", "gray.png"),
        ("RGBA", "rgba.png"),
        ("P", "palette.png"),
        ("LA", "la.png"),
        ("CMYK", "cmyk.jpg"),
        ("1", "bilevel.png"),
    ],
)
def test_every_mode_converts_to_the_requested_channels(tmp_path, mode, name, channels):
    img = Image.new("RGB", (12, 10), (120, 60, 30)).convert(mode)
    out = read_image(_save(tmp_path, img, name), channels)
    assert out.shape == (channels, 10, 12)
    assert out.dtype.is_floating_point is False


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path):
    arr = np.array([[0, 32768, 65535]], dtype=np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(arr).save(path)
    assert Image.open(path).mode.startswith("I")
    out = read_image(path, 1)
    assert out[0, 0].tolist() == [0, 128, 255]


def test_transparency_is_composited_on_white(tmp_path):
    img = Image.new("RGBA", (4, 4), (0, 0, 0, 0))  # fully transparent black
    out = read_image(_save(tmp_path, img, "clear.png"), 3)
    assert out.min() == 255


def test_gray_to_rgb_replicates_and_rgb_to_gray_uses_luma(tmp_path):
    gray = read_image(_save(tmp_path, Image.new("L", (3, 3), 77), "g.png"), 3)
    assert gray.unique().tolist() == [77]
    red = read_image(_save(tmp_path, Image.new("RGB", (3, 3), (255, 0, 0)), "r.png"), 1)
    assert red.unique().tolist() == [76]  # 0.299 * 255


@pytest.mark.parametrize(
    "content, reason",
    [(b"", "empty file"), (b"this is not an image at all", "cannot identify"), (None, "truncated")],
)
def test_unreadable_files_name_the_file(tmp_path, content, reason):
    path = tmp_path / "bad.jpg"
    if content is None:  # a real JPEG cut in half
        Image.new("RGB", (64, 64), (1, 2, 3)).save(path, quality=95)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
        path.write_bytes(content)
    with pytest.raises(ImageReadError, match=r"cannot read image .*bad\.jpg") as info:
        read_image(path, 3)
    assert reason in str(info.value).lower() or content is None


def test_reduced_size_decoding_keeps_the_shorter_side_large_enough(tmp_path):
    path = _save(tmp_path, Image.new("RGB", (800, 600), (5, 5, 5)), "big.jpg")
    out = read_image(path, 3, max_side=100)
    assert min(out.shape[1:]) >= 100 and out.shape[1] < 600


@pytest.mark.parametrize("max_side", [None, 100])
def test_phone_photos_stored_sideways_are_read_upright(tmp_path, max_side):
    """EXIF orientation 6: the camera stored the picture turned; viewers rotate it 90 degrees clockwise."""
    from vitrain.engine.predict import _display_copy

    stored = Image.new("RGB", (800, 400), (0, 0, 255))
    stored.paste((255, 0, 0), (0, 0, 400, 400))  # left half red: the top once upright
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(tmp_path / "phone.jpg", exif=exif)
    out = read_image(tmp_path / "phone.jpg", 3, max_side)
    assert out.shape[1] > out.shape[2]  # portrait, as shown
    top, bottom = out[:, 5, out.shape[2] // 2].tolist(), out[:, -5, out.shape[2] // 2].tolist()
    assert top[0] > 200 > top[2] and bottom[2] > 200 > bottom[0]
    assert _display_copy(tmp_path / "phone.jpg").size == (400, 800)  # predict's annotated copy too


def test_only_visible_image_files_count(tmp_path):
    assert is_image_file(tmp_path / "a.JPG")
    assert not is_image_file(tmp_path / "notes.txt")
    assert not is_image_file(tmp_path / ".hidden.png")
