"""Every kind of ``--data``: digits, torchvision sets, flat and split folders, class subsets, bad input."""

from __future__ import annotations

import shutil
import struct
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vitrain.data import folders
from vitrain.data.images import ImageReadError
from vitrain.data.sources import DataError, load_data, stratified_split

from .conftest import CLASS_COLORS, make_image, write_class_folders


def test_digits_has_a_fixed_stratified_split():
    a, b = load_data("digits"), load_data("digits", split_seed=5)
    assert a.sizes() == {"train": 1259, "val": 179, "test": 359}
    assert a.test.targets == b.test.targets  # fixed, whatever the split seed
    image, label = a.train[0]
    assert image.shape == (1, 8, 8) and image.dtype.is_floating_point is False and 0 <= label < 10
    counts = Counter(a.test.targets)
    assert max(counts.values()) - min(counts.values()) <= 2  # stratified
    assert not a.hflip_ok


def test_digits_can_be_three_channel_and_subset():
    splits = load_data("digits", channels=3, classes=["3", "8"])
    assert splits.classes == ["3", "8"]
    assert splits.train[0][0].shape == (3, 8, 8)
    assert set(splits.test.targets) == {0, 1}


def test_flat_folder_split_is_seeded_and_stratified(flat_folder):
    a = load_data(str(flat_folder), val_fraction=0.2, test_fraction=0.2, split_seed=1)
    b = load_data(str(flat_folder), val_fraction=0.2, test_fraction=0.2, split_seed=1)
    c = load_data(str(flat_folder), val_fraction=0.2, test_fraction=0.2, split_seed=2)
    assert a.sizes() == {"train": 18, "val": 6, "test": 6}
    assert Counter(a.val.targets) == {0: 2, 1: 2, 2: 2}
    assert a.val.paths == b.val.paths and a.val.paths != c.val.paths
    assert not set(a.train.paths) & set(a.val.paths) | set(a.train.paths) & set(a.test.paths)
    assert a.classes == ["cat", "dog", "fox"] and a.channels == 3


def test_kaggle_training_testing_folders_inside_a_wrapper(split_folder):
    splits = load_data(str(split_folder), val_fraction=0.2)
    assert splits.sizes() == {"train": 24, "val": 6, "test": 12}
    assert all("Testing" in str(p) for p in splits.test.paths)
    assert any("validation = 20% of Training/" in n for n in splits.notes)


def test_train_val_test_spellings(tmp_path):
    for folder, n in (("train", 6), ("valid", 2), ("test", 3)):
        write_class_folders(tmp_path / folder, per_class=n)
    splits = load_data(str(tmp_path))
    assert splits.sizes() == {"train": 18, "val": 6, "test": 9}


def test_train_and_val_only_evaluates_on_val(tmp_path):
    write_class_folders(tmp_path / "train", per_class=4)
    write_class_folders(tmp_path / "validation", per_class=2)
    splits = load_data(str(tmp_path))
    assert splits.test is None and any("no test split" in n for n in splits.notes)


def test_class_subset_keeps_the_given_order(split_folder):
    splits = load_data(str(split_folder), classes=["fox", "cat"])
    assert splits.classes == ["fox", "cat"]
    assert all(("fox" in str(p)) == (t == 0) for p, t in zip(splits.test.paths, splits.test.targets))


def test_unknown_class_in_subset_lists_what_exists(flat_folder):
    with pytest.raises(DataError, match="--classes: wolf not found.*available: cat, dog, fox"):
        load_data(str(flat_folder), classes=["cat", "wolf"])


def test_grayscale_folder_gives_one_channel_and_mixed_gives_three(tmp_path):
    gray = tmp_path / "gray"
    for name in ("a", "b"):
        (gray / name).mkdir(parents=True)
        for i in range(3):
            make_image((90, 90, 90), i, mode="L").save(gray / name / f"{i}.png")
    assert load_data(str(gray), val_fraction=0.34, test_fraction=0).channels == 1
    # mixing in an RGBA and a palette image makes it a 3-channel set; each converts cleanly
    make_image((10, 200, 10), 9).convert("RGBA").save(gray / "a" / "rgba.png")
    make_image((10, 10, 200), 9).convert("P").save(gray / "b" / "palette.png")
    splits = load_data(str(gray), val_fraction=0.25, test_fraction=0.25)
    assert splits.channels == 3
    for dataset in (splits.train, splits.val, splits.test):
        for i in range(len(dataset)):
            assert dataset[i][0].shape[0] == 3
    assert load_data(str(gray), channels=1, val_fraction=0.25, test_fraction=0.25).channels == 1


def test_non_image_files_are_ignored_and_counted(flat_folder):
    (flat_folder / "cat" / "notes.txt").write_text("hello")
    (flat_folder / "cat" / ".DS_Store").write_bytes(b"\0")
    (flat_folder / "README.md").write_text("about this set")
    splits = load_data(str(flat_folder))
    assert sum(splits.sizes().values()) == 30
    assert "ignored 2 non-image file(s)" in splits.notes


