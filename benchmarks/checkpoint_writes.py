"""Checkpoint writes behind the training (a background thread) vs in the training loop.

Every epoch writes last.safetensors, the resumable state and metrics.csv (and
best.safetensors when validation improved), each synced to disk and renamed into place.
With epochs of a second or two the writes are a visible share of the run. Two measures, both
comparing ``CheckpointWriter(background=False)`` (the files written in the training loop)
with ``CheckpointWriter()`` (written on its thread):

* default: one epoch's cycle, alternated many times in this process. Each cycle asks for
  an epoch's four files (best, last, state with a history of ``--history`` rows, metrics.csv)
  and then trains one epoch's steps (random batches, the run's model, batch size and steps
  per epoch); the two kinds alternate cycle by cycle, so a machine whose speed drifts
  affects both alike. Reported: seconds per cycle, and the loop / thread ratio paired cycle
  by cycle. The thread's work competes with training for the CPU, which this includes.
* ``--end-to-end``: the whole ``vitrain train`` run (fixed epochs), alternating, in this
  process, after an untimed one-epoch run. The wall time moves with the machine's speed from
  run to run by more than the writes cost; the seconds outside the epochs (wall minus the
  epochs' own training and validation time: setup, the writes between epochs, the final
  evaluation) show what the writes cost the loop. On the CPU the runs' numbers are
  identical (checked); on a GPU, whose kernels need not sum in the same order every time,
  each run's test accuracy is shown.

    python benchmarks/checkpoint_writes.py --data cifar10-2040  # the small-data recipe at 32 px: 2 s epochs
    python benchmarks/checkpoint_writes.py --data digits        # the README's default run
    python benchmarks/checkpoint_writes.py --data cifar10-2040 --end-to-end --epochs 60
    python benchmarks/checkpoint_writes.py --data digits --end-to-end --epochs 60   # on a GPU: vitrain's default there
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from accuracy import DATASETS, ROOT, machine_line, markdown_table, save_results  # noqa: E402

import vitrain.engine.train as train_module  # noqa: E402
from vitrain.checkpoint import CheckpointWriter  # noqa: E402
from vitrain.cli import main as vitrain_main  # noqa: E402
from vitrain.models import create_model  # noqa: E402
from vitrain.models.vit import VisionTransformer, ViTConfig  # noqa: E402
from vitrain.recipes import get_recipe  # noqa: E402
from vitrain.report import metrics_csv_bytes  # noqa: E402

DATA = ("digits", "cifar10-2040")


def cycle_setup(data: str) -> tuple[torch.nn.Module, int, int, int, int]:
    """The model of the run, its channels, input size, batch size and steps per epoch (training split)."""
    if data == "digits":  # vitrain train's defaults: 1,257 training images
        return create_model("vit-digits", num_classes=10), 1, 8, 32, 40
    c = get_recipe("small-data").config  # at 32 px: 1,730 training images
    arch = ViTConfig(
        img_size=32,
        patch_size=c["patch_size"],
        embed_dim=c["embed_dim"],
        depth=c["depth"],
        num_heads=c["num_heads"],
        mlp_dim=c["mlp_dim"],
        stem=c["stem"],
        num_classes=10,
        drop_path=c["drop_path"],
    )
    return VisionTransformer(arch), 3, 32, c["batch_size"], 1730 // c["batch_size"]


def cycles(data: str, rounds: int, history_rows: int) -> dict[str, list[float]]:
    """Alternate (ask for an epoch's files, then train an epoch's steps) in the loop and on the thread."""
    torch.manual_seed(0)
    model, chans, size, batch, steps = cycle_setup(data)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    images, labels = torch.randn(batch, chans, size, size), torch.randint(0, 10, (batch,))
    history = [
        {
            "epoch": i + 1,
            "train_loss": 1.0 + 1 / (i + 1),
            "train_accuracy": 0.5,
            "val_loss": 1.2,
            "val_accuracy": 0.45,
            "lr": 1e-3,
            "epoch_seconds": 2.0,
            "images_per_second": 800.0,
        }
        for i in range(history_rows)
    ]

    def epoch(files: CheckpointWriter, out: Path) -> float:
        start = time.perf_counter()
        files.save_model(out / "best.safetensors", model, epoch=1)
        files.save_model(out / "last.safetensors", model, epoch=1)
        files.save_state(
            out / "state.safetensors",
            {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "history": history},
        )
        files.write_bytes(out / "metrics.csv", metrics_csv_bytes(history))
        model.train()
        for _ in range(steps):
            loss = F.cross_entropy(model(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return time.perf_counter() - start

    times: dict[str, list[float]] = {"in the loop": [], "background thread": []}
    with tempfile.TemporaryDirectory(dir=ROOT / "runs") as tmp:
        loop, thread = CheckpointWriter(background=False), CheckpointWriter()
        epoch(thread, Path(tmp))  # first-call costs, untimed
        for _ in range(rounds):
            times["in the loop"].append(epoch(loop, Path(tmp)))
            times["background thread"].append(epoch(thread, Path(tmp)))
        thread.close()
    return times


def run_flags(data: str, epochs: int, datasets: Path) -> list[str]:
    """digits with the defaults (the README's first command), or the small-data recipe without its first stage
    on the CIFAR-10 subset at 32 px, as benchmarks/small_data.py runs it."""
    if data == "digits":
        return ["--data", "digits", "--epochs", str(epochs)]
    from small_data import cifar10_subset

    return [
        "--recipe",
        "small-data",
        "--pretrain",
        "none",
        "--data",
        str(cifar10_subset(datasets)),
        "--img-size",
        "32",
        "--epochs",
        str(epochs),
    ]


def one_run(flags: list[str], out: Path, background: bool) -> dict:
    """Train once (in this process) and return the wall seconds, epochs and test accuracy."""
    original = train_module.writes_behind  # vitrain's own choice: on a GPU only
    train_module.writes_behind = lambda device: background
    try:
        started = time.perf_counter()
        code = vitrain_main(["train", *flags, "--out", str(out), "--overwrite", "--no-progress"])
        seconds = time.perf_counter() - started
    finally:
        train_module.writes_behind = original
    if code != 0:
        raise SystemExit(f"vitrain train {' '.join(flags)} failed with exit code {code}")
    report = json.loads((out / "report.json").read_text())
    return {
        "seconds": seconds,
        "epochs": report["epochs"],
        "test_accuracy": report["test"]["accuracy"],
        "epoch_seconds": report["train_seconds"],
    }


def cycles_table(args: argparse.Namespace, header: list[str]) -> tuple[str, dict]:
    """The default measure: alternating epoch cycles. Returns the Markdown text and the raw seconds."""
    times = cycles(args.data, args.rounds or 40, args.history)
    pairs = [a / b for a, b in zip(*times.values())]
    quartiles = statistics.quantiles(pairs, n=4)
    rows = [
        [name, args.data, len(t), f"{statistics.median(t):.3f}", f"{statistics.mean(t):.3f}"]
        for name, t in times.items()
    ]
    means = statistics.mean(times["in the loop"]) / statistics.mean(times["background thread"])
    return "\n".join(
        [
            *header,
            *markdown_table(["checkpoint writes", "data", "cycles", "median seconds per cycle", "mean"], rows),
            "",
            f"In the loop / on the thread, paired cycle by cycle: median {statistics.median(pairs):.3f}x "
            f"(quartiles {quartiles[0]:.3f}x-{quartiles[2]:.3f}x); ratio of the means {means:.3f}x.",
            "",
        ]
    ), times


def end_to_end_table(args: argparse.Namespace, header: list[str]) -> tuple[str, dict]:
    """--end-to-end: alternating whole training runs. Returns the Markdown text and the per-run results."""
    flags = run_flags(args.data, args.epochs, args.datasets)
    warmup = run_flags(args.data, 1, args.datasets)
    one_run(warmup, args.out / f"{args.data}-warmup", True)  # imports, first-call costs: untimed
    results: dict[str, list[dict]] = {"in the loop": [], "background thread": []}
    for r in range(args.rounds or 3):
        for name, background in (("in the loop", False), ("background thread", True)):
            result = one_run(flags, args.out / f"{args.data}-{'thread' if background else 'loop'}", background)
            results[name].append(result)
            print(
                f"round {r + 1}: {name}: {result['seconds']:.2f}s, test accuracy {result['test_accuracy']:.4f}",
                flush=True,
            )
    accuracies = {res["test_accuracy"] for runs in results.values() for res in runs}
    if len(accuracies) != 1 and not torch.cuda.is_available():
        raise SystemExit(f"the runs disagree ({sorted(accuracies)}): the writes changed training")

    def outside(res: dict) -> float:  # setup, checkpoints between epochs, final evaluation
        return res["seconds"] - res["epoch_seconds"]

    rows = [
        [
            name,
            args.data,
            args.epochs,
            " / ".join(f"{res['seconds']:.2f}" for res in runs),
            f"{statistics.median(res['seconds'] for res in runs):.2f}",
            " / ".join(f"{outside(res):.2f}" for res in runs),
            f"{statistics.median(map(outside, runs)):.2f}",
            " / ".join(f"{res['test_accuracy']:.4f}" for res in runs),
        ]
        for name, runs in results.items()
    ]
    loop, thread = results.values()
    given_back = [outside(a) - outside(b) for a, b in zip(loop, thread)]  # paired by round
    wall = [a["seconds"] / b["seconds"] for a, b in zip(loop, thread)]
    return "\n".join(
        [
            *header,
            *markdown_table(
                [
                    "checkpoint writes",
                    "data",
                    "epochs",
                    "wall seconds, by round",
                    "median",
                    "seconds outside epochs, by round",
                    "median",
                    "test accuracy, by round",
                ],
                rows,
            ),
            "",
            "Seconds outside epochs = wall - the epochs' own seconds (training + validation): setup, the checkpoint "
            "writes between epochs, the final evaluation. Given back per round (in the loop - on the thread): "
            + ", ".join(f"{g:.2f}s" for g in given_back)
            + f"; median {statistics.median(given_back) / args.epochs * 1000:.0f} ms per epoch. "
            "Wall time in the loop / on the thread, by round: " + ", ".join(f"{w:.3f}x" for w in wall) + ".",
            "",
        ]
    ), results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", choices=DATA, default="cifar10-2040")
    parser.add_argument("--end-to-end", action="store_true", help="whole training runs instead of epoch cycles")
    parser.add_argument("--epochs", type=int, default=30, help="epochs per run (--end-to-end)")
    parser.add_argument(
        "--rounds", type=int, default=None, help="alternating pairs (40 cycles, or 3 runs with --end-to-end)"
    )
    parser.add_argument("--history", type=int, default=800, help="history rows in the state (800)")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "benchmarks" / "checkpoint_writes")
    parser.add_argument(
        "--datasets",
        type=Path,
        default=DATASETS,
        help="where cifar10.tar (or cifar10-2040.tar) is, for --data cifar10-2040 --end-to-end",
    )
    args = parser.parse_args(argv)
    command = "python benchmarks/checkpoint_writes.py " + " ".join(argv if argv is not None else sys.argv[1:])
    header = [f"Command: `{command.strip()}`  ", machine_line(), ""]
    (ROOT / "runs").mkdir(exist_ok=True)  # the cycles' temporary folder goes there
    if args.end_to_end:
        table, raw = end_to_end_table(args, header)
        save_results(args.out, f"checkpoint_writes_{args.data}", table, raw)
    else:
        table, raw = cycles_table(args, header)
        save_results(args.out, f"cycles_{args.data}", table, raw)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
