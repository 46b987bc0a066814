"""torchrun with gloo on CPU: two processes train like one process with the same global batch,
evaluation counts every image once, and a run resumes with a different number of processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vitrain.cli import main
from vitrain.config import ConfigError, TrainConfig
from vitrain.engine import setup as engine_setup
from vitrain.engine import torch_backend
from vitrain.engine.distributed import Dist

from .conftest import _metrics, _without_timing, interrupt_step, interrupt_validation

COMMON = [
    "--precision",  # the processes started by torchrun choose as one process would, whatever the CPU
    "fp32",
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
    "--augment",
    "none",
    "--dropout",
    "0",
    "--workers",
    "0",
    "--device",
    "cpu",
    "--no-progress",
    "--warmup-epochs",
    "0",
]


def _torchrun(
    args: list[str],
    tmp_path: Path,
    processes: int = 2,
    succeeds: bool = True,
    entry: tuple[str, ...] = ("-m", "vitrain"),
) -> subprocess.CompletedProcess:
    """``torchrun ... -m vitrain ARGS`` (or ``ENTRY ARGS``), checked to succeed (or, with ``succeeds=False``,
    to fail)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={processes}",
        *entry,
        *args,
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert (done.returncode == 0) == succeeds, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def _weight_difference(one: Path, two: Path) -> float:
    """The largest difference between two checkpoints' weights, the attention key biases left out.

    The key bias adds ``q . b_k`` to every score of a query's row, which the softmax cancels, so its
    gradient is zero up to rounding; AdamW divides that rounding noise by its own tiny scale and moves
    the bias by up to the learning rate, in a direction that depends on the order of the sums.
    """
    a, b = load_file(str(one)), load_file(str(two))
    gaps = {k: (a[k] - b[k]).abs() for k in a}
    for k in gaps:
        if k.endswith("attn.qkv.bias"):
            gaps[k] = gaps[k].view(3, -1)[[0, 2]]  # the query and value biases
    return max(float(g.max()) for g in gaps.values())


@pytest.mark.parametrize("in_memory", ["on", "off"])  # sliced MemoryLoader batches; the DataLoader's batch sampler
def test_two_processes_match_one_process_with_the_same_global_batch(flat_folder, tmp_path, monkeypatch, in_memory):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the torchrun processes, so that both sum in the same order
    try:
        _compare_with_one_process(flat_folder, tmp_path, in_memory)
    finally:
        torch.set_num_threads(threads)


def _compare_with_one_process(flat_folder: Path, tmp_path: Path, in_memory: str) -> None:
    data = ["--data", str(flat_folder), *COMMON, "--epochs", "2", "--in-memory", in_memory]
    assert main(["train", *data, "--batch-size", "8", "--out", str(tmp_path / "one")]) == 0
    done = _torchrun(["train", *data, "--batch-size", "4", "--out", str(tmp_path / "two")], tmp_path)
    assert "batch 4 per process x 2 = 8" in done.stdout
    if in_memory == "on":  # each rank decoded half the images and gathered the other half
        assert "each of 2 processes decoding 1/2 of them" in done.stdout
    assert _weight_difference(tmp_path / "one" / "last.safetensors", tmp_path / "two" / "last.safetensors") < 1e-5
    r1 = json.loads((tmp_path / "one" / "report.json").read_text())
    r2 = json.loads((tmp_path / "two" / "report.json").read_text())
    # every evaluation image counted exactly once (3 test images over 2 ranks: shards of 2 and 1)
    assert r2["test"]["images"] == r1["test"]["images"] == 3 and r2["processes"] == 2
    assert r2["test"]["confusion_matrix"] == r1["test"]["confusion_matrix"]
    for a, b in zip(_metrics(tmp_path / "one"), _metrics(tmp_path / "two")):
        assert float(a["train_loss"]) == pytest.approx(float(b["train_loss"]), abs=1e-5)
        assert a["val_accuracy"] == b["val_accuracy"]


