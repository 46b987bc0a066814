"""Checkpoints: self-describing round trips, atomic writes, clear errors, no pickle."""

from __future__ import annotations

import json
import os
import threading

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import vitrain
from vitrain.checkpoint import (
    CheckpointError,
    CheckpointWriter,
    atomic_write_bytes,
    load_state,
    load_weights,
    read_model_checkpoint,
    save_model,
    save_state,
)
from vitrain.checkpoint import load_model as checkpoint_load_model
from vitrain.models import create_model
from vitrain.models.pretrained import PretrainedError


def _trained_like_model():
    model = create_model("vit-digits", num_classes=3)
    model.meta = {"classes": ["a", "b", "c"], "mean": [0.3], "std": [0.2], "crop_pct": 1.0}
    return model


def test_round_trip_rebuilds_the_model_from_metadata_alone(tmp_path):
    model = _trained_like_model().eval()
    save_model(tmp_path / "m.safetensors", model, epoch=4)
    loaded = vitrain.load_model(tmp_path / "m.safetensors")
    x = torch.randn(2, 1, 8, 8)
    assert torch.equal(model(x), loaded(x))
    assert loaded.meta["classes"] == ["a", "b", "c"] and loaded.meta["epoch"] == 4
    assert loaded.config == model.config and not loaded.training


def test_metadata_is_plain_json_in_the_safetensors_header(tmp_path):
    save_model(tmp_path / "m.safetensors", _trained_like_model())
    with safe_open(str(tmp_path / "m.safetensors"), framework="pt") as f:
        meta = json.loads(f.metadata()["vitrain"])
    assert meta["arch"]["patch_size"] == 2 and meta["in_chans"] == 1 and meta["img_size"] == 8
    assert meta["mean"] == [0.3] and meta["std"] == [0.2] and meta["format"] == "vitrain"


def test_run_folder_loads_best_checkpoint(tmp_path):
    save_model(tmp_path / "last.safetensors", _trained_like_model(), epoch=9)
    save_model(tmp_path / "best.safetensors", _trained_like_model(), epoch=5)
    assert vitrain.load_model(tmp_path).meta["epoch"] == 5


