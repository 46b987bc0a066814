"""``vitrain pretrain``: the pretraining loop, built from the pieces training uses.

The run folder, the data and the leak check (:mod:`~vitrain.engine.setup`), the epoch
(:func:`~vitrain.engine.epoch.train_one_epoch`, with :class:`~.task.InstanceTask` as its
step), the time-budget clock (:mod:`~vitrain.engine.budget`) and the resumable state
(:mod:`~vitrain.engine.state`) are training's own; what is pretraining's is the task,
the kNN report and the report.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Callable

from ...checkpoint import CheckpointError, CheckpointWriter
from ...config import ConfigError, TrainConfig
from ...report import metrics_csv_bytes, plot_curves, write_report
from ..budget import BudgetClock, epochs_plan
from ..distributed import from_environment
from ..epoch import TrainingError, train_one_epoch
from ..runtime import writes_behind
from ..setup import RunSetup, prepare_run
from ..state import STATE_FILE, Progress, read_state, save_state
from .method import KNN_K, KNN_TEMPERATURE
from .task import InstanceTask

BACKBONE_FILE = "backbone.safetensors"
PRETRAIN_FILES = ("config.yaml", "metrics.csv", BACKBONE_FILE, STATE_FILE, "report.json", "loss.png", "accuracy.png")


def pretrain(
    cfg: TrainConfig, resume: bool = False, log=print, on_start: Callable[[], None] | None = None
) -> dict[str, Any]:
    """Instance-discrimination pretraining as ``cfg`` says; writes the run folder, returns the report.

    Uses ``cfg.epochs`` (or, with ``cfg.time_budget``, as many steps as fit, re-planned
    after every epoch), the model options, optimizer and schedule of ``cfg``, and ``views``,
    ``infonce``, ``temperature``, ``instance_smoothing``, ``instance_init``,
    ``pretrain_crop_scale``, ``mixup``, ``cutmix``, the ``local_crops`` options,
    ``knn_every``, ``clip_grad``, ``skip_nonfinite`` and ``compile``. With ``resume``,
    ``cfg`` is the run's saved config and pretraining continues after the last completed
    epoch (a budgeted run finishes its planned steps, without a deadline). ``on_start`` runs
    once the data has loaded, before anything is written (a chained run's own folder setup).
    """
    if from_environment().active:
        raise ConfigError("vitrain pretrain runs in one process; start it without torchrun")
    started = time.perf_counter()
    # evaluation images are never used here (but by the kNN report), so none are removed as leaks
    cfg = dataclasses.replace(cfg, pretrain="instance-discrimination", pretrained=None, freeze="none", dedupe="off")
    run = prepare_run(cfg, resume, log, on_start, PRETRAIN_FILES)
    cfg, out, device, log = run.cfg, run.out, run.device, run.log
    task = InstanceTask(cfg, run.splits, device, resume)
    steps_per_epoch = task.steps_per_epoch
    state = read_state(out) if resume else {}
    progress = Progress.from_state(state) if resume else Progress()
    total_steps = state["total_steps"] if resume else cfg.epochs * steps_per_epoch
    if cfg.time_budget and not resume:  # no probe: the first epoch's speed makes the first real plan
        progress.budget = epochs_plan(cfg.time_budget, total_steps, reserved_final_seconds=2.0)
    task.start(total_steps, steps_per_epoch)
    if resume:
        if state["images"] != task.n or state["images_digest"] != task.digest:
            raise CheckpointError(
                f"--resume {out}: the training images are not the ones pretraining started on "
                f"({state['images']} then, {task.n} now, or the same number with other content); "
                "the instance classifier has a row per image, so start again with --overwrite"
            )
        task.load_state_dict(state, str(out / STATE_FILE))
        log(f"resuming pretraining after epoch {progress.epoch} (step {progress.step} of {total_steps})")
    task.compile(total_steps)
    knn = knn_report(task, run)
    describe_pretraining(task, run)
    knn_before = state.get("knn_before")  # the untrained backbone's, for comparison (saved when resuming)
    knn_seconds = 0.0  # what the last kNN report cost
    if knn is not None and not resume:
        knn_start = time.perf_counter()
        knn_before = knn()
        knn_seconds = time.perf_counter() - knn_start
        log(f"kNN validation accuracy of the untrained backbone: {knn_before:.4f} ({len(run.splits.val)} images)")

    clock = BudgetClock(progress.budget, started, resumed=resume)
    save_seconds = 0.0  # what the last epoch's checkpoints cost
    first_epoch = progress.epoch + 1  # the first this process runs (after --resume too)
    with CheckpointWriter(background=writes_behind(device), log=log) as files:  # closed (writes finished) on exit
        while progress.step < total_steps:
            epoch = progress.epoch + 1
            task.start_epoch(epoch)
            steps = min(steps_per_epoch, total_steps - progress.step)
            stats = train_one_epoch(
                task,
                task.batches(steps),
                epoch,
                steps,
                progress,
                clock,
                run.place,
                device,
                skip_nonfinite=cfg.skip_nonfinite,
                out=out,
                bar=cfg.progress,
                label=f"pretrain epoch {epoch}",
                log=log,
                checkpoint=BACKBONE_FILE,
                reserve=knn_seconds,
            )
            if stats.deadline:  # the final kNN report fits in the budget too
                total_steps = progress.step
            row = {
                "epoch": epoch,
                "train_loss": stats.loss,
                "train_accuracy": stats.accuracy,
                "lr": task.lr(),
                "epoch_seconds": stats.seconds,
                "images_per_second": stats.images / stats.seconds,
            }
            if not math.isfinite(row["train_loss"]):
                raise TrainingError(f"the pretraining loss became {row['train_loss']} in epoch {epoch} (lower --lr)")
            # re-plan from the speed so far; a compiled first epoch also compiles, so it is left out
            if clock.running and progress.step < total_steps and not (epoch == first_epoch and task.compiled):
                knn_share = knn_seconds / cfg.knn_every if knn is not None else 0.0
                overhead = save_seconds + knn_share
                new = clock.replan(
                    progress.step, epoch, stats.steps, stats.seconds, overhead, steps_per_epoch, overhead + knn_seconds
                )
                if new is not None:
                    total_steps = max(new, progress.step)
                    task.replan(total_steps)
            if knn is not None and (epoch % cfg.knn_every == 0 or progress.step >= total_steps):
                knn_start = time.perf_counter()
                row["val_accuracy"] = knn()
                knn_seconds = time.perf_counter() - knn_start
            save_start = time.perf_counter()
            progress.history.append(row)
            progress.epoch = epoch
            progress.train_seconds += stats.seconds
            task.save_weights(files, out / BACKBONE_FILE, epoch)
            files.write_bytes(out / "metrics.csv", metrics_csv_bytes(progress.history))
            entries = {"total_steps": total_steps, "images": task.n, "images_digest": task.digest}
            save_state(files, out, progress, **task.state_dict(), **entries, knn_before=knn_before)
            save_seconds = time.perf_counter() - save_start
            log(
                f"pretrain epoch {epoch:>3}  loss {row['train_loss']:.4f}  instance acc {row['train_accuracy']:.4f}  "
                + (f"kNN val acc {row['val_accuracy']:.4f}  " if "val_accuracy" in row else "")
                + f"lr {row['lr']:.2e}  {row['images_per_second']:.0f} views/s  {stats.seconds:.1f}s"
            )
    return pretraining_report(task, run, progress, knn is not None, knn_before, started)


def knn_report(task: InstanceTask, run: RunSetup) -> Callable[[], float] | None:
    """The kNN report of ``--knn-every``, or None when it is off or there is no validation split."""
    if run.cfg.knn_every and not len(run.splits.val):
        run.log("note: --knn-every reports on the validation split, and there is none: no kNN report")
        return None
    return task.knn_report(run.splits) if run.cfg.knn_every else None


def describe_pretraining(task: InstanceTask, run: RunSetup) -> None:
    """Log what the pretraining does before its first step."""
    cfg = run.cfg
    params = sum(p.numel() for p in task.model.parameters())
    run.log(
        f"pretraining: instance discrimination over {task.n} images, {cfg.views} views each, batch {task.batch}, "
        f"{cfg.model} {params / 1e6:.2f}M parameters at {cfg.img_size}px, temperature {cfg.temperature:g}"
        + (f", InfoNCE x{cfg.infonce:g}" if cfg.infonce else "")
        + (f", target smoothing {cfg.instance_smoothing:g}" if cfg.instance_smoothing else "")
        + (", classifier initialized from the images' features" if cfg.instance_init == "features" else "")
        + (f", MixUp {cfg.mixup:g}" if cfg.mixup else "")
        + (f", CutMix {cfg.cutmix:g}" if cfg.cutmix else "")
        + (f", {cfg.local_crops} local crops at {task.local_size}px" if cfg.local_crops else "")
        + f", on {run.device}"
        + (" (bf16 autocast)" if task.amp_dtype else "")
        + (", torch.compile" if task.compiled else "")
    )
    run.log(f"precision: {task.precision.describe()}")
    if task.compiling is not None:
        run.log(f"compile: {'on' if task.compiling.on else 'off'} ({task.compiling.reason})")
    run.log(f"writing to {run.out}")


def pretraining_report(
    task: InstanceTask, run: RunSetup, progress: Progress, knn: bool, knn_before: float | None, started: float
) -> dict[str, Any]:
    """Plot the curves, write ``report.json`` and say how the pretraining went."""
    cfg, out, history = run.cfg, run.out, progress.history
    plot_curves(
        history,
        out,
        labels={"train": "instance accuracy (training views)", "val": f"validation, {KNN_K}-NN on backbone features"},
    )
    knn_part = {
        "val_accuracy": history[-1].get("val_accuracy"),
        "before": knn_before,
        "k": KNN_K,
        "temperature": KNN_TEMPERATURE,
        "every": cfg.knn_every,
        "val_images": len(run.splits.val),
    }
    report = {
        "method": "instance-discrimination",
        "data": cfg.data,
        "images": task.n,
        "views": cfg.views,
        "epochs": progress.epoch,
        "steps": progress.step,
        "batch_size": task.batch,
        "final_loss": history[-1]["train_loss"],
        "instance_accuracy": history[-1]["train_accuracy"],
        **{k: getattr(cfg, k) for k in ("infonce", "instance_smoothing", "instance_init", "mixup", "cutmix")},
        "temperature": cfg.temperature,
        "local_crops": cfg.local_crops,
        **({"local_crop_size": task.local_size} if cfg.local_crops else {}),
        **({"knn": knn_part} if knn else {}),
        "model": task.model.config.to_dict(),
        "device": str(run.device),
        "precision": task.precision.to_dict(),
        **({"compile": task.compiling.to_dict()} if task.compiling is not None else {}),
        "seed": cfg.seed,
        "total_seconds": round(time.perf_counter() - started, 2),
    }
    if progress.budget is not None:
        report["time_budget"] = {**progress.budget, "done_steps": progress.step}
    if progress.skipped_batches:
        report["skipped_batches"] = progress.skipped_batches
    write_report(out / "report.json", report)
    run.log(
        f"pretraining done in {report['total_seconds']:.1f}s: {progress.step} steps, final loss "
        f"{report['final_loss']:.4f}; backbone in {out / BACKBONE_FILE}"
    )
    return report