def test_a_run_resumes_with_another_number_of_processes(flat_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    run = tmp_path / "run"
    undo = interrupt_validation(monkeypatch, torch_backend)
    args = ["train", "--data", str(flat_folder), *COMMON, "--epochs", "3", "--batch-size", "4", "--out", str(run)]
    assert main(args) == 130 and len(_metrics(run)) == 2  # one process: 6 steps per epoch
    undo()
    done = _torchrun(["train", "--resume", str(run), "--no-progress"], tmp_path)
    assert "instead of 6 (2 process(es))" in done.stdout
    rows = _metrics(run)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert float(rows[-1]["lr"]) == pytest.approx(0.0, abs=1e-9)  # the schedule still ends at its end
    assert json.loads((run / "report.json").read_text())["test"]["images"] == 3


# the entry point of a worker that dies (SIGKILL, as the kernel's OOM killer or a lost machine would kill
# it) once, at the start of epoch 2 on rank 1, after rank 0 has committed epoch 1
DIES_ONCE = """
import os, signal, sys, time
from pathlib import Path
from vitrain.engine import torch_backend
from vitrain.cli import main

marker, out = Path(os.environ["VITRAIN_TEST_KILLED"]), Path(sys.argv[sys.argv.index("--out") + 1])
start_epoch = torch_backend.TorchBackend.start_epoch

def start_epoch_or_die(self, epoch):
    if epoch == 2 and self.place.rank == 1 and not marker.exists():
        while not (out / "state.safetensors").exists():  # rank 0's commit of epoch 1
            time.sleep(0.05)
        marker.write_text("killed")
        os.kill(os.getpid(), signal.SIGKILL)
    start_epoch(self, epoch)

torch_backend.TorchBackend.start_epoch = start_epoch_or_die
sys.exit(main(sys.argv[1:]))
"""


def test_torchrun_max_restarts_with_resume_auto_ends_as_a_run_never_stopped(flat_folder, tmp_path, monkeypatch):
    """torchrun restarts every worker with the same command line after one is killed; ``--resume auto``
    continues from the last committed epoch, and the run ends with the weights, metrics and report of a
    run that was never stopped."""
    script = tmp_path / "dies_once.py"
    script.write_text(DIES_ONCE)
    monkeypatch.setenv("VITRAIN_TEST_KILLED", str(tmp_path / "killed"))
    args = ["train", "--data", str(flat_folder), *COMMON, "--epochs", "4", "--batch-size", "4", "--resume", "auto"]
    _torchrun([*args, "--out", str(tmp_path / "never-stopped")], tmp_path)
    assert not (tmp_path / "killed").exists()
    done = _torchrun(
        [*args, "--out", str(tmp_path / "restarted")], tmp_path, entry=("--max-restarts", "3", str(script))
    )
    assert (tmp_path / "killed").exists()  # a worker did die, and the agent restarted both
    assert f"resuming {tmp_path / 'restarted'} after epoch 1" in done.stdout, done.stdout[-2000:]
    # the restart's processes meet in a rendezvous of their own, not at the dead processes' addresses
    assert "connectFullMesh failed" not in done.stdout + done.stderr, done.stderr[-2000:]
    never, restarted = tmp_path / "never-stopped", tmp_path / "restarted"
    assert _weight_difference(never / "last.safetensors", restarted / "last.safetensors") == 0.0
    assert _without_timing(_metrics(never)) == _without_timing(_metrics(restarted))
    reports = [json.loads((run / "report.json").read_text()) for run in (never, restarted)]
    assert reports[0]["test"] == reports[1]["test"] and reports[0]["val"] == reports[1]["val"]


def test_a_labels_first_chain_on_two_processes_matches_one_process(flat_folder, tmp_path, monkeypatch):
    """``--pretrain labels`` under torchrun: both stages run on every rank, rank 0 writes the merged report,
    and the weights are those of one process with the same global batch."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        data = [
            "--data",
            str(flat_folder),
            *COMMON,
            "--epochs",
            "4",
            "--pretrain",
            "labels",
            "--pretrain-img-size",
            "8",
        ]
        assert main(["train", *data, "--batch-size", "8", "--out", str(tmp_path / "one")]) == 0
        done = _torchrun(["train", *data, "--batch-size", "4", "--out", str(tmp_path / "two")], tmp_path)
    finally:
        torch.set_num_threads(threads)
    assert done.stdout.count("done in ") == 2  # rank 0 alone reports each stage
    for stage in ("pretrain", "."):
        assert (
            _weight_difference(
                tmp_path / "one" / stage / "last.safetensors", tmp_path / "two" / stage / "last.safetensors"
            )
            < 1e-5
        )
    report = json.loads((tmp_path / "two" / "report.json").read_text())
    assert report["processes"] == 2 and report["pretraining"]["processes"] == 2
    assert report["model"]["img_size"] == 16 and report["pretraining"]["model"]["img_size"] == 8
    assert report["total_seconds"] >= report["fine_tuning_seconds"] > 0
    assert (
        report["test"]["confusion_matrix"]
        == json.loads((tmp_path / "one" / "report.json").read_text())["test"]["confusion_matrix"]
    )


def test_instance_pretraining_under_torchrun_is_refused_before_anything_is_written(flat_folder, tmp_path):
    done = _torchrun(
        [
            "train",
            "--data",
            str(flat_folder),
            *COMMON,
            "--epochs",
            "2",
            "--pretrain",
            "instance-discrimination",
            "--out",
            str(tmp_path / "run"),
        ],
        tmp_path,
        succeeds=False,
    )
    assert "--pretrain instance-discrimination runs in one process; start it without torchrun" in done.stderr
    assert not (tmp_path / "run").exists()


# rank 1 names its default run folder as if its clock had ticked into the next second
LATE_CLOCK = """import os, sys
import vitrain.engine.rundir as rundir
if os.environ["RANK"] == "1":
    own = rundir.default_run_dir
    rundir.default_run_dir = lambda data: own(data) + "-a-second-later"
from vitrain.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_ranks_use_rank_0s_default_run_folder(flat_folder, tmp_path):
    """Without --out every process names ``runs/<data>-<time>`` itself; a chain's second stage loads the first
    stage's weights on every rank, from the folder rank 0 wrote, so all ranks must take rank 0's name."""
    script = tmp_path / "late_clock.py"
    script.write_text(LATE_CLOCK)
    _torchrun(
        [
            "train",
            "--data",
            str(flat_folder),
            *COMMON,
            "--epochs",
            "2",
            "--batch-size",
            "4",
            "--pretrain",
            "labels",
            "--pretrain-img-size",
            "8",
        ],
        tmp_path,
        entry=(str(script),),
    )
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1 and not runs[0].name.endswith("-a-second-later")
    assert json.loads((runs[0] / "report.json").read_text())["pretraining"]["processes"] == 2


def test_a_global_batch_larger_than_the_training_split_is_refused_before_an_old_run_is_replaced(flat_folder, tmp_path):
    """Incomplete global batches are dropped under torchrun, so 2 x 16 > 24 images would make no step at all."""
    run = tmp_path / "run"
    data = ["--data", str(flat_folder), *COMMON, "--epochs", "1", "--out", str(run)]
    assert main(["train", *data, "--batch-size", "8"]) == 0
    before = (run / "last.safetensors").read_bytes()
    done = _torchrun(["train", *data, "--batch-size", "16", "--overwrite"], tmp_path, succeeds=False)
    assert "--batch-size 16 x 2 processes = 32 images per step, more than the 24 training images" in done.stderr
    assert "lower --batch-size" in done.stderr
    assert (run / "last.safetensors").read_bytes() == before


def test_a_global_batch_that_leaves_a_tenth_of_the_split_out_of_each_epoch_is_named():
    """24 training images in global batches of 2 x 10 make one step an epoch and leave 4 (17%) out."""
    said: list[str] = []
    two = Dist(rank=0, world=2)
    cfg = TrainConfig(batch_size=10, data="flowers")
    engine_setup.check_global_batch(cfg, 24, two, said.append)
    assert said == [
        "warning: --batch-size 10 x 2 processes = 20 images per step leaves 4 of the 24 training "
        "images out of each epoch (17%; incomplete global batches are dropped under torchrun); "
        "--batch-size 6 would leave 0 out"
    ]  # not 9, 8 or 7: 2 x 7 = 14 would leave 10 out
    said.clear()
    engine_setup.check_global_batch(cfg, 41, two, said.append)  # 1 of 41 left out: no warning
    engine_setup.check_global_batch(cfg, 24, Dist(), said.append)  # one process keeps every image
    assert said == []
    engine_setup.check_global_batch(TrainConfig(batch_size=2, data="flowers"), 7, Dist(rank=0, world=3), said.append)
    assert said == [
        "warning: --batch-size 2 x 3 processes = 6 images per step leaves 1 of the 7 training images "
        "out of each epoch (14%; incomplete global batches are dropped under torchrun)"
    ]  # no batch fits


def test_several_jax_devices_in_one_process_fill_global_batches_too():
    said: list[str] = []
    cfg = TrainConfig(batch_size=10, data="flowers")
    engine_setup.check_global_batch(cfg, 24, Dist(), said.append, devices=2)
    assert said == [
        "warning: --batch-size 10 x 2 devices = 20 images per step leaves 4 of the 24 training "
        "images out of each epoch (17%; incomplete global batches are dropped with several devices); "
        "--batch-size 6 would leave 0 out"
    ]
    with pytest.raises(ConfigError, match=r"--batch-size 10 x 2 processes x 2 devices = 40 images per step"):
        engine_setup.check_global_batch(cfg, 24, Dist(rank=0, world=2), said.append, devices=2)


def test_the_dropped_images_warning_reaches_the_torchrun_log(flat_folder, tmp_path):
    done = _torchrun(
        [
            "train",
            "--data",
            str(flat_folder),
            *COMMON,
            "--epochs",
            "1",
            "--batch-size",
            "10",
            "--out",
            str(tmp_path / "run"),
        ],
        tmp_path,
    )
    assert done.stdout.count("leaves 4 of the 24 training images out of each epoch") == 1  # rank 0 only


def test_jax_processes_under_torchrun_train_as_one_process_with_the_global_batch(flat_folder, tmp_path):
    pytest.importorskip("jax")
    pytest.importorskip("optax")
    data = ["--data", str(flat_folder), *COMMON, "--backend", "jax", "--epochs", "2", "--dropout", "0.1"]
    assert main(["train", *data, "--batch-size", "8", "--out", str(tmp_path / "one")]) == 0
    done = _torchrun(["train", *data, "--batch-size", "4", "--out", str(tmp_path / "two")], tmp_path)
    assert "batch 4 per process x 2 = 8" in done.stdout and "JAX on 2 cpu device(s) in 2 processes" in done.stdout
    assert _weight_difference(tmp_path / "one" / "last.safetensors", tmp_path / "two" / "last.safetensors") < 1e-5
    r1, r2 = (json.loads((tmp_path / name / "report.json").read_text()) for name in ("one", "two"))
    assert (r2["processes"], r2["devices_per_process"], r2["global_batch_size"]) == (2, 1, 8)
    assert r2["test"]["images"] == r1["test"]["images"] == 3  # each rank evaluated its shard, counted once
    assert r2["test"]["confusion_matrix"] == r1["test"]["confusion_matrix"]
    for a, b in zip(_metrics(tmp_path / "one"), _metrics(tmp_path / "two")):
        assert float(a["train_loss"]) == pytest.approx(float(b["train_loss"]), abs=1e-5)
        assert float(a["train_accuracy"]) == pytest.approx(float(b["train_accuracy"]), abs=1e-9)
        assert a["val_accuracy"] == b["val_accuracy"]


def test_jax_processes_plan_a_time_budget_together(flat_folder, tmp_path):
    pytest.importorskip("jax")
    pytest.importorskip("optax")
    data = ["--data", str(flat_folder), *COMMON, "--backend", "jax", "--batch-size", "4", "--time-budget", "0.4"]
    done = _torchrun(["train", *data, "--out", str(tmp_path / "run")], tmp_path)  # the speed probe's steps agree
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["time_budget"]["done_steps"] >= 1 and "time budget 0.4 min" in done.stdout


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_nodes(args: list[str], homes: list[Path]) -> list[subprocess.CompletedProcess]:
    """Two ``torchrun --nnodes 2`` launches, one process each, that meet through a c10d rendezvous on
    loopback as two machines would; each runs in its own folder with its own HOME and cache."""
    endpoint = f"127.0.0.1:{_free_port()}"
    launches = []
    for node, home in enumerate(homes):
        home.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "OMP_NUM_THREADS": "1", "HOME": str(home), "XDG_CACHE_HOME": str(home / ".cache")}
        command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node-rank", str(node)]
        command += ["--nproc-per-node", "1", "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint]
        command += ["--rdzv-id", "vitrain-test", "-m", "vitrain", *args]
        launches.append(
            subprocess.Popen(command, env=env, cwd=home, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        )
    done = []
    for launch in launches:
        stdout, stderr = launch.communicate(timeout=300)
        done.append(subprocess.CompletedProcess(launch.args, launch.returncode, stdout, stderr))
    for d in done:
        assert d.returncode == 0, d.stdout[-3000:] + d.stderr[-3000:]
    return done


def _files_under(folder: Path) -> list[Path]:
    return sorted(p.relative_to(folder) for p in folder.rglob("*") if p.is_file())


def test_two_nodes_train_as_one_node_with_two_processes(tmp_path):
    """``--nnodes 2`` launches joined by the c10d rendezvous: the same weights, metrics and report as one
    ``--nproc-per-node 2`` launch; each node runs in its own folder, HOME and cache (machines that share no
    file system but ``--out``'s), and only rank 0 writes: the other node's folders stay empty."""
    args = ["train", "--data", "digits", *COMMON, "--epochs", "1", "--batch-size", "32", "--precision", "auto"]
    _torchrun([*args, "--out", str(tmp_path / "one-node")], tmp_path)
    done = _two_nodes([*args, "--out", str(tmp_path / "two-nodes")], [tmp_path / "node0", tmp_path / "node1"])
    one, two = tmp_path / "one-node", tmp_path / "two-nodes"
    assert _weight_difference(one / "last.safetensors", two / "last.safetensors") == 0.0
    assert _without_timing(_metrics(one)) == _without_timing(_metrics(two))
    reports = [json.loads((run / "report.json").read_text()) for run in (one, two)]
    assert reports[0]["test"] == reports[1]["test"] and reports[1]["processes"] == 2
    # the rendezvous, not --node-rank, orders the nodes: rank 0 is the launch that logged the run
    writer = [i for i, d in enumerate(done) if f"writing to {two}" in d.stdout]
    assert len(writer) == 1, [d.stdout[-1000:] for d in done]
    other = tmp_path / f"node{1 - writer[0]}"
    assert _files_under(other) == []  # no run folder, no cache, nothing in HOME
    # rank 0's node measured and cached the --precision auto probe in its own HOME's cache
    assert _files_under(tmp_path / f"node{writer[0]}" / ".cache") != []


# rank 1 reads another copy of the data folder, one that lacks an image, as a machine with a stale copy would
OTHER_COPY = """import os, sys
if os.environ["RANK"] == "1":
    sys.argv[sys.argv.index("--data") + 1] = os.environ["VITRAIN_TEST_OTHER_COPY"]
from vitrain.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_processes_that_read_different_data_are_stopped_before_training(flat_folder, tmp_path, monkeypatch):
    import shutil

    copy = tmp_path / "stale-copy"
    shutil.copytree(flat_folder, copy)
    next(p for p in sorted(copy.rglob("*.png"))).unlink()
    script = tmp_path / "other_copy.py"
    script.write_text(OTHER_COPY)
    monkeypatch.setenv("VITRAIN_TEST_OTHER_COPY", str(copy))
    args = ["train", "--data", str(flat_folder), *COMMON, "--epochs", "1", "--batch-size", "4"]
    done = _torchrun([*args, "--out", str(tmp_path / "run")], tmp_path, succeeds=False, entry=(str(script),))
    assert "process(es) 1 found other images or labels than process 0" in done.stderr
    assert not (tmp_path / "run").exists()


# what the entry scripts below share: `at` holds the epoch and the step of the epoch a process is in
COUNTS_STEPS = """
Backend = torch_backend.TorchBackend
step, start_epoch, at = Backend.train_step, Backend.start_epoch, {"epoch": 0, "step": 0}

def start_epoch_counting(self, epoch):
    at.update(epoch=epoch, step=0)
    start_epoch(self, epoch)
"""

# rank 1 stops (SIGSTOP: as a hung process, or a machine that froze) before its 2nd step of epoch 2
STOPS = (
    """
import os, signal, sys
from pathlib import Path
from vitrain.engine import torch_backend
from vitrain.cli import main

pids = Path(os.environ["VITRAIN_TEST_PIDS"])
"""
    + COUNTS_STEPS
    + """
def train_step_or_stop(self, images, labels):
    at["step"] += 1
    if self.place.rank == 1 and (at["epoch"], at["step"]) == (2, 2):
        (pids / "stopped").write_text(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGSTOP)
    return step(self, images, labels)

Backend.start_epoch, Backend.train_step = start_epoch_counting, train_step_or_stop
(pids / ("rank" + os.environ["RANK"])).write_text(str(os.getpid()))
sys.exit(main(sys.argv[1:]))
"""
)


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_stopped_process_makes_the_others_stop_naming_the_step_instead_of_waiting_forever(tmp_path, monkeypatch):
    """``--dist-timeout``: rank 0 waits that long in the gradient all-reduce for a rank that stopped mid-epoch,
    then stops with an error naming the step and the command that continues the run."""
    import signal
    import time

    script, pids, run = tmp_path / "stops.py", tmp_path / "pids", tmp_path / "run"
    script.write_text(STOPS)
    pids.mkdir()
    monkeypatch.setenv("VITRAIN_TEST_PIDS", str(pids))
    args = ["train", "--data", "digits", *COMMON, "--img-size", "8", "--epochs", "3", "--batch-size", "32"]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(script)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launch = subprocess.Popen(
        [*command, *args, "--dist-timeout", "3", "--out", str(run)],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not (pids / "stopped").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        started = time.monotonic()
        rank0 = int((pids / "rank0").read_text())
        while _running(rank0) and time.monotonic() < deadline:
            time.sleep(0.1)
        waited = time.monotonic() - started
    finally:  # the stopped process would hold the agent for its 30 s grace period
        os.kill(int((pids / "stopped").read_text()), signal.SIGKILL)
        stdout, stderr = launch.communicate(timeout=120)
    assert launch.returncode != 0
    assert 2 < waited < 60, waited
    said = stdout + stderr
    where = "in step 2 of epoch 2 (the gradient all-reduce)"
    assert f"process 0 of 2 waited more than --dist-timeout 3 s for the other processes {where}" in said, said[-3000:]
    assert "Every completed epoch is saved; continue with: vitrain train --resume " + str(run) in said
    assert (run / "state.safetensors").exists() and len(_metrics(run)) == 1


# rank 1 dies (SIGKILL) once, in step 4 of epoch 2, after rank 0 saved the run at step 2 of epoch 2
DIES_MID_EPOCH = (
    """
import os, signal, sys, time
from pathlib import Path
from vitrain.engine import torch_backend
from vitrain.engine.state import read_state
from vitrain.cli import main

marker, out = Path(os.environ["VITRAIN_TEST_KILLED"]), Path(sys.argv[sys.argv.index("--out") + 1])
"""
    + COUNTS_STEPS
    + """
def train_step_or_die(self, images, labels):
    at["step"] += 1
    if self.place.rank == 1 and (at["epoch"], at["step"]) == (2, 4) and not marker.exists():
        while read_state(out).get("partial", {}).get("step") != 2:  # rank 0's save at step 2 of epoch 2
            time.sleep(0.05)
        marker.write_text("killed")
        os.kill(os.getpid(), signal.SIGKILL)
    return step(self, images, labels)

Backend.start_epoch, Backend.train_step = start_epoch_counting, train_step_or_die
sys.exit(main(sys.argv[1:]))
"""
)


def test_a_worker_killed_mid_epoch_resumes_from_the_save_inside_the_epoch(flat_folder, tmp_path, monkeypatch):
    """``--save-every 2steps`` under torchrun: every rank's random stream and sums are saved by rank 0; after a
    SIGKILL the agent restarts both, and they continue inside epoch 2 to the end of a run never stopped."""
    script = tmp_path / "dies_mid_epoch.py"
    script.write_text(DIES_MID_EPOCH)
    monkeypatch.setenv("VITRAIN_TEST_KILLED", str(tmp_path / "killed"))
    args = ["train", "--data", str(flat_folder), *COMMON, "--epochs", "3", "--batch-size", "2", "--resume", "auto"]
    args += ["--augment", "flip-crop", "--dropout", "0.1", "--save-every", "2steps"]
    for pipeline in ("on",):  # each rank's in-memory augmentation stream is saved (files: seeded per sample)
        data = [*args, "--in-memory", pipeline]
        never, restarted = tmp_path / f"never-stopped-{pipeline}", tmp_path / f"restarted-{pipeline}"
        _torchrun([*data, "--out", str(never)], tmp_path)
        (tmp_path / "killed").unlink(missing_ok=True)
        done = _torchrun([*data, "--out", str(restarted)], tmp_path, entry=("--max-restarts", "3", str(script)))
        assert (tmp_path / "killed").exists()
        assert f"resuming {restarted} at step 2 of epoch 2" in done.stdout, done.stdout[-2000:]
        assert _weight_difference(never / "last.safetensors", restarted / "last.safetensors") == 0.0
        assert _without_timing(_metrics(never)) == _without_timing(_metrics(restarted))
        reports = [json.loads((run / "report.json").read_text()) for run in (never, restarted)]
        assert reports[0]["test"] == reports[1]["test"] and reports[0]["val"] == reports[1]["val"]


def test_an_epoch_saved_inside_continues_only_with_as_many_processes(flat_folder, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    args = ["train", "--data", str(flat_folder), *COMMON, "--epochs", "3", "--batch-size", "4", "--out", str(run)]
    interrupt_step(monkeypatch, 9)
    assert main([*args, "--save-every", "2steps"]) == 130  # saved at step 2 of epoch 2 (6 steps an epoch)
    monkeypatch.undo()
    done = _torchrun(["train", "--resume", str(run), "--no-progress"], tmp_path, succeeds=False)
    assert "the run was saved at step 2 of epoch 2 by 1 process(es); continue it with 1" in done.stderr


# a CPU with bf16 units, where rank 0's timing finds bf16 faster; a rank that timed by itself would find it slower
BF16_CPU = """
import os, sys
from pathlib import Path
from vitrain.engine import precision, torch_backend
from vitrain.cli import main

precision.cpu_bf16_units = lambda: ["AMX-BF16"]
precision.measure_speedup = lambda *args, **kwargs: 1.5 if os.environ["RANK"] == "0" else 0.5
start = torch_backend.TorchBackend.start

def start_and_tell(self, total_steps, steps_per_epoch):
    start(self, total_steps, steps_per_epoch)
    Path(os.environ["VITRAIN_TEST_PRECISION"], os.environ["RANK"]).write_text(str(self.amp_dtype))

torch_backend.TorchBackend.start = start_and_tell
sys.exit(main(sys.argv[1:]))
"""


def test_precision_auto_under_torchrun_is_rank_0s_choice_on_every_rank(flat_folder, tmp_path, monkeypatch):
    """``--precision auto`` on a CPU with bf16 units: rank 0 times the step and every rank trains in what it chose."""
    script, told = tmp_path / "bf16_cpu.py", tmp_path / "told"
    script.write_text(BF16_CPU)
    told.mkdir()
    monkeypatch.setenv("VITRAIN_TEST_PRECISION", str(told))
    args = ["train", "--data", str(flat_folder), *COMMON, "--epochs", "1", "--batch-size", "4", "--compile", "off"]
    done = _torchrun([*args, "--precision", "auto", "--out", str(tmp_path / "run")], tmp_path, entry=(str(script),))
    chosen = "precision: bf16 autocast (auto: this CPU has AMX-BF16, and this model's training step ran 1.50x"
    assert chosen in done.stdout, done.stdout[-2000:]
    assert [(told / r).read_text() for r in ("0", "1")] == ["torch.bfloat16", "torch.bfloat16"]
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["precision"]["compute"] == "bf16" and report["processes"] == 2
