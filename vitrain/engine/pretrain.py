"""``vitrain pretrain --method instance-discrimination``: pretraining a ViT on the training images alone.

Parametric instance discrimination, as used by Cao, Yu and Wu, "Training Vision
Transformers with Only 2040 Images" (ECCV 2022): every training image is its own class,
and an N-way classifier over image indices is trained with cross entropy on strongly
augmented views. Labels are never read. Here:

* the classifier is cosine (L2-normalized 128-d projections against L2-normalized class
  weights, divided by a temperature), as in parametric instance classification (Cao et
  al. 2020); N x 128 weights, so 50,000 images take 25 MB;
* each step sees ``--views`` augmented views of each image of the batch
  (:mod:`vitrain.data.strong`), all labelled with the image's index;
* MixUp/CutMix (``--mixup``/``--cutmix`` alphas) mix pairs of instances with one
  permutation and one ratio for all views; the target is ``lam`` of one instance and
  ``1 - lam`` of the other, and the loss is the cross entropy against that mixed target:
  ``-(lam * log p[a] + (1 - lam) * log p[b])`` -- not a sum of logs over all classes;
* ``--instance-smoothing E`` smooths the instance targets (label smoothing, as the paper
  does); ``--instance-init features`` starts the classifier's rows as the images'
  projections by the untrained backbone instead of random vectors (both ablations, off by
  default: neither beat the recipe end to end, docs/benchmarks/small-data.md);
* ``--infonce W`` adds W x InfoNCE between the first two views: cosine similarities over
  the temperature, each view's positive is the other view of its image and the other
  images of the batch are the negatives (an ablation; off by default);
* ``--knn-every N`` reports, every N epochs and after the last, the validation split's
  weighted 20-nearest-neighbour accuracy on the backbone's features (the training images
  are the neighbours): a view of what the backbone has learned about the classes, the
  only use of labels here. It is ``val_accuracy`` in ``metrics.csv``;
* ``--local-crops N`` (multi-crop, as in SwAV and in the paper) adds N small crops of each
  image (``--local-crop-scale``, default 5-40% of the area) at a smaller input
  (``--local-crop-size``, default half), with the position embeddings resampled to their
  grid. They are labelled with their own image and never mixed; the instance loss is the
  mean over all views (InfoNCE stays between the first two global views).

The backbone is saved as ``backbone.safetensors`` (a vitrain checkpoint whose head is not
trained); ``vitrain train --init DIR`` (or ``--pretrained DIR``) fine-tunes it. Every epoch
also writes ``state.safetensors`` (backbone, instance head, optimizer, schedule, history), so
an interrupted run continues with ``vitrain pretrain --resume DIR`` and ends as an
uninterrupted one would (on CPU). On a GPU the step autocasts to bf16 and the backbone is
compiled (``--compile``; without CUDA graphs here, since multi-crop feeds the backbone two
input sizes per step).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms.v2 import functional as TF
from tqdm import tqdm

from ..checkpoint import CheckpointError, CheckpointWriter, load_state, load_weights
from ..config import FIRST_STAGE, ConfigError, TrainConfig, load_config_file
from ..data import memory
from ..data.sources import load_data
from ..data.strong import StrongAugment
from ..models.registry import resolve_config
from ..report import metrics_csv_bytes, plot_curves, write_report
from .optim import build_optimizer, build_scheduler, replan
from .rundir import STATE_FILE  # a training run's name for it: the commit point of an epoch, and what --resume needs

BACKBONE_FILE = "backbone.safetensors"
PRETRAIN_FILES = ("config.yaml", "metrics.csv", BACKBONE_FILE, STATE_FILE, "report.json", "loss.png", "accuracy.png")


# ------------------------------------------------------------------------------ the method


class InstanceHead(nn.Module):
    """Projection MLP and a cosine classifier over ``n_instances`` images."""

    def __init__(self, dim: int, n_instances: int, proj_dim: int = 128, temperature: float = 0.2) -> None:
        super().__init__()
        self.proj = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, proj_dim))
        self.weight = nn.Parameter(torch.randn(n_instances, proj_dim) / math.sqrt(proj_dim))
        self.temperature = temperature

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        """Backbone features (B, dim) -> unit-length projections (B, proj_dim)."""
        return F.normalize(self.proj(features), dim=-1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Unit projections -> instance logits (B, n_instances): cosine similarity / temperature."""
        return z @ F.normalize(self.weight, dim=-1).T / self.temperature

    @torch.no_grad()
    def init_from_features(self, z: torch.Tensor) -> None:
        """Set each instance's weight to its image's projection (N, proj_dim): "raw-feature
        initialization" (Liu et al. 2021, the one-million-way instance classifier), so the
        classifier starts as a nearest-neighbour one over the images instead of random targets."""
        if z.shape != self.weight.shape:
            raise ValueError(f"{tuple(z.shape)} projections for a {tuple(self.weight.shape)} classifier")
        self.weight.copy_(z)


