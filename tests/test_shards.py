"""WebDataset shards: written by ``vitrain shards``, streamed so that every sample is read once per epoch,
trained on end to end (and resumed inside an epoch), with memory that stays flat as the data grows."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vitrain.cli import main
from vitrain.data.datasets import DataError
from vitrain.data.shards import ShardLoader, ShardStream, iter_samples, shard_splits, write_shards
from vitrain.engine.distributed import Dist

from .conftest import _metrics, _without_timing, interrupt_step, write_class_folders

pytest.importorskip("webdataset")


def _shards(tmp_path: Path, per_class: int = 16, shard_size: int = 6) -> Path:
    folder = write_class_folders(tmp_path / "folder", per_class=per_class)
    out = tmp_path / "shards"
    assert main(["shards", str(folder), "--out", str(out), "--shard-size", str(shard_size)]) == 0
    return out


def test_vitrain_shards_writes_each_split_with_the_files_bytes_and_the_classes(tmp_path, capsys):
    out = _shards(tmp_path)
    assert "train with: vitrain train --data" in capsys.readouterr().out
    assert (out / "classes.txt").read_text().split() == ["cat", "dog", "fox"]
    names = sorted(p.name for p in out.glob("*.tar"))
    assert names[0] == "test-000000.tar" and "train-000000.tar" in names and "val-000000.tar" in names
    samples = [s for shard in sorted(out.glob("train-*.tar")) for s in iter_samples(shard)]
    files = {p.read_bytes() for p in (tmp_path / "folder").rglob("*.png")}
    assert all(s.suffix == "png" and s.data in files for s in samples)  # the files' own bytes
    splits = shard_splits(out)
    assert splits.sizes() == {"train": len(samples), "val": 6, "test": 6} and splits.channels == 3
    # an output folder that holds files is refused, and nothing in it is touched
    assert main(["shards", str(tmp_path / "folder"), "--out", str(out)]) == 2
    assert "already holds files" in capsys.readouterr().err and (out / "classes.txt").exists()


@pytest.mark.parametrize("workers", [0, 2])
def test_every_sample_is_streamed_exactly_once_per_epoch_over_ranks_and_workers(tmp_path, monkeypatch, workers):
    """8 shards of 6 samples x 2 processes x 2 DataLoader workers (or none): each sample once an epoch,
    a new order every epoch, and the same batches when the epoch is run again from its seed."""
    from vitrain.data import shards
    from vitrain.data.datasets import FileImageDataset

    images = write_class_folders(tmp_path / "folder", per_class=24, classes={"a": (9, 9, 9), "b": (200, 9, 9)})
    root = tmp_path / "shards"
    paths = sorted(images.rglob("*.png"))
    files = FileImageDataset(paths, [int(p.parent.name == "b") for p in paths], 3)
    write_shards({"train": files}, ["a", "b"], root, shard_size=6)
    split = shards.scan_split(root, "train", 2)
    assert len(split.shards) == 8 and len(split) == 48
    # each image stands for its number in storage order, so the test sees which samples came
    numbers = {sample.key: n for n, (_, sample) in enumerate(split.samples())}
    monkeypatch.setattr(shards, "decode", lambda sample, *args: torch.full((1, 1, 1), numbers[sample.key]))

    def epoch(seed: int) -> list[int]:
        seen = []
        for rank in (0, 1):
            generator = torch.Generator().manual_seed(seed)
            stream = ShardStream(split, lambda image: image, 3, Dist(rank, 2), workers=workers, buffer=4)
            batches = ShardLoader(stream, batch_size=None, num_workers=workers, generator=generator)
            mine = [n for images, _ in batches for n in images[:, 0, 0, 0].tolist()]
            assert len(mine) == len(stream) * 3 == 24
            seen += mine
        return seen

    first = epoch(1)
    assert sorted(first) == list(range(48))  # every sample exactly once, over both processes
    again, other = epoch(1), epoch(2)
    assert again == first and other != first and sorted(other) == list(range(48))


def test_a_shard_folder_trains_end_to_end_and_resumes_inside_an_epoch(tmp_path, tiny_args, monkeypatch, capsys):
    out = _shards(tmp_path, per_class=16, shard_size=4)
    common = ["--data", str(out), *tiny_args, "--epochs", "3", "--batch-size", "4", "--augment", "flip-crop"]
    common += ["--workers", "2", "--shuffle-buffer", "8"]
    assert main(["train", *common, "--out", str(tmp_path / "full")]) == 0
    said = capsys.readouterr().out
    assert "WebDataset shards, streamed" in said
    report = json.loads((tmp_path / "full" / "report.json").read_text())
    assert report["test"]["images"] == 6 and report["leakage"]["test"]["identical_to_train"] == 0
    examples = (tmp_path / "full" / "examples" / "index.csv").read_text()
    assert examples.count("test-") >= 6
    # vitrain eval streams the test shards too, and gets the report's answer
    assert main(["eval", str(tmp_path / "full"), "--data", str(out), "--out", str(tmp_path / "eval")]) == 0
    evaluated = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert evaluated["confusion_matrix"] == report["test"]["confusion_matrix"]

    interrupt_step(monkeypatch, 12)
    cut = tmp_path / "cut"
    assert main(["train", *common, "--out", str(cut), "--save-every", "3steps"]) == 130
    monkeypatch.undo()
    assert main(["train", "--resume", str(cut)]) == 0
    assert "at step" in capsys.readouterr().out
    a, b = load_file(str(tmp_path / "full" / "last.safetensors")), load_file(str(cut / "last.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert _without_timing(_metrics(tmp_path / "full")) == _without_timing(_metrics(cut))


def test_shards_stream_from_workers_started_from_a_fork_server(tmp_path, tiny_args, monkeypatch):
    """Once JAX is imported, DataLoader workers start from a fork server, which gets the stream pickled."""
    import types

    monkeypatch.setitem(sys.modules, "jax", sys.modules.get("jax", types.ModuleType("jax")))
    out = _shards(tmp_path, per_class=8, shard_size=2)
    args = ["train", "--data", str(out), *tiny_args, "--epochs", "1", "--batch-size", "2", "--workers", "2"]
    assert main([*args, "--out", str(tmp_path / "run")]) == 0


def test_bad_shards_are_named(tmp_path):
    from webdataset import TarWriter

    root = tmp_path / "shards"
    root.mkdir()
    with pytest.raises(DataError, match="needs classes.txt beside them"):
        shard_splits(root)
    (root / "classes.txt").write_text("a\nb\n")
    with TarWriter(str(root / "train-000000.tar"), encoder=False) as sink:
        sink.write({"__key__": "x1", "png": b"not read here", "cls": b"7"})
    with pytest.raises(DataError, match="train-000000.tar: sample x1 has class 7, but classes.txt names 2"):
        shard_splits(root)
    with TarWriter(str(root / "train-000000.tar"), encoder=False) as sink:
        sink.write({"__key__": "x1", "cls": b"1"})
    with pytest.raises(DataError, match="sample x1 has no an image"):
        shard_splits(root)


RSS = """
import resource, sys, torch
from vitrain.data.shards import ShardLoader, ShardStream, scan_split
from pathlib import Path
split = scan_split(Path(sys.argv[1]), "train", 2)
stream = ShardStream(split, lambda image: image.float(), 16, buffer=64)
n = sum(len(labels) for _, labels in ShardLoader(stream, batch_size=None, generator=torch.Generator()))
print(n, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def test_a_streamed_epoch_holds_memory_flat_when_the_data_doubles(tmp_path):
    """Peak RSS of a process that scans and streams an epoch of 400 vs 800 samples of 64 px images."""
    from PIL import Image

    script = tmp_path / "rss.py"
    script.write_text(RSS)
    peaks = []
    for n in (400, 800):
        folder = tmp_path / f"imgs{n}"
        for c in ("a", "b"):
            (folder / c).mkdir(parents=True)
        noise = torch.randint(0, 255, (64, 64, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
        for i in range(n):
            Image.fromarray(noise.roll(i, 0).numpy()).save(folder / "ab"[i % 2] / f"{i}.png")
        out = tmp_path / f"shards{n}"
        assert main(["shards", str(folder), "--out", str(out), "--shard-size", "200"]) == 0
        done = subprocess.run([sys.executable, str(script), str(out)], capture_output=True, text=True, check=True)
        streamed, peak_kib = map(int, done.stdout.split())
        assert streamed == len(shard_splits(out).train) // 16 * 16
        peaks.append(peak_kib)
    # the data doubles; the peak may not grow by more than a tenth
    assert peaks[1] < 1.1 * peaks[0], peaks
