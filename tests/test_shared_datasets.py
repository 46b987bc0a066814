"""The real archives in ../shared/datasets (skipped where they are absent, as in a user's clone)."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from vitrain.cli import main
from vitrain.data.sources import load_data

from .conftest import SHARED_DATASETS

pytestmark = pytest.mark.skipif(
    not SHARED_DATASETS.is_dir(), reason=f"{SHARED_DATASETS} is absent (it ships beside CI, not with the code)"
)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("archives")


def test_brain_tumor_three_class_subset_from_the_kaggle_layout(cache):
    splits = load_data(
        str(SHARED_DATASETS / "brain-tumor-mri.tar"),
        classes=["glioma", "meningioma", "pituitary"],
        cache_dir=cache,
        val_fraction=0.15,
    )
    assert splits.classes == ["glioma", "meningioma", "pituitary"]
    assert len(splits.test) == 300 + 306 + 300  # Testing/ without notumor
    assert set(Counter(splits.test.targets)) == {0, 1, 2}
    assert splits.native_size == 224
    # a mix of RGB and grayscale files: every image comes out with the same channel count
    assert {splits.train[i][0].shape[0] for i in range(0, len(splits.train), 400)} == {splits.channels}


def test_flowers17_flat_folder_gets_a_stratified_split(cache):
    splits = load_data(str(SHARED_DATASETS / "flowers17.tar"), cache_dir=cache)
    assert len(splits.classes) == 17
    assert splits.sizes() == {"train": 1088, "val": 136, "test": 136}
    assert set(Counter(splits.test.targets).values()) == {8}  # 80 images a class, 10% each


def test_cifar10_jpeg_archive_has_the_official_test_set(cache):
    splits = load_data(str(SHARED_DATASETS / "cifar10.tar"), cache_dir=cache)
    assert splits.sizes() == {"train": 45000, "val": 5000, "test": 10000}
    assert splits.native_size == 32 and splits.channels == 3


def test_training_on_the_real_mri_archive(cache, tmp_path, monkeypatch, tiny_args):
    monkeypatch.setenv("VITRAIN_CACHE", str(cache))
    run = tmp_path / "mri"
    assert (
        main(
            [
                "train",
                "--data",
                str(SHARED_DATASETS / "brain-tumor-mri.tar"),
                "--classes",
                "glioma,meningioma,pituitary",
                "--out",
                str(run),
                *tiny_args,
                "--epochs",
                "1",
                "--batch-size",
                "64",
            ]
        )
        == 0
    )
    report = json.loads((run / "report.json").read_text())
    assert report["classes"] == ["glioma", "meningioma", "pituitary"]
    assert report["test"]["images"] == sum(map(sum, report["test"]["confusion_matrix"]))
    assert report["test"]["accuracy"] > 1 / 3  # one epoch already beats chance on 3 classes


def test_brain_tumor_leakage_between_training_and_testing(cache):
    from vitrain.data.leakage import find_leaks

    splits = load_data(str(SHARED_DATASETS / "brain-tumor-mri.tar"), cache_dir=cache)
    leak = find_leaks(splits.train, splits.test, "test")
    # the archive's README: about 190 groups of byte-identical images across Training/Testing
    assert leak.total == 1311 and 150 <= len(leak.leaked) <= 260
