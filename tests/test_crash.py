"""Crash safety: SIGKILL at random moments and in the middle of checkpoint writes; resume each time.

The run that was killed again and again must end with the same weights as a run that was
never interrupted, and leave no half-written or unreadable file behind.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

import vitrain
from vitrain.cli import main

from .conftest import write_class_folders

# The child process slows every fsync by 20 ms, so a checkpoint write (the temporary file
# written, synced, then renamed over the old one) is open long enough for kills to land in it.
CHILD = """
import os, sys, time
_fsync = os.fsync
def _slow_fsync(fd):
    time.sleep(0.02)
    _fsync(fd)
os.fsync = _slow_fsync
from vitrain.cli import main
sys.exit(main(sys.argv[1:]))
"""
KILLS = 6


def _start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-u", "-c", CHILD, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def test_sigkill_at_random_moments_then_resume_ends_identical(tmp_path):
    data = write_class_folders(tmp_path / "data", per_class=10)
    common = [
        "--data",
        str(data),
        "--model",
        "vit",
        "--img-size",
        "16",
        "--patch-size",
        "4",
        "--embed-dim",
        "32",
        "--depth",
        "2",
        "--num-heads",
        "2",
        "--mlp-dim",
        "64",
        "--batch-size",
        "8",
        "--workers",
        "0",
        "--epochs",
        "60",
        "--ema",
        "0.9",
        "--no-progress",
    ]
    assert main(["train", "--out", str(tmp_path / "reference"), *common]) == 0

    run = tmp_path / "killed"
    rng = random.Random(0)
    kills = during_writes = restarts_from_scratch = 0
    while True:
        resuming = (run / "state.safetensors").is_file()
        if not resuming and kills:
            restarts_from_scratch += 1
        proc = _start(
            ["train", "--resume", str(run)] if resuming else ["train", "--out", str(run), "--overwrite", *common]
        )
        if kills < KILLS:
            # wait until training has started, then kill after a random delay
            for line in proc.stdout:
                if line.startswith("writing to"):
                    break
            if kills % 2:  # every other kill lands while a checkpoint file is being written
                deadline = time.time() + 10
                while not any(run.glob(".*.tmp")) and time.time() < deadline and proc.poll() is None:
                    time.sleep(0.001)
            else:  # the others at a random moment; the first before any epoch is complete
                time.sleep(0.0 if kills == 0 else rng.uniform(0.0, 1.0))
            if proc.poll() is None:
                during_writes += any(run.glob(".*.tmp"))
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
                kills += 1
                continue
        output = proc.communicate(timeout=300)[0]
        assert proc.returncode == 0, output
        break

    assert kills == KILLS and restarts_from_scratch >= 1
    assert during_writes >= KILLS // 2
    reference = load_file(str(tmp_path / "reference" / "last.safetensors"))
    final = load_file(str(run / "last.safetensors"))
    assert reference.keys() == final.keys() and all(torch.equal(reference[k], final[k]) for k in reference)
    assert (
        vitrain.load_model(run / "best.safetensors").meta["epoch"]
        == vitrain.load_model(tmp_path / "reference" / "best.safetensors").meta["epoch"]
    )
    # nothing half-written is left, and every file reads back
    assert not list(run.glob(".*.tmp"))
    report = json.loads((run / "report.json").read_text())
    assert report["test"] == json.loads((tmp_path / "reference" / "report.json").read_text())["test"]
    assert len((run / "metrics.csv").read_text().strip().splitlines()) == 61
    for name in ("best.safetensors", "last.safetensors", "state.safetensors"):
        assert load_file(str(run / name))
    print(f"{kills} kills, {during_writes} during a checkpoint write, {restarts_from_scratch} restarts from scratch")


@pytest.mark.parametrize("behind", [False, True], ids=["in-the-loop", "on-a-thread"])
def test_disk_full_while_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch, capsys, behind):
    """ENOSPC while epoch 2's checkpoints are written: a clear error, epoch 1's files intact, resumable.
    On a thread (as on a GPU) the failure is raised at epoch 3's first save instead of at once."""
    from vitrain.checkpoint import CheckpointWriter
    from vitrain.engine import train as train_module

    monkeypatch.setattr(train_module, "writes_behind", lambda device: behind)

    data = write_class_folders(tmp_path / "data", per_class=10)
    run = tmp_path / "run"
    real_save, real_fsync = CheckpointWriter.save_model, os.fsync

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    def save_model(self, path, model, **kwargs):
        if kwargs.get("epoch") == 2:
            self.wait()  # epoch 1's files are on disk before the disk fills up
            monkeypatch.setattr(os, "fsync", disk_full)
        return real_save(self, path, model, **kwargs)

    monkeypatch.setattr(CheckpointWriter, "save_model", save_model)
    args = [
        "train",
        "--data",
        str(data),
        "--out",
        str(run),
        "--model",
        "vit",
        "--img-size",
        "16",
        "--patch-size",
        "4",
        "--embed-dim",
        "32",
        "--depth",
        "2",
        "--num-heads",
        "2",
        "--mlp-dim",
        "64",
        "--batch-size",
        "8",
        "--workers",
        "0",
        "--epochs",
        "3",
        "--no-progress",
    ]
    assert main(args) == 1
    monkeypatch.setattr(os, "fsync", real_fsync)
    err = capsys.readouterr().err
    assert "No space left on device" in err and ".safetensors" in err and f"--resume {run}" in err
    assert not list(run.glob(".*.tmp"))
    assert vitrain.load_model(run / "last.safetensors").meta["epoch"] == 1
    monkeypatch.setattr(CheckpointWriter, "save_model", real_save)
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    assert vitrain.load_model(run / "last.safetensors").meta["epoch"] == 3
