"""``vitrain inspect``: near-duplicates found and not confused with distinct images, a shifted split flagged
and a fair one not, and a self-contained page."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vitrain.cli import main

pytest.importorskip("imagehash")


def _picture(rng: np.random.Generator, side: int = 48, brighter: int = 0) -> Image.Image:
    """A random picture: 8x8 random colours blown up, so that it has structure a hash can see."""
    coarse = Image.fromarray(rng.integers(0, 200, (8, 8, 3), dtype=np.uint8))
    array = np.asarray(coarse.resize((side, side), Image.BICUBIC), dtype=np.int16) + brighter
    return Image.fromarray(np.clip(array, 0, 255).astype(np.uint8))


def _folder(root: Path, counts: dict[str, int], seed: int, brighter: int = 0) -> list[Path]:
    rng, written = np.random.default_rng(seed), []
    for split, n in counts.items():
        for i in range(n):
            folder = root / split / ("ab"[i % 2])
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"{split}{i:03d}.png"
            _picture(rng, brighter=brighter if split == "test" else 0).save(path)
            written.append(path)
    return written


def test_resized_and_reencoded_copies_are_found_across_splits_and_distinct_images_are_not(tmp_path):
    root = tmp_path / "data"
    _folder(root, {"train": 60, "val": 20, "test": 20}, seed=0)
    copies = sorted((root / "train").rglob("*.png"))[:3]
    for k, source in enumerate(copies):  # resized to 40 px and saved as JPEG: other bytes, the same picture
        image = Image.open(source).resize((40, 40), Image.BILINEAR)
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=80)
        (root / "test" / source.parent.name / f"copy{k}.jpg").write_bytes(buffer.getvalue())
    exact = root / "val" / "a" / "exact.png"
    exact.write_bytes(copies[0].read_bytes())
    out = tmp_path / "inspected"
    assert main(["inspect", str(root), "--out", str(out), "--no-progress"]) == 0
    found = json.loads((out / "inspect.json").read_text())
    near = found["near_duplicates"]
    across = [p for p in near["examples"] if {"train", "test"} == {_split(p["a"]), _split(p["b"])}]
    assert sorted(Path(p["a"]).name + "~" + Path(p["b"]).name for p in across) == sorted(
        f"{c.name}~copy{k}.jpg" for k, c in enumerate(copies)
    )
    # nothing else is called a near copy: the fourth pair is the exact copy in val and the resized one in test
    assert near["by_kind"] == {"across train/test": 3, "across val/test": 1}
    assert found["exact_duplicates"]["pairs"] == {"across train/val": 1}
    assert found["splits"]["test"]["images"] == 23 and found["splits"]["test"]["modes"] == {"RGB": 23}


def _split(name: str) -> str:
    return Path(name).parts[-3]


def test_a_split_with_other_brightness_is_flagged_and_a_fair_one_is_not(tmp_path, capsys):
    root = tmp_path / "data"
    _folder(root, {"train": 200, "val": 60, "test": 60}, seed=1, brighter=45)
    out = tmp_path / "inspected"
    assert main(["inspect", str(root), "--out", str(out), "--no-progress"]) == 0
    said = capsys.readouterr().out
    shift = json.loads((out / "inspect.json").read_text())["split_shift"]
    assert shift["test"]["shifted"] and shift["test"]["feature"] == "brightness"
    assert not shift["val"]["shifted"]
    assert "test split: SHIFTED from training (largest difference: brightness" in said
    assert "val split: like training" in said


def test_the_page_is_one_self_contained_file(tmp_path):
    root = tmp_path / "data"
    _folder(root, {"train": 20, "val": 6, "test": 6}, seed=2)
    (root / "train" / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    out = tmp_path / "inspected"
    assert main(["inspect", str(root), "--out", str(out), "--no-progress"]) == 0
    page = (out / "inspect.html").read_text()
    assert page.count("data:image/png;base64,") >= 2 * 3 * 2  # the contact sheet: classes x splits
    assert not re.search(r"""(src|href)=["'](?!data:)""", page)  # nothing loaded from elsewhere
    found = json.loads((out / "inspect.json").read_text())
    assert [Path(u["file"]).name for u in found["unreadable"]] == ["broken.png"]
    assert "Contact sheet" in page and "Does each split look like training?" in page


