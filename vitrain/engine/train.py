"""``vitrain train``: data -> model -> the training loop -> checkpoints, curves and a report.

:func:`train` is the whole loop in one function. What it builds on lives beside it:
``build`` (the model and the loaders), ``rundir`` (the run folder), ``budget`` (the
time-budget planner), ``runtime`` (the device and precision policy) and ``final`` (the
final report).
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torchvision.transforms import v2
from tqdm import tqdm

from ..checkpoint import (
    CheckpointError,
    CheckpointWriter,
    load_state,
    load_weights,
)
from ..config import ConfigError, TrainConfig
from ..data.leakage import content_hashes, find_leaks, without
from ..data.sources import DataError, DataSplits, load_data, split_digest
from ..models.pretrained import PretrainedError, load_pretrained
from ..report import metrics_csv_bytes, write_report
from . import distributed
from .budget import plan_budget, recent_speed, replan_budget
from .build import (
    build_loaders,
    build_model,
    resolve_config_for_data,
)
from .device import resolve_device
from .distributed import Dist
from .evaluate import evaluate, is_imbalanced
from .final import final_report, log_epoch_scalars
from .finetune import train_mode
from .optim import build_optimizer, build_scheduler, replan
from .rundir import (
    STATE_FILE,
    agree_on_run_dir,
    check_run_dir,
    remove_interrupted_writes,
    start_run_dir,
)
from .runtime import (
    autocast_dtype,
    checks_each_step,
    use_compile,
    use_cuda_graphs,
    writes_behind,
)


class TrainingError(RuntimeError):
    """Training cannot go on (for example the loss became NaN); the message says where."""


# ------------------------------------------------------------------------------ setup


def check_global_batch(cfg: TrainConfig, n_train: int, place: Dist, log=print) -> None:
    """Under torchrun incomplete global batches are dropped, so the training split must fill one.

    Warns when the dropped remainder is a tenth of the split or more (other images each epoch,
    as the order is reshuffled), naming the largest smaller ``--batch-size`` that leaves less than a tenth out.
    """
    if not place.active:
        return
    step = cfg.batch_size * place.world
    if n_train < step:
        raise ConfigError(
            f"--batch-size {cfg.batch_size} x {place.world} processes = {step} "
            f"images per step, more than the {n_train} training images of --data {cfg.data}, and "
            "under torchrun incomplete global batches are dropped: lower --batch-size"
        )

    def left_out(batch_size: int) -> int:
        return n_train % (batch_size * place.world)

    dropped = left_out(cfg.batch_size)
    if dropped * 10 >= n_train:
        fit = next((b for b in range(cfg.batch_size - 1, 0, -1) if left_out(b) * 10 < n_train), None)
        hint = f"; --batch-size {fit} would leave {left_out(fit)} out" if fit else ""
        log(
            f"warning: --batch-size {cfg.batch_size} x {place.world} processes = {step} images per step leaves "
            f"{dropped} of the {n_train} training images out of each epoch ({dropped / n_train:.0%}; "
            f"incomplete global batches are dropped under torchrun){hint}"
        )


def quiet(*args: Any, **kwargs: Any) -> None:
    """The log of ranks other than 0."""


def _epoch_seed(seed: int, epoch: int) -> int:
    # every epoch's randomness (shuffling, augmentation, dropout) depends only on (seed, epoch),
    # so a run resumed after epoch k repeats epochs k+1... exactly
    return (seed * 1_000_003 + epoch * 7_919) % (2**63)


# ------------------------------------------------------------------------------ the loop


def check_leaks(splits: DataSplits, dedupe: bool, log=print) -> dict[str, Any]:
    """Warn about evaluation images identical to training images; with ``dedupe``, drop them."""
    train_hashes = set(content_hashes(splits.train))
    found: dict[str, Any] = {"dedupe": dedupe}
    for name in ("val", "test"):
        dataset = getattr(splits, name)
        if dataset is None:
            continue
        leak = find_leaks(splits.train, dataset, name, train_hashes)
        found[name] = leak.to_dict()
        if leak.leaked:
            action = "removed from it (--dedupe)" if dedupe else "kept (use --dedupe to remove them)"
            log(f"warning: {len(leak.leaked)} of {leak.total} {name} images are identical to training images; {action}")
            if dedupe:
                found[name]["removed"] = len(leak.leaked)
                kept = without(dataset, leak.leaked)
                if len(kept) == 0 and name == "val":
                    raise DataError(
                        f"--dedupe: all {leak.total} validation images are identical to training "
                        "images, so no validation split is left (raise --val-fraction, or train "
                        "without --dedupe)"
                    )
                if len(kept) == 0:  # the final evaluation falls back to the validation split
                    kept = None
                    splits.notes.append(
                        f"all {leak.total} test images are identical to training images and "
                        "--dedupe removed them: the final evaluation uses the validation split"
                    )
                setattr(splits, name, kept)
    return found


def class_weights(cfg: TrainConfig, splits: DataSplits, device: torch.device) -> torch.Tensor | None:
    """The loss weight of each class for ``--class-weights balanced`` (scikit-learn's "balanced":
    training images / (classes x the class's images)), else None."""
    if cfg.class_weights != "balanced":
        return None
    from sklearn.utils.class_weight import compute_class_weight

    targets = np.asarray(splits.train.targets)
    weights = compute_class_weight("balanced", classes=np.arange(len(cfg.classes)), y=targets)
    return torch.tensor(weights, dtype=torch.float32, device=device)


def imbalance_note(splits: DataSplits, classes: list[str]) -> str | None:
    """A note when the training split's classes are imbalanced (:func:`~.evaluate.is_imbalanced`):
    accuracy then rewards answering the large classes."""
    counts = np.bincount(np.asarray(splits.train.targets), minlength=len(classes))
    big, small = int(counts.argmax()), int(counts.argmin())
    if not is_imbalanced(counts):
        return None
    return (
        f"imbalanced classes: {classes[big]} has {counts[big]} training images, {classes[small]} "
        f"{counts[small]}; accuracy favours the large classes, so the balanced accuracy (the mean "
        "per-class recall) is reported too; --class-weights balanced and --best-metric balanced-accuracy "
        "are meant for such data"
    )


def build_batch_mix(cfg: TrainConfig, num_classes: int) -> v2.Transform | None:
    """MixUp and/or CutMix (torchvision v2) on whole batches; soft targets come out."""
    mixes = []
    if cfg.mixup > 0:
        mixes.append(v2.MixUp(alpha=cfg.mixup, num_classes=num_classes))
    if cfg.cutmix > 0:
        mixes.append(v2.CutMix(alpha=cfg.cutmix, num_classes=num_classes))
    if not mixes:
        return None
    return mixes[0] if len(mixes) == 1 else v2.RandomChoice(mixes)


def train(
    cfg: TrainConfig, resume: bool = False, log=print, on_start: Callable[[], None] | None = None
) -> dict[str, Any]:
    """Train a ViT as ``cfg`` says and return the report (also written to ``report.json``).

    With ``resume``, ``cfg`` must be the run's saved config; training continues after the
    last completed epoch and ends with the same weights as an uninterrupted run (on CPU).
    ``on_start`` runs once the data has loaded, before anything is written (a chained
    run's own folder setup).
    """
    started = time.perf_counter()
    cfg.validate()
    device = resolve_device(cfg.device)
    place = distributed.setup(device)  # one process unless started by torchrun
    device = distributed.device_for(place, device)
    if not place.main:
        log = quiet  # rank 0 speaks and writes for all
    cfg = agree_on_run_dir(cfg, place)
    out = check_run_dir(cfg, resume)
    splits = load_data(
        cfg.data,
        data_root=cfg.data_root,
        download=cfg.download,
        channels=cfg.channels,
        classes=cfg.classes,
        val_fraction=cfg.val_fraction,
        test_fraction=cfg.test_fraction,
        split_seed=cfg.split_seed,
        skip_bad_images=cfg.skip_bad_images,
    )
    leakage = check_leaks(splits, cfg.dedupe, log)
    pretrained = None
    if cfg.pretrained and not resume:  # a resumed run's weights are in its state
        try:
            pretrained = load_pretrained(cfg.pretrained, cfg.num_heads)
        except PretrainedError as err:
            raise ConfigError(str(err)) from None
        for note in pretrained.notes:
            log(f"note: {note}")
    cfg = resolve_config_for_data(cfg, splits, pretrained)
    cfg = dataclasses.replace(cfg, out=str(out))
    check_global_batch(cfg, len(splits.train), place, log)
    if place.main:
        remove_interrupted_writes(out, log)
    if not resume and place.main:
        if on_start is not None:
            on_start()
        start_run_dir(out)
        cfg.save(
            out / "config.yaml", {"data_summary": {"splits": splits.sizes(), "notes": splits.notes, "leakage": leakage}}
        )
    distributed.barrier(place)

    model = build_model(cfg, pretrained).to(device)
    loaders = build_loaders(cfg, splits, device, log, place)
    steps_per_epoch = len(loaders["train"])
    amp_dtype = autocast_dtype(device)
    num_classes = len(cfg.classes)
    state = load_state(out / STATE_FILE) if resume else None
    digest = split_digest(splits)
    budget = None
    if state is not None:
        budget = state.get("budget")
    elif cfg.time_budget:
        budget = plan_budget(
            cfg, model, loaders, device, amp_dtype, cfg.time_budget * 60 - (time.perf_counter() - started), log
        )
        budget = distributed.broadcast(budget, place)  # every rank follows rank 0's plan
    total_steps = budget["planned_steps"] if budget else cfg.epochs * steps_per_epoch
    # a budgeted run stops at its plan or, should the machine slow down, at the deadline, which leaves
    # time for the interrupted epoch's validation and checkpoints and the final evaluation
    budget_end = (
        started + cfg.time_budget * 60 - budget["reserved_final_seconds"] if budget and not resume else math.inf
    )
    train_end = budget_end - (budget.get("margin_seconds", 0.0) if budget else 0.0)  # when the plan should be done
    deadline = budget_end - (budget["seconds_per_epoch_overhead"] if budget else 0.0)
    if budget:
        budget.setdefault("first_plan", budget["planned_steps"])
    n_epochs = math.ceil(total_steps / steps_per_epoch)
    optimizer = build_optimizer(model, cfg, device)
    scheduler = build_scheduler(optimizer, cfg, steps_per_epoch, total_steps)
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema), use_buffers=True) if cfg.ema else None
    eval_model = ema.module if ema is not None else model  # what is validated and checkpointed
    batch_mix = build_batch_mix(cfg, num_classes)
    higher_is_better = cfg.best_metric != "loss"
    loss_weight = class_weights(cfg, splits, device)
    history: list[dict[str, Any]] = []
    best = {
        "epoch": 0,
        "value": -math.inf if higher_is_better else math.inf,
        "val_accuracy": 0.0,
        "val_balanced_accuracy": 0.0,
        "val_loss": math.inf,
    }
    skipped_batches: list[dict[str, Any]] = []  # batches with a non-finite loss or gradient (--skip-nonfinite)
    check_each_step = checks_each_step(device, cfg.skip_nonfinite)
    start_epoch, train_seconds, global_step, save_seconds = 1, 0.0, 0, 0.0
    speed: list[tuple[int, float, float]] = []  # (steps, seconds, overhead seconds) of each epoch, for re-planning
    if state is not None:
        if state["classes"] != cfg.classes:
            raise CheckpointError(f"--resume {out}: the data's classes changed since the run started")
        if state.get("split_digest", digest) != digest:  # runs saved before the digest existed are not checked
            parts = list(splits.sizes())
            then = "/".join(str(state["split_sizes"].get(k, 0)) for k in parts)
            now = "/".join(str(splits.sizes()[k]) for k in parts)
            raise CheckpointError(
                f"--resume {out}: the images of --data {cfg.data} changed since the run started ("
                + (
                    f"{'/'.join(parts)} images: {then} then, {now} now"
                    if then != now
                    else f"as many images, {now}, but other files or labels"
                )
                + "): the splits would differ, and images the run trained on could land in its test split; "
                "restore the data as it was, or start again with --overwrite"
            )
        load_weights(model, state["model"], str(out / STATE_FILE))
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        history, best, train_seconds = state["history"], state["best"], state["train_seconds"]
        skipped_batches = state.get("skipped_batches", [])
        start_epoch, global_step = state["epoch"] + 1, state["step"]
        saved_steps = state.get("steps_per_epoch", steps_per_epoch)
        if saved_steps != steps_per_epoch:  # resumed with another number of processes: same epochs, new steps
            global_step = state["epoch"] * steps_per_epoch
            total_steps = round(total_steps * steps_per_epoch / saved_steps) if budget else total_steps
            n_epochs = math.ceil(total_steps / steps_per_epoch)
            scheduler.last_epoch = global_step
            replan(scheduler, total_steps)
            log(
                f"resuming with {steps_per_epoch} steps per epoch instead of {saved_steps} "
                f"({place.world} process(es)): the schedule continues from epoch {state['epoch']}"
            )

    n_params = sum(p.numel() for p in model.parameters())
    log(
        f"data: {cfg.data}  {len(cfg.classes)} classes, {splits.channels} channel(s), "
        + ", ".join(f"{k} {v}" for k, v in splits.sizes().items())
    )
    for note in splits.notes:
        log(f"  note: {note}")
    imbalanced = imbalance_note(splits, cfg.classes)
    if imbalanced:
        log(f"  note: {imbalanced}")
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log(
        f"model: {cfg.model}  {n_params / 1e6:.2f}M parameters, {cfg.img_size}px input, patch {cfg.patch_size}, "
        f"dim {cfg.embed_dim}, depth {cfg.depth}, heads {cfg.num_heads}"
        + (f"; from {cfg.pretrained}" if cfg.pretrained else "")
        + (f"; {n_train:,} trainable (--freeze {cfg.freeze})" if n_train < n_params else "")
    )
    batch_text = (
        f"batch {cfg.batch_size} per process x {place.world} = {cfg.batch_size * place.world}"
        if place.active
        else f"batch {cfg.batch_size}"
    )
    log(
        f"training: {total_steps} steps ({n_epochs} epochs x {steps_per_epoch}), {batch_text}, "
        f"{cfg.optimizer} lr {cfg.lr:g}, {cfg.schedule} schedule, on {device}"
        + (" (bf16 autocast)" if amp_dtype else "")
        + (", torch.compile" if use_compile(cfg.compile, device) else "")
        + (" with CUDA graphs" if use_cuda_graphs(cfg.compile, device, place) else "")
        + (f", EMA {cfg.ema:g}" if ema is not None else "")
    )
    if resume:
        log(f"resuming {out} after epoch {start_epoch - 1}")
    log(f"writing to {out}")

    from torch.utils.tensorboard import SummaryWriter  # imported late: it is slow to import

    writer = SummaryWriter(str(out / "tensorboard"), purge_step=start_epoch if resume else None) if place.main else None
    train_loader = loaders["train"]
    # DistributedDataParallel averages gradients over the ranks during backward
    step_model = (
        torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        if place.active
        else model
    )
    graphs = use_cuda_graphs(cfg.compile, device, place)
    if use_compile(cfg.compile, device):
        # only the training forward/backward is compiled; checkpoints hold the plain model's weights
        step_model = torch.compile(step_model, mode="reduce-overhead" if graphs else None)
    stopped_by = "plan"
    files = CheckpointWriter(background=writes_behind(device), log=log)  # rank 0's checkpoints
    try:
        epoch = start_epoch - 1
        while epoch < n_epochs:
            epoch += 1
            epoch_start = time.perf_counter()
            torch.manual_seed(_epoch_seed(cfg.seed, epoch) + place.rank)  # dropout, MixUp: per rank
            train_loader.generator.manual_seed(_epoch_seed(cfg.seed, epoch))  # the data order: shared
            train_mode(model)
            loss_sum = torch.zeros((), device=device)
            correct = torch.zeros((), dtype=torch.long, device=device)
            grad_norm_sum = torch.zeros((), device=device)
            finite_flags = torch.ones(len(train_loader), dtype=torch.bool, device=device)
            seen = steps = applied = 0
            bar = tqdm(
                train_loader,
                desc=f"epoch {epoch}/{n_epochs}",
                leave=False,
                disable=not cfg.progress,
                dynamic_ncols=True,
                total=min(steps_per_epoch, total_steps - global_step),
            )
            for images, labels in bar:
                if graphs:  # the previous step's graph outputs are no longer used
                    torch.compiler.cudagraph_mark_step_begin()
                images = images.to(device, non_blocking=True)
                labels = labels.to(device, non_blocking=True)
                targets = labels
                if batch_mix is not None:
                    images, targets = batch_mix(images, labels)
                with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                    logits = step_model(images)
                    loss = F.cross_entropy(logits, targets, weight=loss_weight, label_smoothing=cfg.label_smoothing)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                # the norm of the whole gradient (after DDP's all-reduce: the same on every rank),
                # clipped when --clip-grad asks; a NaN/Inf anywhere in the loss or gradient shows in it
                grad_norm = torch.nn.utils.clip_grad_norm_(
                    model.parameters(), cfg.clip_grad if cfg.clip_grad > 0 else math.inf
                )
                steps += 1
                global_step += 1
                if check_each_step and not bool(torch.isfinite(grad_norm)):
                    record_nonfinite(
                        skipped_batches, cfg.skip_nonfinite, epoch, global_step, steps, float(loss.detach()), out, log
                    )
                    optimizer.zero_grad(set_to_none=True)  # the batch is skipped: no update
                    scheduler.step()
                else:
                    if not check_each_step:  # on a GPU the flag stays there until the epoch ends
                        finite_flags[steps - 1] = torch.isfinite(grad_norm)
                    optimizer.step()
                    scheduler.step()
                    if ema is not None:
                        ema.update_parameters(model)
                    # accumulate on the device: no host synchronization inside the step
                    grad_norm_sum += grad_norm.detach()
                    applied += 1
                    loss_sum += loss.detach().float() * labels.shape[0]
                    correct += (logits.detach().argmax(1) == labels).sum()
                    seen += labels.shape[0]
                if cfg.progress and steps % 10 == 0:
                    bar.set_postfix(loss=f"{float(loss_sum) / max(seen, 1):.4f}")
                if global_step >= total_steps:
                    break
                if math.isfinite(deadline) and distributed.any_rank(time.perf_counter() > deadline, place, device):
                    stopped_by = "deadline"
                    break
            bar.close()
            train_time = time.perf_counter() - epoch_start
            if place.active:  # the whole global batch's loss, accuracy and count
                counts = distributed.all_sum(
                    torch.stack(
                        [loss_sum.double(), correct.double(), torch.tensor(float(seen), device=device).double()]
                    ),
                    place,
                )
                loss_sum, correct, seen = counts[0], counts[1], int(counts[2])
            if not check_each_step and not bool(finite_flags[:steps].all()):
                first = int((~finite_flags[:steps]).nonzero()[0])
                record_nonfinite(
                    skipped_batches, 0, epoch, global_step - steps + first + 1, first + 1, float("nan"), out, log
                )
            train_loss = float(loss_sum) / max(seen, 1)
            val = evaluate(eval_model, loaders["val"], device, num_classes, amp_dtype, place)
            epoch_seconds = time.perf_counter() - epoch_start
            train_seconds += epoch_seconds
            row = {
                "epoch": epoch,
                "train_loss": train_loss,
                "train_accuracy": float(correct) / max(seen, 1),
                "val_loss": val.loss,
                "val_accuracy": val.accuracy,
                "val_balanced_accuracy": val.balanced_accuracy,
                "lr": optimizer.param_groups[0]["lr"],
                "epoch_seconds": epoch_seconds,
                "images_per_second": seen / train_time,
            }
            history.append(row)
            if (
                stopped_by != "deadline"
                and global_step < total_steps
                and math.isfinite(train_end)
                and not (epoch == start_epoch and use_compile(cfg.compile, device))
            ):
                # validation just ran; the checkpoints cost what they cost last epoch. The first epoch a
                # compiled run makes in this process also compiles (20 s and more on a GPU): re-planning
                # from it would shrink the plan to a few steps, so the probe's plan stands until epoch 2
                speed.append((steps, train_time, time.perf_counter() - epoch_start - train_time + save_seconds))
                step_seconds, overhead = recent_speed(speed)
                new_total = replan_budget(
                    budget,
                    global_step,
                    train_end - time.perf_counter() - save_seconds,
                    step_seconds,
                    overhead,
                    steps_per_epoch,
                    epoch,
                )
                budget, new_total = distributed.broadcast((budget, new_total), place)  # rank 0's clock decides
                if new_total is not None:
                    log(
                        f"time budget: re-planned to {new_total} steps (was {total_steps}) from the "
                        f"{1 / step_seconds:.1f} steps/s measured up to epoch {epoch}"
                    )
                    total_steps, n_epochs = new_total, max(epoch, math.ceil(new_total / steps_per_epoch))
                    replan(scheduler, total_steps)
            save_start = time.perf_counter()
            value = {"accuracy": val.accuracy, "balanced-accuracy": val.balanced_accuracy, "loss": val.loss}[
                cfg.best_metric
            ]
            improved = value > best["value"] if higher_is_better else value < best["value"]
            if improved:
                best = {
                    "epoch": epoch,
                    "value": value,
                    "val_accuracy": val.accuracy,
                    "val_balanced_accuracy": val.balanced_accuracy,
                    "val_loss": val.loss,
                }
            if place.main:
                if improved:
                    files.save_model(out / "best.safetensors", eval_model, epoch=epoch)
                files.save_model(out / "last.safetensors", eval_model, epoch=epoch)
                # the state file is the commit point of an epoch: resume starts after the last one written
                files.save_state(
                    out / STATE_FILE,
                    {
                        "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "epoch": epoch,
                        "step": global_step,
                        "steps_per_epoch": steps_per_epoch,
                        "best": best,
                        "history": history,
                        "train_seconds": train_seconds,
                        "classes": list(cfg.classes),
                        "skipped_batches": skipped_batches,
                        "split_digest": digest,
                        "split_sizes": splits.sizes(),
                        "budget": budget,
                        **({"ema": ema.state_dict()} if ema is not None else {}),
                    },
                )
                files.write_bytes(out / "metrics.csv", metrics_csv_bytes(history))
                log_epoch_scalars(writer, row, epoch, eval_model, grad_norm_sum / max(applied, 1))
            save_seconds = time.perf_counter() - save_start
            log(
                f"epoch {epoch:>3}/{n_epochs}  train loss {train_loss:.4f} acc {row['train_accuracy']:.4f}  "
                f"val loss {val.loss:.4f} acc {val.accuracy:.4f}  lr {row['lr']:.2e}  "
                f"{row['images_per_second']:.0f} img/s  {epoch_seconds:.1f}s" + ("  *" if improved else "")
            )
            if stopped_by == "deadline":
                log(f"time budget reached after {global_step} of {total_steps} planned steps")
                break
        files.close()  # every checkpoint is on disk (a failed write is raised here)
    except BaseException:  # what the with-statement does, beside the TensorBoard writer's finally
        files.close_after_error()
        raise
    finally:
        if writer is not None:
            writer.close()

    distributed.barrier(place)  # best.safetensors is written
    report = final_report(cfg, splits, loaders, device, out, history, best, train_seconds, amp_dtype, log, place)
    if not place.main:
        return report
    report["leakage"] = leakage
    if skipped_batches:
        report["skipped_batches"] = skipped_batches
    if splits.skipped:
        report["skipped_images"] = {"count": len(splits.skipped), "files": splits.skipped}
    if budget:
        report["time_budget"] = {**budget, "done_steps": global_step, "stopped_by": stopped_by}
    report["total_seconds"] = round(time.perf_counter() - started, 2)
    write_report(out / "report.json", report)
    score = (
        "test accuracy"
        if report["test"]["split"] == "test"
        else "accuracy on the validation split (no test split; it also chose the best epoch)"
    )
    score += f" {report['test']['accuracy']:.4f}"
    if imbalanced:
        score += f", balanced accuracy {report['test']['balanced_accuracy']:.4f}"
    log(
        f"done in {report['total_seconds']:.1f}s: {score} (best epoch {best['epoch']}, "
        f"val accuracy {best['val_accuracy']:.4f}); report in {out / 'report.json'}"
    )
    return report


def record_nonfinite(
    skipped: list[dict[str, Any]],
    allowed: int,
    epoch: int,
    step: int,
    epoch_step: int,
    loss: float,
    out: Path,
    log,
    checkpoint: str = "last.safetensors",
) -> None:
    """A batch gave a NaN/Inf loss or gradient: record it, and stop once more than ``allowed`` have."""
    where = f"epoch {epoch}, step {epoch_step} of the epoch (global step {step})"
    what = (
        f"the loss was {loss:g}"
        if not math.isfinite(loss)
        else f"the loss was {loss:.4g} but the gradient was not finite"
    )
    if len(skipped) >= allowed:
        raise TrainingError(
            f"a non-finite loss or gradient at {where}: {what}; the last good checkpoint is "
            f"{out / checkpoint} (lower --lr, set --clip-grad, or skip up to N such "
            "batches with --skip-nonfinite N)"
        )
    skipped.append({"epoch": epoch, "step": step, "loss": loss if math.isfinite(loss) else str(loss)})
    log(f"skipped a batch at {where}: {what} ({len(skipped)} of --skip-nonfinite {allowed})")
