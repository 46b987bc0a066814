"""Training and evaluation pipelines: sizes, normalization, and each augmentation choice."""

from __future__ import annotations

import pytest
import torch
from torchvision.transforms import v2

from vitrain.data.sources import ArrayImageDataset
from vitrain.data.transforms import (
    AUGMENTATIONS,
    build_eval_transform,
    build_train_transform,
    dataset_mean_std,
    normalization,
)


@pytest.mark.parametrize("augment", AUGMENTATIONS)
@pytest.mark.parametrize("channels, native, size", [(3, 32, 32), (1, 8, 8), (3, 300, 64)])
def test_every_augmentation_gives_the_model_input(augment, channels, native, size):
    tf = build_train_transform(
        size, augment, [0.5] * channels, [0.25] * channels, native_size=native, random_erasing=0.5
    )
    image = torch.randint(0, 256, (channels, native, int(native * 1.5)), dtype=torch.uint8)
    out = tf(image)
    assert out.shape == (channels, size, size) and out.dtype == torch.float32


def test_small_images_use_pad_and_crop_and_large_ones_random_resized_crop():
    small = build_train_transform(32, "flip-crop", [0.5] * 3, [0.2] * 3, native_size=32)
    large = build_train_transform(224, "flip-crop", [0.5] * 3, [0.2] * 3, native_size=500)
    assert any(isinstance(t, v2.RandomCrop) and t.padding == [4, 4, 4, 4] for t in small.transforms)
    assert any(isinstance(t, v2.RandomResizedCrop) for t in large.transforms)


@pytest.mark.parametrize(
    "augment, policy",
    [("autoaugment", v2.AutoAugment), ("randaugment", v2.RandAugment), ("trivialaugment", v2.TrivialAugmentWide)],
)
def test_policies_are_the_torchvision_ones(augment, policy):
    tf = build_train_transform(32, augment, [0.5] * 3, [0.2] * 3, native_size=32)
    found = [t for t in tf.transforms if isinstance(t, policy)]
    assert found
    if augment == "autoaugment":
        assert found[0].policy == v2.AutoAugmentPolicy.CIFAR10


def test_no_flip_when_hflip_is_zero_and_erasing_comes_last():
    tf = build_train_transform(8, "flip-crop", [0.5], [0.2], native_size=8, hflip=0.0, random_erasing=0.25)
    assert not any(isinstance(t, v2.RandomHorizontalFlip) for t in tf.transforms)
    assert isinstance(tf.transforms[-1], v2.RandomErasing)


def test_eval_transform_is_deterministic_and_normalizes():
    tf = build_eval_transform(4, [0.5], [0.5])
    image = torch.full((1, 8, 6), 255, dtype=torch.uint8)
    out = tf(image)
    assert out.shape == (1, 4, 4) and torch.allclose(out, torch.ones_like(out))
    assert torch.equal(tf(image), tf(image))


def test_unknown_augmentation_is_refused():
    with pytest.raises(ValueError, match="--augment must be one of"):
        build_train_transform(32, "mixup-magic", [0.5], [0.5], native_size=32)


def test_dataset_statistics_are_exact_on_known_images():
    images = torch.stack([torch.zeros(3, 4, 4, dtype=torch.uint8), torch.full((3, 4, 4), 255, dtype=torch.uint8)])
    mean, std = dataset_mean_std(ArrayImageDataset(images, [0, 1]), img_size=4)
    assert mean == [0.5, 0.5, 0.5] and std == [0.5, 0.5, 0.5]


def test_named_normalizations():
    data = ArrayImageDataset(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), [0, 1])
    assert normalization("imagenet", data, 4, 3)[0] == [0.485, 0.456, 0.406]
    assert len(normalization("imagenet", data, 4, 1)[0]) == 1
    assert normalization("none", data, 4, 1) == ([0.0], [1.0])


def test_crop_choice_overrides_the_size_rule():
    resized = build_train_transform(
        32,
        "flip-crop",
        [0.5] * 3,
        [0.2] * 3,
        native_size=32,
        crop="resized",
        crop_scale=(0.8, 1.0),
        crop_ratio=(0.9, 1.1),
    )
    rrc = [t for t in resized.transforms if isinstance(t, v2.RandomResizedCrop)]
    assert rrc and rrc[0].scale == (0.8, 1.0) and rrc[0].ratio == (0.9, 1.1)
    padded = build_train_transform(224, "flip-crop", [0.5] * 3, [0.2] * 3, native_size=500, crop="pad")
    assert any(isinstance(t, v2.RandomCrop) for t in padded.transforms)
    with pytest.raises(ValueError, match="--crop must be"):
        build_train_transform(32, "flip-crop", [0.5], [0.5], native_size=32, crop="zoom")