def test_images_outside_the_class_folders_are_left_out_with_a_note(flat_folder, split_folder):
    for folder in (flat_folder, split_folder / "my-dataset" / "Training"):
        shutil.copy(next((folder / "cat").glob("*.png")), folder / "stray.png")
    splits = load_data(str(flat_folder))
    assert sum(splits.sizes().values()) == 30
    assert (
        f"left out 1 image(s) lying directly in {flat_folder}, outside any class folder "
        "(a class folder names its images' label)"
    ) in splits.notes
    splits = load_data(str(split_folder))
    assert [n for n in splits.notes if n.startswith("left out")] == [
        f"left out 1 image(s) lying directly in {split_folder / 'my-dataset' / 'Training'}, outside any class "
        "folder (a class folder names its images' label)"
    ]


def test_images_in_nested_folders_belong_to_their_class(flat_folder):
    (flat_folder / "cat" / "more").mkdir()
    make_image(CLASS_COLORS["cat"], 77).save(flat_folder / "cat" / "more" / "x.png")
    assert sum(load_data(str(flat_folder)).sizes().values()) == 31


def test_corrupt_image_is_named_before_training(flat_folder):
    (flat_folder / "dog" / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ImageReadError, match=r"dog/broken\.jpg"):
        load_data(str(flat_folder))


def test_empty_class_folder_is_named(flat_folder):
    (flat_folder / "empty").mkdir()
    with pytest.raises(DataError, match="class folder.*empty.*contain no images"):
        load_data(str(flat_folder))
    assert load_data(str(flat_folder), classes=["cat", "dog"]).classes == ["cat", "dog"]


def test_a_class_named_twice_in_classes_is_refused_by_name(flat_folder):
    with pytest.raises(DataError, match="--classes names cat more than once"):
        load_data(str(flat_folder), classes=["cat", "dog", "cat"])


def test_single_class_is_refused(tmp_path):
    write_class_folders(tmp_path / "one", classes={"cat": (1, 2, 3)}, per_class=3)
    write_class_folders(tmp_path / "one", classes={"dog": (3, 2, 1)}, per_class=3)
    with pytest.raises(DataError, match="at least 2"):
        load_data(str(tmp_path / "one"), classes=["cat"])


def test_images_without_class_folders_are_told_where_to_go(tmp_path):
    write_class_folders(tmp_path / "x", per_class=2)
    loose = tmp_path / "loose"
    loose.mkdir()
    for path in sorted((tmp_path / "x").rglob("*.png")):
        shutil.copy(path, loose / f"{path.parent.name}-{path.name}")
    with pytest.raises(
        DataError,
        match=r"found 0 class \(none\); a classifier needs at least 2 class folders; its 6 "
        r"image\(s\) lie directly in it, .* sub-folder named after the class \(.*loose/CLASS/IMAGE\)",
    ):
        load_data(str(loose))


def test_split_folders_with_different_classes_are_refused(tmp_path):
    write_class_folders(tmp_path / "train", per_class=3)
    write_class_folders(tmp_path / "test", per_class=2, classes={"cat": (1, 1, 1), "dog": (2, 2, 2)})
    with pytest.raises(DataError, match="test/ lacks fox"):
        load_data(str(tmp_path))
    assert load_data(str(tmp_path), classes=["cat", "dog"]).classes == ["cat", "dog"]


def test_missing_path_and_bad_fractions_are_clear(tmp_path):
    with pytest.raises(DataError, match="no such file or folder, and not a built-in set"):
        load_data(str(tmp_path / "nope"))
    with pytest.raises(DataError, match="--val-fraction"):
        load_data("digits", val_fraction=1.5)


def _write_idx(path, array: np.ndarray) -> None:
    dims = array.shape
    header = struct.pack(">HBB", 0, 0x08, len(dims)) + b"".join(struct.pack(">I", d) for d in dims)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_mnist_from_data_root_without_download(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 60), ("t10k", 20)):
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 255, (n, 28, 28)))
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)
    splits = load_data("mnist", data_root=tmp_path, download=False, val_fraction=0.2)
    assert splits.classes == [str(d) for d in range(10)]
    assert splits.sizes() == {"train": 50, "val": 10, "test": 20}  # 6 per class, 20% -> 1 each
    assert splits.train[0][0].shape == (1, 28, 28)


