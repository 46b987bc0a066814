"""``vitrain train``: data -> model -> the training loop -> checkpoints, curves and a report.

:func:`train` is the whole loop in one function: set up; for each epoch train one epoch
(:func:`~vitrain.engine.epoch.train_one_epoch`), validate, re-plan, save; the final
report. What it builds on lives beside it, one job per module: ``setup`` (options, data,
the run folder), ``backend`` and ``torch_backend`` (the framework's side: model,
optimizer, step), ``budget`` (the time-budget planner), ``state`` (what an epoch commits),
``runtime`` (the device and precision policy) and ``final`` (the final report).
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable

from ..checkpoint import CheckpointWriter
from ..config import TrainConfig
from ..data.sources import split_digest
from ..report import metrics_csv_bytes
from . import distributed
from .backend import Backend
from .budget import BudgetClock, plan_budget
from .build import STEM_IMAGES, build_loaders
from .epoch import EpochStats, TrainingError, train_one_epoch
from .final import final_report, finish_report, log_epoch_scalars
from .midepoch import MidEpochSaves, check_partial, resume_epoch
from .runtime import writes_behind
from .setup import RunSetup, imbalance_note, prepare_run
from .state import (
    STATE_FILE,
    Progress,
    check_same_data,
    data_fingerprint,
    new_best,
    read_state,
    save_state,
    update_best,
)
from .torch_backend import TorchBackend, epoch_seed

__all__ = ["TrainingError", "train"]


def train(
    cfg: TrainConfig,
    resume: bool = False,
    log=print,
    on_start: Callable[[], None] | None = None,
    user_settings: frozenset[str] | None = None,
    invocation: str | None = None,
) -> dict[str, Any]:
    """Train a ViT as ``cfg`` says and return the report (also written to ``report.json``).

    With ``resume``, ``cfg`` must be the run's saved config; training continues after the
    last completed epoch and ends with the same weights as an uninterrupted run (on CPU).
    ``on_start`` runs once the data has loaded, before anything is written (a chained
    run's own folder setup). ``invocation`` (the command that ran) is reported as ``command``.
    """
    started = time.perf_counter()
    run = prepare_run(cfg, resume, log, on_start, user_settings=user_settings)
    cfg, out, place, device, log = run.cfg, run.out, run.place, run.device, run.log
    backend = make_backend(run)
    loaders = build_loaders(cfg, run.splits, device, log, place, run.devices)
    steps_per_epoch = len(loaders["train"])
    state = read_state(out) if resume else None
    progress = Progress.from_state(state) if state else Progress(best=new_best(cfg.best_metric != "loss"))
    if state is None and cfg.time_budget:
        seconds_left = cfg.time_budget * 60 - (time.perf_counter() - started)
        plan = plan_budget(cfg, backend, loaders, seconds_left, log)
        progress.budget = distributed.broadcast(plan, place)  # every rank follows rank 0's plan
    # a budgeted run stops at its plan or, should the machine slow down, at the deadline, which leaves
    # time for the interrupted epoch's validation and checkpoints and the final evaluation
    clock = BudgetClock(progress.budget, started, resumed=resume)
    total_steps = progress.budget["planned_steps"] if progress.budget else cfg.epochs * steps_per_epoch
    backend.start(total_steps, steps_per_epoch)
    digest = split_digest(run.splits)
    partial = state.get("partial") if state is not None else None  # an epoch saved inside
    if state is not None:
        total_steps = continue_run(state, backend, progress, run, digest, steps_per_epoch, total_steps)
    n_epochs = math.ceil(total_steps / steps_per_epoch)
    imbalanced = describe_run(run, backend, total_steps, steps_per_epoch, resume, progress.epoch, partial)

    from torch.utils.tensorboard import SummaryWriter  # imported late: it is slow to import

    purge = progress.epoch + 1 if resume else None
    writer = SummaryWriter(str(out / "tensorboard"), purge_step=purge) if place.main else None
    files = CheckpointWriter(background=writes_behind(device), log=log)  # rank 0's checkpoints
    fingerprint = data_fingerprint(run.splits, cfg.classes, digest)

    def commit(inside: dict[str, Any] | None = None) -> None:  # the state file: the commit point of a run
        entries = {**backend.state_dict(), "steps_per_epoch": steps_per_epoch, **fingerprint}
        save_state(files, out, progress, **entries, **({"partial": inside} if inside else {}))

    saves = MidEpochSaves(cfg.save_every, place, device, backend, commit, log) if backend.saves_inside else None
    first_epoch, save_seconds, stats = progress.epoch + 1, 0.0, None
    try:
        while progress.epoch < n_epochs:  # n_epochs changes when the time budget re-plans
            epoch = progress.epoch + 1
            epoch_start = time.perf_counter()
            loaders["train"].generator.manual_seed(epoch_seed(cfg.seed, epoch))  # the data order: shared
            backend.start_epoch(epoch)  # dropout, MixUp: per rank
            resumed = resume_epoch(partial, loaders["train"], backend, place, device) if partial else None
            partial = None
            steps = min(steps_per_epoch - (resumed[0] if resumed else 0), total_steps - progress.step)
            stats = train_one_epoch(
                backend,
                loaders["train"],
                epoch,
                steps,
                progress,
                clock,
                place,
                device,
                skip_nonfinite=cfg.skip_nonfinite,
                out=out,
                bar=cfg.progress,
                label=f"epoch {epoch}/{n_epochs}",
                log=log,
                saves=saves,
                resumed=resumed,
            )
            with distributed.waiting_in(f"the validation of epoch {epoch}", place):
                val = backend.evaluate(loaders["val"])
            row = epoch_row(epoch, stats, val, backend.lr(), time.perf_counter() - epoch_start)
            progress.history.append(row)
            progress.train_seconds += row["epoch_seconds"]
            # validation just ran; the checkpoints cost what they cost last epoch. The first epoch a compiled
            # run makes in this process also compiles: re-planning from it would shrink the plan to a few steps
            if clock.running and not stats.deadline and progress.step < total_steps:
                if not (epoch == first_epoch and backend.compiled):
                    overhead = time.perf_counter() - epoch_start - stats.seconds + save_seconds
                    new_total = clock.replan(
                        progress.step, epoch, stats.steps, stats.seconds, overhead, steps_per_epoch, save_seconds
                    )
                    progress.budget, new_total = distributed.broadcast((progress.budget, new_total), place)
                    clock.budget = progress.budget  # rank 0's clock decides
                    if new_total is not None:
                        log(
                            f"time budget: re-planned to {new_total} steps (was {total_steps}) from the "
                            f"{1 / clock.step_seconds:.1f} steps/s measured up to epoch {epoch}"
                        )
                        total_steps, n_epochs = new_total, max(epoch, math.ceil(new_total / steps_per_epoch))
                        backend.replan(total_steps)
            save_start = time.perf_counter()
            improved = update_best(progress, cfg.best_metric, val, epoch)
            progress.epoch = epoch
            if place.main:
                if improved:
                    backend.save_weights(files, out / "best.safetensors", epoch)
                backend.save_weights(files, out / "last.safetensors", epoch)
                commit()  # resume starts after the last epoch committed
                files.write_bytes(out / "metrics.csv", metrics_csv_bytes(progress.history))
                log_epoch_scalars(writer, row, epoch, {**backend.epoch_scalars(), "grad_norm": stats.grad_norm})
            save_seconds = time.perf_counter() - save_start
            log(
                f"epoch {epoch:>3}/{n_epochs}  train loss {row['train_loss']:.4f} acc {row['train_accuracy']:.4f}  "
                f"val loss {val.loss:.4f} acc {val.accuracy:.4f}  lr {row['lr']:.2e}  "
                f"{row['images_per_second']:.0f} img/s  {row['epoch_seconds']:.1f}s" + ("  *" if improved else "")
            )
            if stats.deadline:
                log(f"time budget reached after {progress.step} of {total_steps} planned steps")
                break
        files.close()  # every checkpoint is on disk (a failed write is raised here)
    except BaseException:  # what the with-statement does, beside the TensorBoard writer's finally
        files.close_after_error()
        raise
    finally:
        if writer is not None:
            writer.close()

    with distributed.waiting_in("the final evaluation (after rank 0's last checkpoints)", place):
        distributed.barrier(place)  # best.safetensors is written
        report = final_report(
            cfg,
            run.splits,
            loaders,
            device,
            out,
            progress.history,
            progress.best,
            progress.train_seconds,
            backend.amp_dtype,
            log,
            place,
            run.devices,
            {**runtime_report(run, backend), **({"command": invocation} if invocation else {})},
        )
    if not place.main:
        return report
    stopped_by = "deadline" if stats is not None and stats.deadline else "plan"
    return finish_report(report, progress, run.splits, run.leakage, stopped_by, started, bool(imbalanced), out, log)


def runtime_report(run: RunSetup, backend: Backend) -> dict[str, Any]:
    """What report.json says about how the run was chosen and ran: recipe (auto), precision, compile."""
    found: dict[str, Any] = {"precision": backend.precision.to_dict()}
    if backend.compiling is not None:
        found["compile"] = backend.compiling.to_dict()
    if run.recipe_choice is not None:
        found["recipe"] = run.recipe_choice.to_dict()
    return found


def make_backend(run: RunSetup) -> Backend:
    """The backend ``--backend`` names, built for the run."""
    kind = TorchBackend
    if run.cfg.backend == "jax":
        from .jax_backend import JaxBackend as kind
    return kind(run.cfg, run.splits, run.device, run.place, run.pretrained)


def epoch_row(epoch: int, stats: EpochStats, val: Any, lr: float, seconds: float) -> dict[str, Any]:
    """An epoch's line of ``metrics.csv``."""
    return {
        "epoch": epoch,
        "train_loss": stats.loss,
        "train_accuracy": stats.accuracy,
        "val_loss": val.loss,
        "val_accuracy": val.accuracy,
        "val_balanced_accuracy": val.balanced_accuracy,
        "lr": lr,
        "epoch_seconds": seconds,
        "images_per_second": stats.images / stats.seconds,
    }


def continue_run(
    state: dict[str, Any],
    backend: Backend,
    progress: Progress,
    run: RunSetup,
    digest: str,
    steps_per_epoch: int,
    total_steps: int,
) -> int:
    """Load a resumed run's state into ``backend`` once its data is checked to be the same; returns its total steps.

    A run resumed with another number of processes has other steps per epoch: it continues
    after the same epoch, its schedule (and its time budget's plan) rescaled to the new steps.
    """
    out = run.out
    check_same_data(state, out, run.cfg.data, run.cfg.classes, run.splits, digest)
    check_partial(state.get("partial"), run.place, out)
    backend.load_state_dict(state, str(out / STATE_FILE))
    saved_steps = state.get("steps_per_epoch", steps_per_epoch)
    if saved_steps != steps_per_epoch:
        progress.step = state["epoch"] * steps_per_epoch
        total_steps = round(total_steps * steps_per_epoch / saved_steps) if progress.budget else total_steps
        backend.replan(total_steps, step=progress.step)
        run.log(
            f"resuming with {steps_per_epoch} steps per epoch instead of {saved_steps} "
            f"({run.place.world} process(es)): the schedule continues from epoch {state['epoch']}"
        )
    return total_steps


def stem_note(model: Any) -> str:
    """The model line's note on a conv stem's widths, e.g. ``" (conv stem, 32/64/128 channels)"``; else ""."""
    config = getattr(model, "config", None)  # the bare model (DistributedDataParallel wraps only the step model)
    if getattr(config, "stem", None) != "conv":
        return ""
    return f" (conv stem, {'/'.join(str(c) for c in config.stem_channels())} channels)"


def describe_run(
    run: RunSetup,
    backend: Backend,
    total_steps: int,
    steps_per_epoch: int,
    resume: bool,
    done_epochs: int,
    partial: dict[str, Any] | None = None,
) -> str | None:
    """Log the data, the model and the plan before the first step; returns the imbalance note, if any."""
    cfg, splits, place, log = run.cfg, run.splits, run.place, run.log
    log(
        f"data: {cfg.data}  {len(cfg.classes)} classes, {splits.channels} channel(s), "
        + ", ".join(f"{k} {v}" for k, v in splits.sizes().items())
    )
    for note in splits.notes:
        log(f"  note: {note}")
    imbalanced = imbalance_note(splits, cfg.classes)
    if imbalanced:
        log(f"  note: {imbalanced}")
    params = list(backend.model.parameters())
    n_params = sum(p.numel() for p in params)
    n_train = sum(p.numel() for p in params if p.requires_grad)
    log(
        f"model: {cfg.model}  {n_params / 1e6:.2f}M parameters, {cfg.img_size}px input, patch {cfg.patch_size}"
        + stem_note(backend.model)
        + f", dim {cfg.embed_dim}, depth {cfg.depth}, heads {cfg.num_heads}"
        + (f"; from {cfg.pretrained}" if cfg.pretrained else "")
        + (
            f"; first convolution from the patches of {min(STEM_IMAGES, len(splits.train))} training images (pca)"
            if cfg.stem_init == "pca" and not resume
            else ""
        )
        + (f"; {n_train:,} trainable (--freeze {cfg.freeze})" if n_train < n_params else "")
    )
    batch = f"batch {cfg.batch_size}"
    if place.active and run.devices > 1:
        batch += f" per device x {run.devices} devices x {place.world} processes = "
        batch += str(cfg.batch_size * run.devices * place.world)
    elif place.active:
        batch += f" per process x {place.world} = {cfg.batch_size * place.world}"
    elif run.devices > 1:
        batch += f" per device x {run.devices} = {cfg.batch_size * run.devices}"
    log(
        f"training: {total_steps} steps ({math.ceil(total_steps / steps_per_epoch)} epochs x {steps_per_epoch}), "
        f"{batch}, {cfg.optimizer} lr {cfg.lr:g}, {cfg.schedule} schedule, {backend.description}"
    )
    log(f"precision: {backend.precision.describe()}")
    if backend.compiling is not None:
        log(f"compile: {'on' if backend.compiling.on else 'off'} ({backend.compiling.reason})")
    if partial:
        log(f"resuming {run.out} at step {partial['step']} of epoch {partial['epoch']}")
    elif resume:
        log(f"resuming {run.out} after epoch {done_epochs}")
    log(f"writing to {run.out}")
    return imbalanced