def test_the_gap_test_fires_beyond_what_the_split_sizes_allow_and_not_within():
    from vitrain.engine.evaluate import EvalResult, split_gap

    def result(correct: list[bool], labels: list[int]) -> EvalResult:
        targets = np.asarray(labels)
        predictions = np.where(correct, targets, (targets + 1) % 2)
        return EvalResult(0.0, float(np.mean(correct)), None, targets, predictions)

    labels = [0, 1] * 50
    val = result([True] * 90 + [False] * 10, labels)  # 0.90 of 100
    fair = result([True] * 84 + [False] * 16, labels)  # 0.84 of 100: within what 100 + 100 images allow
    # 0.60: class a (even places) keeps 0.8 of its recall, class b falls to 0.4
    shifted = result([(i // 2) < (40 if i % 2 == 0 else 20) for i in range(100)], labels)
    assert split_gap(val, fair, ["a", "b"]) is None
    gap = split_gap(val, shifted, ["a", "b"])
    assert gap["p_value"] < 0.01 and gap["val_images"] == gap["test_images"] == 100
    assert [r["class"] for r in gap["recall_fell_most"]] == ["b", "a"]  # b fell most


def test_a_run_whose_test_split_differs_says_so_and_a_fair_one_does_not(tmp_path, tiny_args, capsys):
    """Training on colour-coded classes, tested on images whose colours are swapped: the report says the
    test split seems to differ from training and names the classes whose recall fell; a fair split: quiet."""
    from .conftest import write_class_folders

    swapped = {"cat": (40, 200, 40), "dog": (40, 40, 200), "fox": (200, 40, 40)}
    for name, test_colors in (("fair", None), ("shifted", swapped)):
        root = tmp_path / name
        write_class_folders(root / "train", per_class=20)
        write_class_folders(root / "val", per_class=12, start=100)
        write_class_folders(root / "test", per_class=12, start=200, classes=test_colors)
        args = ["train", "--data", str(root), *tiny_args, "--epochs", "3", "--out", str(tmp_path / f"run-{name}")]
        assert main(args) == 0
        said = capsys.readouterr().out
        report = json.loads((tmp_path / f"run-{name}" / "report.json").read_text())
        if name == "fair":
            assert "split_gap" not in report and "seems to differ" not in said
        else:
            assert report["split_gap"]["p_value"] < 0.01, report["val"]
            assert "the test split seems to differ from the training distribution; recall fell most for" in said
            assert f"Compare them with: vitrain inspect {root}" in said
            # vitrain eval on the run's test split compares with the run's validation split in the same way
            assert main(["eval", str(tmp_path / f"run-{name}"), "--data", str(root), "--split", "test"]) == 0
            evaluated = capsys.readouterr().out
            assert f"): {root.name} (test) seems to differ from the training distribution" in evaluated


def test_the_page_in_a_real_browser(tmp_path):
    """Chromium opens inspect.html as a file: every thumbnail is drawn (none broken), nothing is fetched from
    elsewhere. The data is made here (a brighter test split, resized copies of training images in it); the
    screenshot goes to build/test-artifacts, and docs/scripts/screenshots.sh puts it in the docs."""
    from .test_serve import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS

    if CHROMIUM is None:
        pytest.skip("Chromium is missing (apt-get install chromium): the browser tests need it")
    from playwright.sync_api import sync_playwright

    root = tmp_path / "photos"
    _folder(root, {"train": 60, "val": 20, "test": 20}, seed=3, brighter=45)
    for k, source in enumerate(sorted((root / "train").rglob("*.png"))[:2]):
        Image.open(source).resize((40, 40)).save(root / "test" / source.parent.name / f"copy{k}.jpg", quality=85)
    out = tmp_path / "inspected"
    assert main(["inspect", str(root), "--out", str(out), "--no-progress"]) == 0
    requests: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        page.on("request", lambda request: requests.append(request.url))
        page.goto((out / "inspect.html").as_uri())
        drawn = page.evaluate("[...document.images].map(i => i.complete && i.naturalWidth > 0)")
        assert drawn and all(drawn)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "inspect.png"), full_page=True)
        browser.close()
    assert all(url.startswith(("file:", "data:")) for url in requests), requests


def test_dedupe_near_also_removes_resized_copies_and_dedupe_alone_only_identical_ones(tmp_path, tiny_args, capsys):
    from vitrain.config.files import config_from_dict

    root = tmp_path / "data"
    _folder(root, {"train": 30, "val": 10, "test": 10}, seed=4)
    sources = sorted((root / "train").rglob("*.png"))[:3]
    for k, source in enumerate(sources[:2]):
        Image.open(source).resize((40, 40)).save(root / "test" / source.parent.name / f"copy{k}.jpg", quality=85)
    (root / "test" / sources[2].parent.name / "same.png").write_bytes(sources[2].read_bytes())
    args = ["train", "--data", str(root), *tiny_args, "--epochs", "1"]
    reports = {}
    for how in ("exact", "near"):
        flag = ["--dedupe"] if how == "exact" else ["--dedupe", "near"]
        assert main([*args, *flag, "--out", str(tmp_path / how)]) == 0
        reports[how] = json.loads((tmp_path / how / "report.json").read_text())
    assert reports["exact"]["leakage"]["test"] == {"images": 13, "identical_to_train": 1, "removed": 1}
    near = reports["near"]["leakage"]
    assert near["dedupe"] == "near" and near["test"]["near_copies_of_train"] == 2 and near["test"]["removed"] == 3
    assert reports["near"]["test"]["images"] == 10
    assert "2 of 13 test images are near copies of training images; removed" in capsys.readouterr().out
    assert config_from_dict({"dedupe": True}).dedupe == "exact"  # a config.yaml of an earlier version
    assert config_from_dict({"dedupe": False}).dedupe == "off"


def test_labels_flipped_on_purpose_lead_the_candidates(tmp_path, tiny_args, capsys):
    """Three test images filed under another class: a run trained on the rest puts them first among the
    label candidates (precision at 3: all three)."""
    from .conftest import write_class_folders

    root = tmp_path / "data"
    write_class_folders(root / "train", per_class=20)
    write_class_folders(root / "val", per_class=8, start=100)
    write_class_folders(root / "test", per_class=8, start=200)
    flipped = []
    for source, wrong in (("cat/200.png", "dog"), ("cat/201.png", "fox"), ("dog/202.png", "fox")):
        target = root / "test" / wrong / f"flipped-{Path(source).name}"
        (root / "test" / source).rename(target)
        flipped.append(target.name)
    run = tmp_path / "run"
    assert main(["train", "--data", str(root), *tiny_args, "--epochs", "3", "--out", str(run)]) == 0
    out = tmp_path / "inspected"
    assert main(["inspect", str(root), "--out", str(out), "--labels", str(run), "--no-progress"]) == 0
    labels = json.loads((out / "inspect.json").read_text())["label_candidates"]
    top = [Path(c["name"]).name for c in labels["candidates"][:3]]
    assert sorted(top) == sorted(flipped), labels["candidates"][:5]
    assert labels["scored"] == "the run's held-out splits (validation and test)" and labels["images"] == 48
    assert "Labels to review" in (out / "inspect.html").read_text()
