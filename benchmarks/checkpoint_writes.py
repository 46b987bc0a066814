"""Checkpoint writes behind the training (a background thread) vs in the training loop.

Every epoch writes last.safetensors, the resumable state and metrics.csv (and
best.safetensors when validation improved), each synced to disk and renamed into place.
With epochs of a second or two that costs several percent of the run. This script trains
the same fixed-length run twice per round in this process, once with
``CheckpointWriter(background=False)`` (the files written in the training loop, as before)
and once as vitrain does (written on the writer's thread), alternating, and reports the
wall-clock seconds of each (after an untimed one-epoch run that pays the imports and
first-call costs). The wall time moves with the machine's speed from run to run; the
seconds outside the epochs (wall minus the epochs' own training and validation time: setup,
the checkpoint writes between epochs, the final evaluation), paired by round, show what the
writes cost the loop. The numbers of the two runs are identical (the
writes do not touch training), which the script checks.

    python benchmarks/checkpoint_writes.py                      # digits, the README's default run
    python benchmarks/checkpoint_writes.py --data cifar10-2040  # the small-data recipe, 2 s epochs
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy import ROOT, machine_line, markdown_table, save_results  # noqa: E402

import vitrain.engine.train as train_module  # noqa: E402
from vitrain.checkpoint import CheckpointWriter  # noqa: E402
from vitrain.cli import main as vitrain_main  # noqa: E402

DATA = ("digits", "cifar10-2040")


def run_flags(data: str, epochs: int) -> list[str]:
    """digits with the defaults (the README's first command), or the small-data recipe without its first stage
    on the CIFAR-10 subset at 32 px, as benchmarks/small_data.py runs it."""
    if data == "digits":
        return ["--data", "digits", "--epochs", str(epochs)]
    from small_data import cifar10_subset
    return ["--recipe", "small-data", "--pretrain", "none", "--data", str(cifar10_subset()), "--img-size", "32",
            "--epochs", str(epochs)]


def one_run(flags: list[str], out: Path, background: bool) -> dict:
    """Train once (in this process) and return the wall seconds, epochs and test accuracy."""
    writer = CheckpointWriter if background else functools.partial(CheckpointWriter, background=False)
    original = train_module.CheckpointWriter
    train_module.CheckpointWriter = writer
    try:
        started = time.perf_counter()
        code = vitrain_main(["train", *flags, "--out", str(out), "--overwrite", "--no-progress"])
        seconds = time.perf_counter() - started
    finally:
        train_module.CheckpointWriter = original
    if code != 0:
        raise SystemExit(f"vitrain train {' '.join(flags)} failed with exit code {code}")
    report = json.loads((out / "report.json").read_text())
    return {"seconds": seconds, "epochs": report["epochs"], "test_accuracy": report["test"]["accuracy"],
            "epoch_seconds": report["train_seconds"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", choices=DATA, default="digits")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3, help="alternating pairs of runs")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "benchmarks" / "checkpoint_writes")
    args = parser.parse_args(argv)

    flags = run_flags(args.data, args.epochs)
    one_run(run_flags(args.data, 1), args.out / f"{args.data}-warmup", True)  # imports, first-call costs: untimed
    results: dict[str, list[dict]] = {"in the loop": [], "background thread": []}
    for r in range(args.rounds):
        for name, background in (("in the loop", False), ("background thread", True)):
            result = one_run(flags, args.out / f"{args.data}-{'thread' if background else 'loop'}", background)
            results[name].append(result)
            print(f"round {r + 1}: {name}: {result['seconds']:.2f}s, test accuracy {result['test_accuracy']:.4f}",
                  flush=True)
    accuracies = {res["test_accuracy"] for runs in results.values() for res in runs}
    if len(accuracies) != 1:
        raise SystemExit(f"the runs disagree ({sorted(accuracies)}): the writes changed training")

    def outside(res: dict) -> float:  # setup, checkpoints between epochs, final evaluation
        return res["seconds"] - res["epoch_seconds"]

    rows = [[name, args.data, args.epochs, " / ".join(f"{res['seconds']:.2f}" for res in runs),
             f"{statistics.median(res['seconds'] for res in runs):.2f}",
             " / ".join(f"{outside(res):.2f}" for res in runs), f"{statistics.median(map(outside, runs)):.2f}",
             f"{runs[0]['test_accuracy']:.4f}"]
            for name, runs in results.items()]
    loop, thread = results.values()
    given_back = [outside(a) - outside(b) for a, b in zip(loop, thread)]  # paired by round
    wall = [a["seconds"] / b["seconds"] for a, b in zip(loop, thread)]
    command = "python benchmarks/checkpoint_writes.py " + " ".join(argv if argv is not None else sys.argv[1:])
    table = "\n".join([
        f"Command: `{command.strip()}`  ", machine_line(), "",
        *markdown_table(["checkpoint writes", "data", "epochs", "wall seconds, by round", "median",
                         "seconds outside epochs, by round", "median", "test accuracy"], rows), "",
        "Seconds outside epochs = wall - the epochs' own seconds (training + validation): setup, the checkpoint "
        "writes between epochs, the final evaluation. Given back per round (in the loop - on the thread): "
        + ", ".join(f"{g:.2f}s" for g in given_back)
        + f"; median {statistics.median(given_back) / args.epochs * 1000:.0f} ms per epoch. Wall time in the loop / "
        "on the thread, by round: " + ", ".join(f"{w:.3f}x" for w in wall) + ".", ""])
    save_results(args.out, f"checkpoint_writes_{args.data}", table, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
