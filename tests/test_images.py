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


@pytest.mark.parametrize("name", ["scan.png", "scan.tif"])
def test_twelve_bit_scans_in_sixteen_bit_files_keep_their_grey_levels(tmp_path, name):
    """A 12-bit scan stored in 16 bits (values 0..4095): divided by 257 it would be dark, with 16 grey levels;
    ``auto`` stretches its own range, ``--bit-depth 12`` maps 0..4095 for every image alike."""
    arr = (np.arange(64 * 64).reshape(64, 64) % 4096).astype(np.uint16)
    arr[0, 0], arr[0, 1] = 100, 4000  # darkest and brightest samples
    arr = np.clip(arr, 100, 4000)
    path = tmp_path / name
    Image.fromarray(arr).save(path)
    auto = read_image(path, 1)
    assert (int(auto.min()), int(auto.max())) == (0, 255) and len(auto.unique()) > 200
    twelve = read_image(path, 1, bit_depth=12)
    assert int(twelve.max()) == round(4000 * 255 / 4095) and int(twelve.min()) == round(100 * 255 / 4095)
    sixteen = read_image(path, 1, bit_depth=16)
    assert int(sixteen.max()) == round(4000 / 257) and len(sixteen.unique()) <= 17  # what 1/257 leaves


def _dicom(path, pixels: np.ndarray, **tags) -> None:
    """Write a single-frame grayscale DICOM file with pydicom (``tags``: window, rescale, photometric)."""
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientName = "MR", "Test^Phantom"
    ds.Rows, ds.Columns = pixels.shape[-2:]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, tags.pop("photometric", "MONOCHROME2")
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    if pixels.ndim == 3:
        ds.NumberOfFrames = pixels.shape[0]
    for key, value in tags.items():
        setattr(ds, key, value)
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(str(path), enforce_file_format=True)
    del pydicom


def test_dicom_images_are_read_through_their_rescale_and_window(tmp_path):
    pixels = np.array([[0, 1000, 2000, 3000, 4000]], dtype=np.uint16).repeat(4, axis=0)
    # Hounsfield-like values = 1 * stored - 1000; a window of width 2001 centred on 0.5 spans stored 0..2000
    _dicom(
        tmp_path / "windowed.dcm", pixels, RescaleSlope=1, RescaleIntercept=-1000, WindowCenter=0.5, WindowWidth=2001
    )
    row = read_image(tmp_path / "windowed.dcm", 1)[0, 0].tolist()
    assert row == [0, 128, 255, 255, 255]
    _dicom(tmp_path / "inverted.dcm", pixels, photometric="MONOCHROME1", WindowCenter=2000.5, WindowWidth=4001)
    assert read_image(tmp_path / "inverted.dcm", 1)[0, 0].tolist() == [255, 191, 127, 64, 0]
    _dicom(tmp_path / "plain.dcm", pixels)  # no window: scaled as --bit-depth says
    assert read_image(tmp_path / "plain.dcm", 1)[0, 0].tolist() == [0, 64, 128, 191, 255]
    assert read_image(tmp_path / "plain.dcm", 3, bit_depth=12).shape == (3, 4, 5)
    _dicom(tmp_path / "cine.dcm", np.stack([pixels, pixels]))
    with pytest.raises(ImageReadError, match="cine.dcm: a DICOM file of 2 frames; vitrain reads single images"):
        read_image(tmp_path / "cine.dcm", 1)
    (tmp_path / "broken.dcm").write_bytes(b"DICM but not really")
    with pytest.raises(ImageReadError, match="broken.dcm: not a readable DICOM image"):
        read_image(tmp_path / "broken.dcm", 1)


def test_a_folder_of_dicom_files_trains_and_predicts_end_to_end(tmp_path, tiny_args, capsys):
    """Class folders of ``.dcm`` files: trained, predicted and annotated like any images; --bit-depth is
    recorded in the checkpoint, so prediction decodes as training did."""
    import vitrain
    from vitrain.cli import main

    rng = np.random.default_rng(0)
    for c, level in (("benign", 800), ("malignant", 3200)):
        (tmp_path / "scans" / c).mkdir(parents=True)
        for i in range(8):
            _dicom(tmp_path / "scans" / c / f"{i}.dcm", rng.normal(level, 300, (20, 20)).clip(0, 4095))
    run = tmp_path / "run"
    args = ["train", "--data", str(tmp_path / "scans"), *tiny_args, "--bit-depth", "12", "--out", str(run)]
    assert main(args) == 0
    assert vitrain.load_model(run).meta["bit_depth"] == "12"
    assert "1 channel(s)" in capsys.readouterr().out
    scan = tmp_path / "scans" / "malignant" / "0.dcm"
    assert main(["predict", str(run), str(scan), "--out", str(tmp_path / "pred"), "--annotate"]) == 0
    assert (tmp_path / "pred" / "predictions.csv").read_text().count("0.dcm") == 1
