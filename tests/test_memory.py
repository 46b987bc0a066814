"""The in-memory pipeline: batched augmentation semantics, evaluation parity, training through it."""

from __future__ import annotations

import json

import torch

from vitrain.cli import main
from vitrain.data import memory
from vitrain.data.sources import FileImageDataset, load_data
from vitrain.data.transforms import build_eval_transform

MEAN, STD = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]


def _batch(n: int = 16, side: int = 16) -> torch.Tensor:
    return torch.randint(1, 256, (n, 3, side, side), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))


def _undo(x: torch.Tensor) -> torch.Tensor:
    """Normalized float -> the uint8 values it came from."""
    return (x * torch.tensor(STD)[:, None, None] + torch.tensor(MEAN)[:, None, None]).mul(255).round().to(torch.uint8)


def test_pad_crop_is_a_shifted_window_of_the_zero_padded_image_and_flip_mirrors_it():
    images = _batch()
    aug = memory.BatchAugment(16, "flip-crop", MEAN, STD, resized_crop=False, hflip=0.5)
    out = _undo(aug(images, torch.Generator().manual_seed(0)))
    assert out.shape == images.shape
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))  # 16 // 8
    flips = 0
    for i in range(len(images)):
        windows = [padded[i, :, y : y + 16, x : x + 16] for y in range(5) for x in range(5)]
        plain = any(torch.equal(out[i], w) for w in windows)
        mirrored = any(torch.equal(out[i], w.flip(-1)) for w in windows)
        assert plain or mirrored, f"image {i} is not a window of its padded original"
        flips += mirrored and not plain
    assert 0 < flips < len(images)  # flips are drawn per image


def test_random_crop_boxes_stay_inside_and_follow_scale_and_ratio():
    boxes, found = memory.random_crop_boxes(5000, 60, 90, (0.2, 0.5), (0.75, 4 / 3), torch.Generator().manual_seed(0))
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    assert found.all()
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= 90).all() and (boxes[:, 3] <= 60).all()
    area = w * h / (60 * 90)
    assert area.min() > 0.18 and area.max() < 0.52  # rounding to whole pixels moves them a little
    assert (w / h).min() > 0.7 and (w / h).max() < 1.4


def test_random_crop_boxes_fall_back_to_the_center_or_to_nothing():
    # a scale of 1.0 with ratio 2 never fits a square image: RandomResizedCrop's fallback
    boxes, found = memory.random_crop_boxes(4, 20, 20, (1.0, 1.0), (2.0, 2.0), torch.Generator())
    assert not found.any()
    assert boxes.tolist() == [[0.0, 5.0, 20.0, 15.0]] * 4
    _, found = memory.random_crop_boxes(4, 20, 20, (1.0, 1.0), (2.0, 2.0), torch.Generator(), fallback=False)
    assert not found.any()


def test_resized_crop_of_the_whole_image_is_a_plain_resize():
    images = torch.arange(8 * 8, dtype=torch.uint8).view(1, 1, 8, 8).repeat(2, 3, 1, 1) * 3
    aug = memory.BatchAugment(
        8, "flip-crop", MEAN, STD, resized_crop=True, hflip=0.0, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0)
    )
    assert torch.equal(_undo(aug(images, torch.Generator())), images)


def test_policies_draw_four_operations_per_batch_in_groups_of_at_least_16():
    assert [memory.policy_group(b) for b in (8, 32, 64, 128, 256)] == [16, 16, 16, 32, 64]
    calls = []

    def policy(group: torch.Tensor) -> torch.Tensor:  # stands in for one AutoAugment call
        calls.append(len(group))
        return group

    aug = memory.BatchAugment(16, "autoaugment", MEAN, STD, resized_crop=False)
    aug.policy = policy
    for batch, expected in ((128, [32] * 4), (64, [16] * 4), (40, [16, 16, 8])):
        calls.clear()
        assert aug(_batch(batch), torch.Generator()).shape == (batch, 3, 16, 16)
        assert calls == expected


def test_policies_and_erasing_keep_shapes_and_erase_about_p_of_the_images():
    images = _batch(64)
    for policy in ("autoaugment", "randaugment", "trivialaugment"):
        aug = memory.BatchAugment(16, policy, MEAN, STD, resized_crop=False)
        assert aug(images, torch.Generator().manual_seed(0)).shape == (64, 3, 16, 16)
    aug = memory.BatchAugment(16, "none", MEAN, STD, resized_crop=False, random_erasing=0.5)
    # erasing writes 0 after normalization, the dataset mean; odd inputs never normalize to exactly 0
    images = images | 1
    out = aug(images, torch.Generator().manual_seed(0))
    erased = (out == 0).all(1).flatten(1).any(1)
    assert 0.3 < erased.float().mean() < 0.7
    untouched = (_undo(out) == images).flatten(1).all(1)
    assert torch.equal(untouched, ~erased)


def test_memory_eval_images_equal_the_file_pipeline(flat_folder):
    splits = load_data(str(flat_folder), val_fraction=0.2, test_fraction=0.2)
    assert isinstance(splits.train, FileImageDataset)
    images, targets = memory.decode_all(splits.val, 12, crop_pct=0.9)
    loader = memory.MemoryLoader(images, targets, 4, shuffle=False, mean=MEAN, std=STD)
    tf = build_eval_transform(12, MEAN, STD, crop_pct=0.9)
    expected = torch.stack([tf(splits.val[i][0]) for i in range(len(splits.val))])
    got = torch.cat([x for x, _ in loader])
    assert torch.equal(got, expected)
    assert torch.cat([y for _, y in loader]).tolist() == splits.val.targets
    assert len(loader) == 2  # 6 images in batches of 4, the last one short


def test_memory_loader_shuffles_from_its_generator_and_can_drop_the_last_batch():
    images, targets = _batch(10, 4), torch.arange(10)
    loader = memory.MemoryLoader(images, targets, 4, shuffle=True, mean=MEAN, std=STD, drop_last=True)
    loader.generator.manual_seed(3)
    first = torch.cat([y for _, y in loader])
    loader.generator.manual_seed(3)
    assert torch.equal(first, torch.cat([y for _, y in loader]))
    assert len(loader) == 2 and len(first) == 8 and len(set(first.tolist())) == 8


def test_training_in_memory_and_from_files_both_work_and_say_which(flat_folder, tmp_path, tiny_args, capsys):
    accuracies = {}
    for mode in ("on", "off"):
        out = tmp_path / mode
        assert (
            main(
                [
                    "train",
                    "--data",
                    str(flat_folder),
                    "--out",
                    str(out),
                    "--in-memory",
                    mode,
                    "--epochs",
                    "2",
                    *tiny_args,
                ]
            )
            == 0
        )
        accuracies[mode] = json.loads((out / "report.json").read_text())["test"]["accuracy"]
    log = capsys.readouterr().out
    assert log.count("in memory:") == 1
    assert all(0 <= a <= 1 for a in accuracies.values())


def test_workers_start_from_a_fork_server_once_jax_is_imported(monkeypatch):
    import sys
    import types

    from vitrain.data.workers import worker_context

    monkeypatch.delitem(sys.modules, "jax", raising=False)
    assert worker_context(2) is None  # the default start method (fork on Linux)
    monkeypatch.setitem(sys.modules, "jax", types.ModuleType("jax"))
    assert worker_context(0) is None  # no workers, nothing to start
    assert worker_context(2).get_start_method() == "forkserver"