def mixed_targets(a: torch.Tensor, b: torch.Tensor, lam: float, n: int) -> torch.Tensor:
    """Dense targets ``lam * onehot(a) + (1 - lam) * onehot(b)`` (each row sums to 1)."""
    return lam * F.one_hot(a, n).float() + (1 - lam) * F.one_hot(b, n).float()


def instance_loss(
    logits: torch.Tensor, a: torch.Tensor, b: torch.Tensor | None = None, lam: float = 1.0, smoothing: float = 0.0
) -> torch.Tensor:
    """Cross entropy against instance targets, mixed when ``b`` is given.

    Equals the cross entropy against :func:`mixed_targets` without building the (B, N) matrix:
    ``mean(-(lam * log_softmax[a] + (1 - lam) * log_softmax[b]))``. With ``smoothing`` e, each
    target is ``(1 - e)`` of itself plus ``e / N`` on every instance (label smoothing, as the
    paper uses in this stage): the loss is linear in the target, so mixing and smoothing commute.
    """
    loss = F.cross_entropy(logits, a, label_smoothing=smoothing)
    if b is None or lam >= 1.0:
        return loss
    return lam * loss + (1 - lam) * F.cross_entropy(logits, b, label_smoothing=smoothing)


def info_nce(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE between two views: (B, D) unit vectors; row i of each is the same image.

    ``-log(exp(s_ii / t) / sum_j exp(s_ij / t))`` averaged over both directions, with
    ``s = z1 @ z2.T``: the other images of the batch are the negatives.
    """
    sim = z1 @ z2.T / temperature
    target = torch.arange(z1.shape[0], device=z1.device)
    return (F.cross_entropy(sim, target) + F.cross_entropy(sim.T, target)) / 2


def mix_instances(
    views: torch.Tensor, mixup: float, cutmix: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor | None, float]:
    """MixUp or CutMix between the images of a batch of views (V, B, C, H, W).

    One permutation and one ratio for all views, so the views of an image stay views of
    the same mixture. Returns (mixed views, permutation or None, lam), where lam is the
    share of each image's own instance (for CutMix, the share of pixels it keeps).
    """
    if mixup <= 0 and cutmix <= 0:
        return views, None, 1.0
    rng = np.random.default_rng(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
    use_cutmix = cutmix > 0 and (mixup <= 0 or rng.random() < 0.5)
    alpha = cutmix if use_cutmix else mixup
    lam = float(rng.beta(alpha, alpha))
    perm = torch.randperm(views.shape[1], generator=generator).to(views.device)
    other = views[:, perm]
    if not use_cutmix:
        return lam * views + (1 - lam) * other, perm, lam
    h, w = views.shape[-2:]
    cut_h, cut_w = int(h * math.sqrt(1 - lam)), int(w * math.sqrt(1 - lam))
    cy, cx = int(rng.integers(h)), int(rng.integers(w))
    y1, y2 = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, h)
    x1, x2 = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, w)
    mixed = views.clone()
    mixed[..., y1:y2, x1:x2] = other[..., y1:y2, x1:x2]
    return mixed, perm, 1 - (y2 - y1) * (x2 - x1) / (h * w)


KNN_K, KNN_TEMPERATURE = 20, 0.07


def knn_predict(
    bank: torch.Tensor,
    bank_labels: torch.Tensor,
    queries: torch.Tensor,
    num_classes: int,
    k: int = KNN_K,
    temperature: float = KNN_TEMPERATURE,
) -> torch.Tensor:
    """Weighted k-nearest-neighbour classes of ``queries`` (M, D) among ``bank`` (N, D), all unit vectors.

    Each of the ``k`` most cosine-similar bank rows votes for its label with weight
    ``exp(similarity / temperature)``, as in the kNN evaluation of self-supervised features
    (Wu et al. 2018; DINO). Returns the (M,) classes with the most votes.
    """
    top, idx = (queries @ bank.T).topk(min(k, bank.shape[0]), dim=1)
    votes = torch.zeros(queries.shape[0], num_classes, dtype=top.dtype, device=queries.device)
    return votes.scatter_add_(1, bank_labels[idx], (top / temperature).exp()).argmax(1)


@torch.no_grad()
def backbone_features(
    model: nn.Module,
    images: torch.Tensor,
    size: int,
    mean,
    std,
    batch: int = 256,
    project: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Unit-length backbone features of (N, C, S, S) uint8 images, resized to ``size`` and normalized
    (or, with ``project``, what it makes of the features: an instance head's projections, say)."""
    project = project or (lambda f: F.normalize(f, dim=-1))
    features = []
    for start in range(0, len(images), batch):
        x = images[start : start + batch].float() / 255
        if x.shape[-1] != size:
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        features.append(project(model(TF.normalize(x, mean, std), pre_logits=True)).float())
    return torch.cat(features)


class _Pretrainer(nn.Module):
    """The backbone and the instance head as one module, for the optimizer."""

    def __init__(self, backbone: nn.Module, head: InstanceHead) -> None:
        super().__init__()
        self.backbone, self.instance = backbone, head

    def no_weight_decay(self) -> set[str]:
        return {f"backbone.{n}" for n in self.backbone.no_weight_decay()}


# ------------------------------------------------------------------------------ the loop


def local_crop_size(cfg: TrainConfig) -> int:
    """``--local-crop-size``, else half the pretraining input rounded down to the patch size (at least one patch)."""
    if cfg.local_crop_size:
        return cfg.local_crop_size
    return max(cfg.patch_size, cfg.img_size // 2 // cfg.patch_size * cfg.patch_size)


def images_digest(images: torch.Tensor) -> str:
    """A fingerprint of the decoded training images, in order: the instance head's rows are these images."""
    return hashlib.sha1(images.contiguous().numpy().tobytes()).hexdigest()


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
    from .budget import recent_speed, replan_budget
    from .build import build_model, resolve_config_for_data
    from .device import resolve_device
    from .distributed import from_environment
    from .rundir import check_run_dir, remove_interrupted_writes
    from .runtime import autocast_dtype, checks_each_step, decode_workers, use_compile, writes_behind
    from .train import TrainingError, check_leaks, record_nonfinite

    if from_environment().active:
        raise ConfigError("vitrain pretrain runs in one process; start it without torchrun")
    started = time.perf_counter()
    cfg = dataclasses.replace(cfg, pretrain="instance-discrimination", pretrained=None, freeze="none")
    cfg.validate()
    device = resolve_device(cfg.device)
    out = check_run_dir(cfg, resume, PRETRAIN_FILES)
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
    check_leaks(splits, False, log)  # the same split as training; evaluation images are never used here
    cfg = dataclasses.replace(resolve_config_for_data(cfg, splits), out=str(out))
    if resume:
        remove_interrupted_writes(out, log)
    else:
        if on_start is not None:
            on_start()
        out.mkdir(parents=True, exist_ok=True)
        for name in PRETRAIN_FILES:
            (out / name).unlink(missing_ok=True)
        cfg.save(out / "config.yaml", {"data_summary": {"splits": splits.sizes(), "notes": splits.notes}})

    model = build_model(cfg).to(device)
    side = memory.train_side(cfg.img_size, splits.native_size, "flip-crop", "resized")
    # the labels are ignored, except by the kNN report
    images, train_labels = memory.decode_all(splits.train, side, 1.0, decode_workers(cfg))
    digest = images_digest(images)
    images = images.to(device)
    n = len(images)
    head = InstanceHead(cfg.embed_dim, n, temperature=cfg.temperature).to(device)
    if cfg.instance_init == "features" and not resume:  # (a resumed run loads its trained head)
        model.eval()
        head.init_from_features(backbone_features(model, images, cfg.img_size, cfg.mean, cfg.std, project=head.embed))
        model.train()
    net = _Pretrainer(model, head)
    augment = StrongAugment(cfg.img_size, cfg.mean, cfg.std, crop_scale=tuple(cfg.pretrain_crop_scale), hflip=cfg.hflip)
    local_size = local_crop_size(cfg)
    local_augment = (
        StrongAugment(local_size, cfg.mean, cfg.std, crop_scale=tuple(cfg.local_crop_scale), hflip=cfg.hflip)
        if cfg.local_crops
        else None
    )
    model.dynamic_img_size = bool(cfg.local_crops)
    batch = min(cfg.batch_size, n)
    steps_per_epoch = n // batch  # drop the ragged last batch: every step has the same shape
    optimizer = build_optimizer(net, cfg, device)
    total_steps = cfg.epochs * steps_per_epoch
    budget: dict[str, Any] | None = None
    end = math.inf
    if cfg.time_budget and not resume:
        end = started + cfg.time_budget * 60 - 2.0  # 2 s for the plots and the report
        budget = {"minutes": cfg.time_budget, "planned_steps": total_steps, "replans": []}
    scheduler = build_scheduler(optimizer, cfg, steps_per_epoch, total_steps)
    history: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []  # batches with a non-finite loss or gradient (--skip-nonfinite)
    global_step, epoch = 0, 0
    state: dict[str, Any] = {}
    if resume:
        state = load_state(out / STATE_FILE)
        if state["images"] != n or state["images_digest"] != digest:
            raise CheckpointError(
                f"--resume {out}: the training images are not the ones pretraining started on "
                f"({state['images']} then, {n} now, or the same number with other content); "
                "the instance classifier has a row per image, so start again with --overwrite"
            )
        load_weights(net, state["net"], str(out / STATE_FILE))
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        history, skipped, budget = state["history"], state["skipped_batches"], state["budget"]
        epoch, global_step, total_steps = state["epoch"], state["step"], state["total_steps"]
        log(f"resuming pretraining after epoch {epoch} (step {global_step} of {total_steps})")
    amp_dtype = autocast_dtype(device)
    # only the backbone's forward/backward is compiled; the augmentation and the losses stay eager
    forward = torch.compile(model) if use_compile(cfg.compile, device) else model
    knn: Callable[[], float] | None = None
    if cfg.knn_every and not len(splits.val):
        log("note: --knn-every reports on the validation split, and there is none: no kNN report")
    elif cfg.knn_every:
        val_images, val_labels = memory.decode_all(splits.val, cfg.img_size, 1.0, decode_workers(cfg))
        val_images, val_labels, train_labels = val_images.to(device), val_labels.to(device), train_labels.to(device)

        def knn_accuracy() -> float:
            """The validation split's kNN accuracy now (eval mode: no random numbers are drawn)."""
            model.eval()
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                bank = backbone_features(model, images, cfg.img_size, cfg.mean, cfg.std)
                queries = backbone_features(model, val_images, cfg.img_size, cfg.mean, cfg.std)
            model.train()
            return float((knn_predict(bank, train_labels, queries, len(cfg.classes)) == val_labels).float().mean())

        knn = knn_accuracy
    log(
        f"pretraining: instance discrimination over {n} images, {cfg.views} views each, batch {batch}, "
        f"{cfg.model} {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters at {cfg.img_size}px, "
        f"temperature {cfg.temperature:g}"
        + (f", InfoNCE x{cfg.infonce:g}" if cfg.infonce else "")
        + (f", target smoothing {cfg.instance_smoothing:g}" if cfg.instance_smoothing else "")
        + (", classifier initialized from the images' features" if cfg.instance_init == "features" else "")
        + (f", MixUp {cfg.mixup:g}" if cfg.mixup else "")
        + (f", CutMix {cfg.cutmix:g}" if cfg.cutmix else "")
        + (f", {cfg.local_crops} local crops at {local_size}px" if cfg.local_crops else "")
        + f", on {device}"
        + (" (bf16 autocast)" if amp_dtype else "")
        + (", torch.compile" if forward is not model else "")
    )
    log(f"writing to {out}")
    knn_before = state.get("knn_before")  # the untrained backbone's, for comparison (saved when resuming)
    knn_seconds = 0.0  # what the last kNN report cost
    if knn is not None and not resume:
        knn_start = time.perf_counter()
        knn_before = knn()
        knn_seconds = time.perf_counter() - knn_start
        log(f"kNN validation accuracy of the untrained backbone: {knn_before:.4f} ({len(splits.val)} images)")

    check_each_step = checks_each_step(device, cfg.skip_nonfinite)
    speed: list[tuple[int, float, float]] = []
    save_seconds = 0.0  # what the last epoch's checkpoints cost
    generator = torch.Generator()
    first_epoch = epoch + 1  # the first this process runs (after --resume too)
    with CheckpointWriter(background=writes_behind(device), log=log) as files:  # closed (writes finished) on exit
        while global_step < total_steps:
            epoch += 1
            epoch_start = time.perf_counter()
            torch.manual_seed(cfg.seed * 1_000_003 + epoch)
            generator.manual_seed(cfg.seed * 1_000_003 + epoch)
            net.train()
            loss_sum = torch.zeros((), device=device)
            correct = torch.zeros((), dtype=torch.long, device=device)
            seen = steps = 0
            order = torch.randperm(n, generator=generator).to(device)
            bar = tqdm(
                range(min(steps_per_epoch, total_steps - global_step)),
                desc=f"pretrain epoch {epoch}",
                leave=False,
                disable=not cfg.progress,
                dynamic_ncols=True,
            )
            for i in bar:
                index = order[i * batch : (i + 1) * batch]
                views = torch.stack([augment(images[index], generator) for _ in range(cfg.views)])
                views, perm, lam = mix_instances(views, cfg.mixup, cfg.cutmix, generator)
                small = (
                    torch.cat([local_augment(images[index], generator) for _ in range(cfg.local_crops)])
                    if local_augment is not None
                    else None
                )
                with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                    z = head.embed(forward(views.flatten(0, 1), pre_logits=True))
                    logits = head(z)
                    a = index.repeat(cfg.views)
                    loss = instance_loss(
                        logits,
                        a,
                        index[perm].repeat(cfg.views) if perm is not None else None,
                        lam,
                        cfg.instance_smoothing,
                    )
                    if small is not None:  # the mean over all views: global views weigh `views`, local ones theirs
                        local_logits = head(head.embed(forward(small, pre_logits=True)))
                        local_a = index.repeat(cfg.local_crops)
                        local_loss = instance_loss(local_logits, local_a, smoothing=cfg.instance_smoothing)
                        loss = (cfg.views * loss + cfg.local_crops * local_loss) / (cfg.views + cfg.local_crops)
                        logits, a = torch.cat([logits, local_logits]), torch.cat([a, local_a])
                    if cfg.infonce > 0:  # between the first two global views
                        z_views = z.view(cfg.views, len(index), -1)
                        loss = loss + cfg.infonce * info_nce(z_views[0], z_views[1], cfg.temperature)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                steps += 1
                global_step += 1
                finite = True
                if check_each_step or cfg.clip_grad > 0:  # a NaN/Inf loss or gradient shows in the gradient norm
                    grad_norm = torch.nn.utils.clip_grad_norm_(
                        net.parameters(), cfg.clip_grad if cfg.clip_grad > 0 else math.inf
                    )
                    finite = not check_each_step or bool(torch.isfinite(grad_norm))
                if finite:
                    optimizer.step()
                    loss_sum += loss.detach() * len(a)
                    correct += (logits.detach().argmax(1) == a).sum()
                    seen += len(a)
                else:  # the batch is skipped: no update (or the run stops here)
                    record_nonfinite(
                        skipped,
                        cfg.skip_nonfinite,
                        epoch,
                        global_step,
                        steps,
                        float(loss.detach()),
                        out,
                        log,
                        BACKBONE_FILE,
                    )
                scheduler.step()
                if time.perf_counter() > end - knn_seconds:  # the final kNN report fits in the budget too
                    total_steps = global_step
                    break
            bar.close()
            train_time = time.perf_counter() - epoch_start
            row = {
                "epoch": epoch,
                "train_loss": float(loss_sum) / max(seen, 1),
                "train_accuracy": float(correct) / max(seen, 1),
                "lr": optimizer.param_groups[0]["lr"],
                "epoch_seconds": train_time,
                "images_per_second": seen / train_time,
            }
            if not math.isfinite(row["train_loss"]):
                raise TrainingError(f"the pretraining loss became {row['train_loss']} in epoch {epoch} (lower --lr)")
            # re-plan from the speed so far; a compiled first epoch also compiles, so it is left out
            if (
                budget is not None
                and global_step < total_steps
                and math.isfinite(end)
                and not (epoch == first_epoch and forward is not model)
            ):
                knn_share = knn_seconds / cfg.knn_every if knn is not None else 0.0
                speed.append((steps, train_time, save_seconds + knn_share))
                step_seconds, overhead = recent_speed(speed)
                new = replan_budget(
                    budget,
                    global_step,
                    end - time.perf_counter() - overhead - knn_seconds,
                    step_seconds,
                    overhead,
                    steps_per_epoch,
                    epoch,
                )
                if new is not None:
                    total_steps = max(new, global_step)
                    replan(scheduler, total_steps)
            if knn is not None and (epoch % cfg.knn_every == 0 or global_step >= total_steps):
                knn_start = time.perf_counter()
                row["val_accuracy"] = knn()
                knn_seconds = time.perf_counter() - knn_start
            save_start = time.perf_counter()
            history.append(row)
            files.save_model(
                out / BACKBONE_FILE,
                model,
                epoch=epoch,
                backbone_only=True,
                pretraining={"method": "instance-discrimination", "images": n, "epoch": epoch},
            )
            files.write_bytes(out / "metrics.csv", metrics_csv_bytes(history))
            files.save_state(
                out / STATE_FILE,
                {
                    "net": net.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "epoch": epoch,
                    "step": global_step,
                    "total_steps": total_steps,
                    "history": history,
                    "skipped_batches": skipped,
                    "budget": budget,
                    "images": n,
                    "images_digest": digest,
                    "knn_before": knn_before,
                },
            )
            save_seconds = time.perf_counter() - save_start
            log(
                f"pretrain epoch {epoch:>3}  loss {row['train_loss']:.4f}  instance acc {row['train_accuracy']:.4f}  "
                + (f"kNN val acc {row['val_accuracy']:.4f}  " if "val_accuracy" in row else "")
                + f"lr {row['lr']:.2e}  {row['images_per_second']:.0f} views/s  {train_time:.1f}s"
            )
    plot_curves(
        history,
        out,
        labels={"train": "instance accuracy (training views)", "val": f"validation, {KNN_K}-NN on backbone features"},
    )
    report = {
        "method": "instance-discrimination",
        "data": cfg.data,
        "images": n,
        "views": cfg.views,
        "epochs": epoch,
        "steps": global_step,
        "batch_size": batch,
        "final_loss": history[-1]["train_loss"],
        "instance_accuracy": history[-1]["train_accuracy"],
        "infonce": cfg.infonce,
        "instance_smoothing": cfg.instance_smoothing,
        "instance_init": cfg.instance_init,
        "mixup": cfg.mixup,
        "cutmix": cfg.cutmix,
        "temperature": cfg.temperature,
        "local_crops": cfg.local_crops,
        **({"local_crop_size": local_size} if cfg.local_crops else {}),
        **(
            {
                "knn": {
                    "val_accuracy": history[-1].get("val_accuracy"),
                    "before": knn_before,
                    "k": KNN_K,
                    "temperature": KNN_TEMPERATURE,
                    "every": cfg.knn_every,
                    "val_images": len(splits.val),
                }
            }
            if knn is not None
            else {}
        ),
        "model": model.config.to_dict(),
        "device": str(device),
        "seed": cfg.seed,
        "total_seconds": round(time.perf_counter() - started, 2),
    }
    if budget is not None:
        report["time_budget"] = {**budget, "done_steps": global_step}
    if skipped:
        report["skipped_batches"] = skipped
    write_report(out / "report.json", report)
    log(
        f"pretraining done in {report['total_seconds']:.1f}s: {global_step} steps, final loss "
        f"{report['final_loss']:.4f}; backbone in {out / BACKBONE_FILE}"
    )
    return report


def pretrain_then_train(cfg: TrainConfig, resume: bool = False, log=print) -> dict[str, Any]:
    """``vitrain train`` with ``--pretrain``: a first stage into ``OUT/pretrain``, then fine-tuning
    from that model into ``OUT``. The first stage is instance-discrimination pretraining on the
    training images (``--pretrain instance-discrimination``), or training on the labels
    (``--pretrain labels``: the run's own options, at ``pretrain_img_size``; the second stage
    keeps its classifier and continues at ``img_size`` with a new schedule).

    With ``--time-budget`` the first stage gets ``pretrain_share`` of it and the second what is
    left; otherwise the first stage runs ``pretrain_share`` x ``--epochs`` epochs and the second
    the rest. The first stage mixes instances with ``pretrain_mixup``/``pretrain_cutmix`` and runs
    at ``pretrain_img_size`` (default ``img_size``); the second mixes images with
    ``mixup``/``cutmix`` and resamples the position embeddings when the sizes differ. A
    ``labels`` first stage mixes images with ``mixup``/``cutmix`` too.

    ``OUT/config.yaml`` holds the whole run's config until the second stage starts, then that
    stage's (the same, plus ``pretrained: OUT/pretrain`` and its own epochs or budget). So
    ``resume`` knows the stage from ``cfg.pretrained``: it continues an interrupted first stage
    and then runs the second (with ``1 - pretrain_share`` of the budget), or continues (or
    restarts, if no epoch of it completed) the second.

    Under ``torchrun`` (``--pretrain labels`` only: instance pretraining runs in one process)
    every rank runs both stages; rank 0 logs and writes, the merged report included.
    """
    from . import distributed
    from .device import resolve_device
    from .rundir import RUN_FILES, agree_on_run_dir, check_run_dir, start_run_dir
    from .train import quiet, train

    if distributed.from_environment().active and cfg.pretrain != "labels":  # before the folder is checked
        raise ConfigError(
            f"--pretrain {cfg.pretrain} runs in one process; start it without torchrun (or use "
            "--pretrain labels, which runs under torchrun)"
        )
    place = distributed.setup(resolve_device(cfg.device))  # the stages find the process group up
    main = place.main
    if not main:
        log = quiet  # rank 0 speaks and writes for all
    cfg = agree_on_run_dir(cfg, place)
    out = Path(cfg.out)
    first_epochs = max(1, round(cfg.epochs * cfg.pretrain_share))
    started = time.perf_counter()
    if resume and cfg.pretrained:  # the second stage had started
        if (out / STATE_FILE).is_file():
            report = train(cfg, resume=True, log=log)
        else:
            log(f"no epoch of the fine-tuning stage completed; starting it again from {out / 'pretrain'}")
            report = train(dataclasses.replace(cfg, overwrite=True), log=log)
        return _merge_reports(out, report, started) if main else report
    if cfg.pretrained:
        raise ConfigError(f"--pretrain with --pretrained {cfg.pretrained}: the first stage starts from scratch")
    labels = cfg.pretrain == "labels"
    # a labels stage trains with the run's own mixing; only its input size is the first stage's
    first_stage = {"img_size": FIRST_STAGE["img_size"]} if labels else FIRST_STAGE
    stage = dataclasses.replace(
        cfg,
        out=str(out / "pretrain"),
        overwrite=True,
        epochs=first_epochs,
        time_budget=cfg.time_budget * cfg.pretrain_share if cfg.time_budget else None,
        pretrain=None if labels else cfg.pretrain,
        **{own: getattr(cfg, first) for own, first in first_stage.items() if getattr(cfg, first) is not None},
    )
    run_stage = functools.partial(train if labels else pretrain, log=log)  # the same signature
    name = "first (labels) stage" if labels else "pretraining stage"
    if cfg.pretrain_img_size and cfg.img_size and cfg.pretrain_img_size > cfg.img_size:
        log(
            f"note: the {name} runs at --pretrain-img-size {cfg.pretrain_img_size}, larger than "
            f"--img-size {cfg.img_size} (a recipe's value?); set --pretrain-img-size to change it"
        )
    elif labels and not cfg.pretrain_img_size:
        log(
            "note: the first (labels) stage runs at --img-size, so the two stages differ only in their schedules; "
            "--pretrain labels is meant with a smaller --pretrain-img-size"
        )
    if resume:
        if (out / "pretrain" / "report.json").is_file():
            log(f"the {name} in {out / 'pretrain'} is complete; starting the fine-tuning stage")
        elif (out / "pretrain" / STATE_FILE).is_file():
            run_stage(stage, resume=True)
        else:
            log(f"no epoch of the {name} completed; starting it again")
            run_stage(stage)
        remaining = cfg.time_budget * (1 - cfg.pretrain_share) if cfg.time_budget else None
    else:
        check_run_dir(cfg, resume=False)

        def start() -> None:  # once the data has loaded: an --overwrite never costs the old run for a typo
            start_run_dir(out)
            # an earlier first stage of the other kind leaves no file that the second stage could load
            for old in {*RUN_FILES, *PRETRAIN_FILES}:
                (out / "pretrain" / old).unlink(missing_ok=True)
            cfg.save(out / "config.yaml")  # what --resume reads should the first stage be interrupted

        run_stage(stage, on_start=start)
        spent = (time.perf_counter() - started) / 60
        remaining = cfg.time_budget - spent if cfg.time_budget else None
    # the first stage's weights define the model (a preset name would be refused next to them); its
    # input is --img-size, or the model's own size when the first stage ran at --pretrain-img-size
    first_model = load_config_file(out / "pretrain" / "config.yaml").get("model", "vit")
    second = dataclasses.replace(
        cfg,
        pretrained=str(out / "pretrain"),
        epochs=max(1, cfg.epochs - first_epochs),
        time_budget=remaining,
        overwrite=True,
        model="vit",
        img_size=cfg.img_size or resolve_config(first_model).img_size,
    )
    report = train(second, log=log)
    return _merge_reports(out, report, started) if main else report  # another rank's has no totals


def _merge_reports(out: Path, report: dict[str, Any], started: float) -> dict[str, Any]:
    """The fine-tuning report with the pretraining stage's report in it, written to ``OUT/report.json``."""
    report["pretraining"] = json.loads((out / "pretrain" / "report.json").read_text())
    report["fine_tuning_seconds"] = report["total_seconds"]
    report["total_seconds"] = round(time.perf_counter() - started, 2)  # both stages, in this process
    write_report(out / "report.json", report)
    return report