def test_foreign_or_broken_files_are_clear_errors(tmp_path):
    save_file({"w": torch.zeros(2)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(CheckpointError, match="without vitrain metadata"):
        checkpoint_load_model(tmp_path / "foreign.safetensors")
    with pytest.raises(PretrainedError, match=r"foreign.safetensors: not a ViT state dict"):
        vitrain.load_model(tmp_path / "foreign.safetensors")  # neither vitrain's nor a known layout
    (tmp_path / "junk.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        read_model_checkpoint(tmp_path / "junk.safetensors")
    (tmp_path / "model.pth").write_bytes(b"\x80\x04")  # a pickle cut off after its first bytes
    with pytest.raises(CheckpointError, match="unknown checkpoint format"):
        checkpoint_load_model(tmp_path / "model.pth")
    with pytest.raises(PretrainedError, match=r"model.pth: cannot be read as plain tensors"):
        vitrain.load_model(tmp_path / "model.pth")
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        checkpoint_load_model(tmp_path / "missing")
    with pytest.raises(PretrainedError, match="missing: no such file"):
        vitrain.load_model(tmp_path / "missing")


def test_mismatched_weights_list_the_differences():
    small = create_model("vit-digits", num_classes=3)
    other = create_model("vit-digits", num_classes=5, depth=5)
    with pytest.raises(CheckpointError, match=r"shape mismatch: head\.bias.*unexpected keys: blocks\.4"):
        load_weights(small, other.state_dict(), "other.safetensors")


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    target = tmp_path / "last.safetensors"
    atomic_write_bytes(target, b"old")

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space"):
        atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["last.safetensors"]  # no temporary file left


def test_training_state_round_trips_optimizer_and_nested_values(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    state = {
        "optimizer": opt.state_dict(),
        "epoch": 3,
        "best": {"value": -float("inf")},
        "history": [{"epoch": 1, "loss": 0.5}],
        "model": model.state_dict(),
    }
    save_state(tmp_path / "state.safetensors", state)
    back = load_state(tmp_path / "state.safetensors")
    assert back["epoch"] == 3 and back["best"]["value"] == -float("inf") and back["history"][0]["loss"] == 0.5
    fresh = torch.optim.AdamW(torch.nn.Linear(3, 2).parameters(), lr=0.1)
    fresh.load_state_dict(back["optimizer"])
    assert torch.equal(fresh.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    assert list(back["optimizer"]["state"]) == [0, 1]  # integer keys survive


def test_background_writer_writes_the_same_files_as_the_direct_calls(tmp_path):
    model = _trained_like_model()
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.randn(2, 1, 8, 8)).sum().backward()
    optimizer.step()
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "history": [{"epoch": 1}]}
    save_model(tmp_path / "direct.safetensors", model, epoch=1)
    save_state(tmp_path / "direct-state.safetensors", state)
    with CheckpointWriter() as files:
        files.save_model(tmp_path / "behind.safetensors", model, epoch=1)
        files.save_state(tmp_path / "behind-state.safetensors", state)
        files.write_bytes(tmp_path / "notes.txt", b"epoch 1\n")
    assert (tmp_path / "behind.safetensors").read_bytes() == (tmp_path / "direct.safetensors").read_bytes()
    assert (tmp_path / "behind-state.safetensors").read_bytes() == (tmp_path / "direct-state.safetensors").read_bytes()
    assert (tmp_path / "notes.txt").read_bytes() == b"epoch 1\n"


def test_background_writer_saves_what_the_tensors_held_when_asked(tmp_path, monkeypatch):
    """Training changes the weights while the file is being written: the file has the old ones."""
    model = _trained_like_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    history = [{"epoch": 1}]
    release = threading.Event()
    real_write = atomic_write_bytes

    def held_write(path, data):  # the thread writes only after training has moved on
        release.wait(10)
        real_write(path, data)

    monkeypatch.setattr("vitrain.checkpoint.atomic_write_bytes", held_write)
    with CheckpointWriter() as files:
        files.save_model(tmp_path / "m.safetensors", model)
        files.save_state(tmp_path / "s.safetensors", {"model": model.state_dict(), "history": history})
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1.0)
        history.append({"epoch": 2})
        assert not (tmp_path / "m.safetensors").exists()  # still waiting on the thread
        release.set()
    saved, _ = read_model_checkpoint(tmp_path / "m.safetensors")
    assert all(torch.equal(saved[k], before[k]) for k in before)
    state = load_state(tmp_path / "s.safetensors")
    assert state["history"] == [{"epoch": 1}] and torch.equal(state["model"]["head.weight"], before["head.weight"])


def test_background_writer_keeps_order_and_a_bounded_backlog(tmp_path, monkeypatch):
    order, most_pending = [], []
    real_write = atomic_write_bytes

    def recording_write(path, data):
        order.append(data)
        real_write(path, data)

    monkeypatch.setattr("vitrain.checkpoint.atomic_write_bytes", recording_write)
    files = CheckpointWriter(max_pending=2)
    for i in range(20):
        files.write_bytes(tmp_path / "same.txt", str(i).encode())
        most_pending.append(len(files._pending))
    files.close()
    assert order == [str(i).encode() for i in range(20)]
    assert (tmp_path / "same.txt").read_text() == "19" and max(most_pending) <= 2


def test_a_failed_background_write_is_raised_later_naming_its_file(tmp_path):
    missing = tmp_path / "no-such-folder" / "last.safetensors"
    files = CheckpointWriter()
    files.write_bytes(missing, b"x")
    with pytest.raises(OSError, match="no-such-folder"):
        files.wait()
    files.write_bytes(missing, b"x")  # raised by close() too, once the thread has finished
    with pytest.raises(OSError, match="last.safetensors"):
        files.close()

    logged = []
    files = CheckpointWriter(log=logged.append)
    files.write_bytes(tmp_path / "fine.txt", b"ok")
    files.write_bytes(missing, b"x")
    files.close_after_error()  # another error is on its way: finish the writes, log the failure
    assert len(logged) == 1 and "no-such-folder" in logged[0] and (tmp_path / "fine.txt").read_bytes() == b"ok"


def test_an_interrupted_run_still_finishes_the_writes_it_asked_for(tmp_path, monkeypatch):
    release = threading.Event()
    real_write = atomic_write_bytes

    def slow_write(path, data):
        release.wait(10)
        real_write(path, data)

    monkeypatch.setattr("vitrain.checkpoint.atomic_write_bytes", slow_write)
    with pytest.raises(KeyboardInterrupt):
        with CheckpointWriter() as files:
            files.write_bytes(tmp_path / "state.safetensors", b"epoch 7")
            threading.Timer(0.2, release.set).start()  # the write is still running when Ctrl-C arrives
            raise KeyboardInterrupt
    assert (tmp_path / "state.safetensors").read_bytes() == b"epoch 7"