def test_fashion_mnist_from_the_gz_files_its_site_ships(tmp_path, capsys):
    """``--no-download`` with the four ``*-ubyte.gz`` files in ``FashionMNIST/raw/``: they are decompressed
    beside themselves (as torchvision's own download does) and read; a broken one is named."""
    import gzip

    from vitrain.cli import main

    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 60), ("t10k", 20)):
        for kind, array in (("images-idx3", rng.integers(0, 255, (n, 28, 28))), ("labels-idx1", np.arange(n) % 10)):
            plain = raw / f"{prefix}-{kind}-ubyte"
            _write_idx(plain, array)
            (raw / f"{plain.name}.gz").write_bytes(gzip.compress(plain.read_bytes()))
            plain.unlink()
    splits = load_data("fashion-mnist", data_root=tmp_path, download=False, val_fraction=0.2)
    assert splits.sizes() == {"train": 50, "val": 10, "test": 20}
    assert splits.classes[0] == "T-shirt/top" and splits.train[0][0].shape == (1, 28, 28)
    assert sorted(p.name for p in raw.iterdir() if not p.name.endswith(".gz")) == [
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
    ]
    # end to end, and a truncated archive named
    for p in raw.glob("*-ubyte"):
        p.unlink()
    (raw / "t10k-labels-idx1-ubyte.gz").write_bytes(b"\x1f\x8b\x08\x00broken")
    assert main(["train", "--data", "fashion-mnist", "--data-root", str(tmp_path), "--no-download"]) == 2
    assert f"{raw / 't10k-labels-idx1-ubyte.gz'}: not a readable gzip file" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["cifar10", "fashion-mnist"])
def test_missing_torchvision_set_says_where_to_put_it(tmp_path, name):
    with pytest.raises(DataError, match=rf"--data {name}: not found under --data-root {tmp_path}.*Put "):
        load_data(name, data_root=tmp_path, download=False)


def test_stratified_split_keeps_every_class_in_training():
    val, test, train = stratified_split([0] * 2 + [1] * 50, [0.5, 0.5], seed=0)
    assert any(i < 2 for i in train)  # class 0 (2 samples) keeps one for training
    assert sorted(np.concatenate([val, test, train]).tolist()) == list(range(52))
    assert len(val) == 1 + 25 and len(test) == 0 + 24  # class 0 has one left after val


def test_folder_images_of_odd_sizes_load(tmp_path):
    for name, size in (("a", (30, 20)), ("b", (17, 41))):
        (tmp_path / name).mkdir()
        for i in range(3):
            Image.new("RGB", size, (i * 40, 0, 0)).save(tmp_path / name / f"{i}.bmp")
    splits = load_data(str(tmp_path), val_fraction=0.34, test_fraction=0)
    assert 17 <= splits.native_size <= 20


def _add_bad_files(folder):
    """A truncated JPEG, a zero-byte file and a text file named .png, in two classes."""
    from PIL import Image

    cut = folder / "cat" / "truncated.jpg"  # its header is whole: only decoding finds the cut
    noise = np.random.default_rng(0).integers(0, 255, (128, 128, 3), dtype=np.uint8)
    Image.fromarray(noise).save(cut, quality=95)
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    (folder / "dog" / "empty.png").write_bytes(b"")
    (folder / "dog" / "notes.png").write_text("not an image")
    return cut


@pytest.mark.parametrize("workers", [False, True], ids=["one-process", "worker-processes"])
def test_skip_bad_images_leaves_unreadable_files_out_and_lists_them(flat_folder, monkeypatch, workers):
    if workers:  # big sets are checked in DataLoader workers; the same errors and skips must come back
        monkeypatch.setattr(folders, "PARALLEL_CHECK_MIN", 0)
    _add_bad_files(flat_folder)
    with pytest.raises(
        ImageReadError,
        match=r"(empty\.png: empty file|notes\.png: cannot identify).*"
        r"\(--skip-bad-images leaves unreadable images out\)",
    ):
        load_data(str(flat_folder))
    splits = load_data(str(flat_folder), skip_bad_images=True)
    assert sum(splits.sizes().values()) == 30
    assert sorted(Path(p).name for p in splits.skipped) == ["empty.png", "notes.png", "truncated.jpg"]
    assert "truncated" in splits.skipped[str(flat_folder / "cat" / "truncated.jpg")].lower()
    assert any("skipped 3 unreadable image(s)" in n for n in splits.notes)


def test_a_class_left_empty_by_skipping_is_named(tmp_path):
    from .conftest import write_class_folders

    root = write_class_folders(tmp_path / "d", per_class=3)
    for f in (root / "cat").iterdir():
        f.write_bytes(b"")
    with pytest.raises(DataError, match=r"class folder\(s\) cat contain no images"):
        load_data(str(root), skip_bad_images=True)


def test_decompression_bomb_is_refused_by_name(flat_folder, monkeypatch):
    from PIL import Image

    from vitrain.data.images import read_image

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # the fixture's 20 x 20 images are 4x that
    with pytest.raises(ImageReadError, match=r"cannot read image .*000\.png: .*decompression bomb"):
        load_data(str(flat_folder))
    with pytest.raises(ImageReadError, match="decompression bomb"):
        read_image(flat_folder / "cat" / "000.png", 3)


def test_a_folder_holding_one_class_folder_names_that_class(tmp_path):
    write_class_folders(tmp_path / "download", per_class=3, classes={"cat": (200, 40, 40)})
    with pytest.raises(DataError, match=r"download: found 1 class \(cat\); a classifier needs at least 2"):
        load_data(str(tmp_path / "download"))
