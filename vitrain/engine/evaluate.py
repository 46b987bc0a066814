"""Evaluation: loss, top-1/top-5 accuracy, per-class accuracy and the confusion matrix."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support
from torch import nn
from torch.utils.data import DataLoader

from .distributed import Dist, all_sum, gather_in_order

IMBALANCE_RATIO = 3  # a largest class with this many times the images of the smallest is called imbalanced


def is_imbalanced(counts: Sequence[int]) -> bool:
    """Whether the largest of these per-class image counts is :data:`IMBALANCE_RATIO` times the smallest."""
    return max(counts) >= IMBALANCE_RATIO * max(min(counts), 1)


@dataclass
class EvalResult:
    """Predictions and summary metrics of one pass over a split."""

    loss: float
    accuracy: float
    top5: float | None  # None when there are fewer than 5 classes
    targets: np.ndarray
    predictions: np.ndarray

    def confusion(self, num_classes: int) -> np.ndarray:
        """Rows are true classes, columns predicted classes (scikit-learn's convention)."""
        return confusion_matrix(self.targets, self.predictions, labels=list(range(num_classes)))

    @property
    def balanced_accuracy(self) -> float:
        """The mean recall of the classes present in the targets (scikit-learn's balanced accuracy):
        a model that always answers the largest class scores 1 / classes, whatever the class sizes."""
        recalls = [(self.predictions[self.targets == c] == c).mean() for c in np.unique(self.targets)]
        return float(np.mean(recalls))

    def per_class_accuracy(self, classes: list[str]) -> dict[str, float | None]:
        """Recall of each class (None for a class with no samples in this split)."""
        cm = self.confusion(len(classes))
        support = cm.sum(axis=1)
        return {name: (float(cm[i, i] / support[i]) if support[i] else None) for i, name in enumerate(classes)}


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    num_classes: int,
    amp_dtype: torch.dtype | None = None,
    place: Dist | None = None,
    tta: str = "none",
) -> EvalResult:
    """Run ``model`` over ``loader`` once; losses are plain cross entropy (no smoothing).

    ``tta="flip"`` (test-time augmentation) predicts the mean of the probabilities of each
    image and its horizontal mirror image; the loss is the cross entropy of that mean.

    With ``place`` of several ranks, ``loader`` holds this rank's shard ``rank::world``; sums
    are reduced and per-sample results gathered back in dataset order, so every rank gets
    the metrics of the whole split, each image counted once.
    """
    was_training = model.training
    model.eval()

    def logits_of(images: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            if tta == "flip":  # log of the mean probabilities: cross entropy and argmax read it as logits
                both = model(torch.cat([images, images.flip(-1)])).float().softmax(dim=-1)
                return both.view(2, len(images), -1).mean(dim=0).log()
            return model(images)

    try:
        return evaluate_logits(logits_of, loader, device, num_classes, place)
    finally:
        model.train(was_training)


@torch.inference_mode()
def evaluate_logits(
    logits_of: Callable[[torch.Tensor], torch.Tensor],
    loader: Iterable,
    device: torch.device,
    num_classes: int,
    place: Dist | None = None,
) -> EvalResult:
    """:func:`evaluate` for any model: ``logits_of`` maps a batch of images on ``device`` to its logits
    (a PyTorch model, or another backend's model whose logits come back as a tensor)."""
    place = place or Dist()
    total_loss = torch.zeros((), dtype=torch.float64, device=device)
    top5_hits = torch.zeros((), dtype=torch.int64, device=device)
    preds, targets = [], []
    for images, labels in loader:
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        logits = logits_of(images).float()
        total_loss += F.cross_entropy(logits, labels, reduction="sum").double()
        if num_classes >= 5:
            top5_hits += (logits.topk(5, dim=1).indices == labels[:, None]).any(dim=1).sum()
        preds.append(logits.argmax(dim=1))
        targets.append(labels)
    y_pred = torch.cat(preds).cpu().numpy() if preds else np.zeros(0, dtype=np.int64)
    y_true = torch.cat(targets).cpu().numpy() if targets else np.zeros(0, dtype=np.int64)
    if place.active:
        all_sum(total_loss, place)
        all_sum(top5_hits, place)
        y_pred = np.array(gather_in_order(y_pred.tolist(), place), dtype=np.int64)
        y_true = np.array(gather_in_order(y_true.tolist(), place), dtype=np.int64)
    if not len(y_true):
        raise ValueError("cannot evaluate an empty split")
    n = len(y_true)
    return EvalResult(
        loss=float(total_loss) / n,
        accuracy=float((y_pred == y_true).mean()),
        top5=float(top5_hits) / n if num_classes >= 5 else None,
        targets=y_true,
        predictions=y_pred,
    )


def match_classes(model_classes: list[str], data_classes: list[str]) -> list[int]:
    """For each data class, the index of the model class of the same name.

    The data may hold a subset of the model's classes, in any order; a name the model does
    not know is an error that lists every such name.
    """
    unknown = [c for c in data_classes if c not in model_classes]
    if unknown:
        known = [c for c in model_classes if c in data_classes]  # the checkpoint's order, as its splits were carved
        hint = f"; evaluate on the ones it knows with --classes {','.join(known)}" if known else ""
        raise ValueError(
            f"the data has classes the checkpoint does not know: {', '.join(unknown)} "
            f"(checkpoint classes: {', '.join(model_classes)}){hint}"
        )
    return [model_classes.index(c) for c in data_classes]


def per_class_report(result: EvalResult, classes: list[str]) -> dict[str, dict[str, float | int]]:
    """Precision, recall, F1 and support of every class present in the data (scikit-learn)."""
    present = sorted(set(result.targets.tolist()))
    precision, recall, f1, support = precision_recall_fscore_support(
        result.targets, result.predictions, labels=present, zero_division=0
    )
    return {
        classes[c]: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
        for c, p, r, f, s in zip(present, precision, recall, f1, support)
    }


SPLIT_DEFAULTS = {"val_fraction": 0.1, "test_fraction": 0.1, "split_seed": 0}


def _same_data(trained_on: Any, data: str) -> bool:
    """Whether ``data`` names the data a checkpoint was trained on: the same string, the same
    path, or a file or folder of the same name (the run may have been made elsewhere)."""
    if not isinstance(trained_on, str):
        return False
    a, b = Path(trained_on).expanduser(), Path(data).expanduser()
    return trained_on == data or a.resolve() == b.resolve() or (a.name != "" and a.name == b.name)


def split_options(meta: dict[str, Any], data: str, given: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """``--val-fraction``, ``--test-fraction``, ``--split-seed`` for evaluating on ``data``.

    Options the user gave win; the others come from the checkpoint's training run when
    ``data`` names its data (so ``--split test`` is the run's own test set, never images it
    trained on), else from :data:`SPLIT_DEFAULTS`. Also returns whether the run's were used.
    """
    trained = meta.get("split") if _same_data(meta.get("data"), data) else None
    source = trained if isinstance(trained, dict) else SPLIT_DEFAULTS
    options = {k: given[k] if given.get(k) is not None else source.get(k, v) for k, v in SPLIT_DEFAULTS.items()}
    from_run = source is trained and any(given.get(k) is None for k in SPLIT_DEFAULTS)
    return options, from_run


def trained_data(meta: dict[str, Any], checkpoint: Path) -> str:
    """The ``--data`` a checkpoint was trained on, for ``vitrain eval`` without ``--data``."""
    from ..data.sources import BUILTIN, DataError

    data = meta.get("data")
    if not isinstance(data, str) or not data:
        raise DataError(f"{checkpoint}: the checkpoint does not record its training data; give --data")
    if data.lower() not in BUILTIN and not Path(data).expanduser().exists():
        raise DataError(f"{checkpoint} was trained on --data {data}, which is not found from {Path.cwd()}; give --data")
    return data


def evaluate_checkpoint(
    source: str | Path,
    data: str | None = None,
    *,
    split: str | None = None,
    out: str | Path | None = None,
    batch_size: int = 64,
    workers: int = 0,
    device: torch.device | None = None,
    classes: list[str] | None = None,
    log=print,
    precision: str = "fp32",
    tta: str = "none",
    **data_options: Any,
) -> dict[str, Any]:
    """``vitrain eval``: evaluate a checkpoint (or run folder) on one split of any ``--data`` source.

    Without ``data``, the checkpoint's own training data restricted to its classes (as a
    run trained with ``--classes`` saw it), and by default its test split (validation where
    there is none), carved as in training. Other ``data``: a flat folder means all of its
    images, unless it is the checkpoint's training data (the run's test split, as without
    ``data``) or ``split`` says otherwise (``"all"``: every image of a flat folder).
    ``classes`` keeps only those classes of the data;
    without it, data that the checkpoint was trained on is restricted to the checkpoint's
    classes (in its order) when it holds them all. Writes ``report.json``, ``confusion_matrix.png`` (counts) and
    ``confusion_matrix_normalized.png`` (row rates) into ``out`` and returns the report.
    ``precision`` is ``--precision`` (:mod:`~vitrain.engine.precision`; ``auto`` times a forward pass).
    ``tta`` is ``--tta`` (``flip``: each image and its mirror image, see :func:`evaluate`).
    """
    from ..checkpoint import load_model, resolve_checkpoint_path
    from ..data.sources import load_split
    from ..data.transforms import TransformedDataset, eval_decode_side_for, eval_transform_for
    from ..report import plot_confusion_matrix, write_report
    from .precision import choose_precision
    from .predict import checkpoint_bit_depth

    started = time.perf_counter()
    device = device or torch.device("cpu")
    checkpoint = resolve_checkpoint_path(source)
    model = load_model(checkpoint).to(device)
    wanted = classes
    classes = list(model.meta["classes"])
    own = data is None
    if own:
        data = trained_data(model.meta, checkpoint)
        wanted = wanted or classes
        log(f"data: {data}, the checkpoint's training data")
    options, from_run = split_options(model.meta, data, data_options)
    # the checkpoint's own flat training folder is scored on the run's held-out split by
    # default, never on all of it: most of its images are the ones the model trained on
    trained_here = own or _same_data(model.meta.get("data"), data)

    def load(keep: list[str] | None) -> tuple[Any, list[str], str, dict[str, Any]]:
        return load_split(
            data,
            split,
            channels=model.config.in_chans,
            classes=keep,
            whole_flat_folder=not trained_here,
            **{**data_options, **options},
        )

    dataset, data_classes, which, used = load(wanted)
    if not wanted and data_classes != classes and set(classes) <= set(data_classes) and trained_here:
        # the run's own data with more classes, or in another order: a run trained with
        # --classes carved its splits from its classes in its order, so evaluate on those
        extra = [c for c in data_classes if c not in classes]
        log(
            f"classes: the checkpoint's {len(classes)}, in its order, as its training run carved its splits"
            + (f"; leaving out {', '.join(extra)}" if extra else "")
        )
        dataset, data_classes, which, used = load(classes)
    if split is None and not own and trained_here and "test_fraction" in used:  # a flat folder, carved
        trained_on = str(model.meta.get("data"))
        if Path(trained_on).expanduser().resolve() == Path(data).expanduser().resolve():
            log(
                f"--data {data} is the data this checkpoint was trained on: evaluating the run's {which} split, "
                "not the images it trained on (--split all scores every image)"
            )
        else:  # a folder of the same name: the run may have been made elsewhere, or these are new images
            log(
                f"--data {data} has the name of the data this checkpoint was trained on ({trained_on}): evaluating "
                f"the {which} split carved as in training, not the images it would have trained on; if these are "
                "new images, --split all scores every one"
            )
    # only the options that decided this split's images (none for a split folder, an official
    # test set or digits' fixed split) are reported, and named when they are the run's, not defaults
    if from_run and any(used[k] != SPLIT_DEFAULTS[k] for k in used):
        log("split options of the training run: " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in used.items()))
    target_map = match_classes(classes, data_classes)
    if hasattr(dataset, "max_side"):  # big JPEGs decode as in training's evaluation
        dataset.max_side = eval_decode_side_for(model.meta, model.config.img_size)
    if hasattr(dataset, "bit_depth"):  # and 16-bit images as training decoded them
        dataset.bit_depth = checkpoint_bit_depth(model.meta)
    transform = eval_transform_for(model.meta, model.config.img_size)
    if hasattr(dataset, "shards"):  # WebDataset shards: streamed in order
        from ..data.shards import ShardEvalStream

        batches = ShardEvalStream(dataset, transform, batch_size, target_map=target_map)
        loader = DataLoader(batches, batch_size=None, num_workers=workers)
    else:
        loader = DataLoader(
            TransformedDataset(dataset, transform, target_map), batch_size=batch_size, num_workers=workers
        )
    chosen = choose_precision(precision, device, model, batch_size, train=False)
    if chosen.dtype is not None:
        log(f"precision: {chosen.describe()}")
    result = evaluate(model, loader, device, len(classes), chosen.dtype, tta=tta)
    matrix = result.confusion(len(classes))
    out = Path(out) if out else checkpoint.parent / "eval" / f"{Path(data).stem or 'data'}-{which.replace(' ', '-')}"
    out.mkdir(parents=True, exist_ok=True)
    title = f"{Path(data).name} ({which}): accuracy {result.accuracy:.3f}"
    plot_confusion_matrix(matrix, classes, out / "confusion_matrix.png", title)
    plot_confusion_matrix(
        matrix, classes, out / "confusion_matrix_normalized.png", title + ", row-normalized", normalized=True
    )
    report = {
        "checkpoint": str(checkpoint),
        "data": data,
        "split": which,
        **({"split_options": used} if used else {}),
        "images": int(len(result.targets)),
        "classes": classes,
        "accuracy": result.accuracy,
        "balanced_accuracy": result.balanced_accuracy,
        "top5": result.top5,
        "loss": result.loss,
        "per_class": per_class_report(result, classes),
        "confusion_matrix": matrix.tolist(),
        "precision": chosen.to_dict(),
        "tta": tta,
        "seconds": round(time.perf_counter() - started, 2),
    }
    gap = _gap_with_the_run(checkpoint, which, result, classes)
    if gap is not None:
        report["split_gap"] = gap
    write_report(out / "report.json", report)
    log(f"{checkpoint} on {data} ({which}, {report['images']} images)")
    imbalanced = is_imbalanced([row["support"] for row in report["per_class"].values()])
    balanced = f"  balanced accuracy {result.balanced_accuracy:.4f}" if imbalanced else ""
    log(
        f"  accuracy {result.accuracy:.4f}"
        + balanced
        + (f"  top-5 {result.top5:.4f}" if result.top5 is not None else "")
        + f"  loss {result.loss:.4f}"
    )
    if gap is not None:
        log(gap_warning(gap, data, f"{Path(data).name} ({which})"))
    width = max(len("class"), *(len(c) for c in report["per_class"])) + 2
    log(f"  {'class':<{width}}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>10}")
    for name, row in report["per_class"].items():
        log(f"  {name:<{width}}{row['precision']:>10.4f}{row['recall']:>10.4f}{row['f1']:>10.4f}{row['support']:>10}")
    log(f"report: {out / 'report.json'}")
    return report


GAP_P_VALUE = 0.01  # below this, a test accuracy lower than validation's is more than the splits' sizes allow


def split_gap(val: EvalResult, test: EvalResult, classes: list[str]) -> dict[str, Any] | None:
    """When the test accuracy is below the validation accuracy by more than the two splits' sizes allow
    (a one-sided two-proportion z-test, p < :data:`GAP_P_VALUE`): the gap, the test, and the classes whose
    recall fell most from validation to test; else None.

    Validation also chose the best epoch, which favours it a little; the threshold is strict for that.
    """
    return accuracy_gap(
        (val.accuracy, len(val.targets), val.per_class_accuracy(classes)),
        (test.accuracy, len(test.targets), test.per_class_accuracy(classes)),
    )


def accuracy_gap(
    val: tuple[float, int, dict[str, float | None]], test: tuple[float, int, dict[str, float | None]]
) -> dict[str, Any] | None:
    """:func:`split_gap` from (accuracy, images, recall per class) of each split."""
    import math

    (p1, n1, before), (p2, n2, after) = val, test
    if n1 == 0 or n2 == 0 or p2 >= p1:
        return None
    pooled = (p1 * n1 + p2 * n2) / (n1 + n2)
    spread = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    z = (p1 - p2) / spread if spread > 0 else math.inf
    p_value = 0.5 * math.erfc(z / math.sqrt(2))
    if p_value >= GAP_P_VALUE:
        return None
    fell = sorted(
        (c for c in before if before[c] is not None and after.get(c) is not None and after[c] < before[c]),
        key=lambda c: after[c] - before[c],
    )
    return {
        "val_accuracy": round(p1, 4),
        "val_images": n1,
        "test_accuracy": round(p2, 4),
        "test_images": n2,
        "z": round(z, 2),
        "p_value": float(f"{p_value:.3g}"),
        "recall_fell_most": [{"class": c, "val": round(before[c], 4), "test": round(after[c], 4)} for c in fell[:3]],
    }


def gap_warning(gap: dict[str, Any], data: str, what: str = "the test split") -> str:
    """The log's words for :func:`split_gap`'s finding (``what``: the images compared with validation)."""
    fell = ", ".join(f"{r['class']} ({r['val']:.2f} on val, {r['test']:.2f} here)" for r in gap["recall_fell_most"])
    return (
        f"warning: accuracy {gap['test_accuracy']:.4f} on {what} is below the validation accuracy "
        f"{gap['val_accuracy']:.4f} by more than the two sizes allow (two-proportion z-test, "
        f"p = {gap['p_value']:.2g}): {what} seems to differ from the training distribution"
        + (f"; recall fell most for {fell}" if fell else "")
        + f". Compare them with: vitrain inspect {data}"
    )


def _gap_with_the_run(checkpoint: Path, which: str, result: EvalResult, classes: list[str]) -> dict[str, Any] | None:
    """:func:`accuracy_gap` of this evaluation against the validation split of the checkpoint's own run,
    when its report.json records one (runs of this version on: accuracy, images and recall per class)."""
    import json

    report = checkpoint.parent / "report.json"
    if which == "val" or not report.is_file():
        return None
    try:
        val = json.loads(report.read_text()).get("val") or {}
    except (OSError, ValueError):
        return None
    if "images" not in val or "per_class" not in val:
        return None
    return accuracy_gap(
        (val["accuracy"], int(val["images"]), val["per_class"]),
        (result.accuracy, len(result.targets), result.per_class_accuracy(classes)),
    )
