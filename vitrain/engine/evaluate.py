"""Evaluation: loss, top-1/top-5 accuracy, per-class accuracy and the confusion matrix."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import confusion_matrix
from torch import nn
from torch.utils.data import DataLoader


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

    def per_class_accuracy(self, classes: list[str]) -> dict[str, float | None]:
        """Recall of each class (None for a class with no samples in this split)."""
        cm = self.confusion(len(classes))
        support = cm.sum(axis=1)
        return {name: (float(cm[i, i] / support[i]) if support[i] else None) for i, name in enumerate(classes)}


@torch.inference_mode()
def evaluate(model: nn.Module, loader: DataLoader, device: torch.device, num_classes: int,
             amp_dtype: torch.dtype | None = None) -> EvalResult:
    """Run ``model`` over ``loader`` once; losses are plain cross entropy (no smoothing)."""
    was_training = model.training
    model.eval()
    total_loss = torch.zeros((), dtype=torch.float64, device=device)
    top5_hits = torch.zeros((), dtype=torch.int64, device=device)
    preds, targets = [], []
    for images, labels in loader:
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(images)
        logits = logits.float()
        total_loss += F.cross_entropy(logits, labels, reduction="sum").double()
        if num_classes >= 5:
            top5_hits += (logits.topk(5, dim=1).indices == labels[:, None]).any(dim=1).sum()
        preds.append(logits.argmax(dim=1))
        targets.append(labels)
    model.train(was_training)
    if not targets:
        raise ValueError("cannot evaluate an empty split")
    y_pred = torch.cat(preds).cpu().numpy()
    y_true = torch.cat(targets).cpu().numpy()
    n = len(y_true)
    return EvalResult(
        loss=float(total_loss) / n,
        accuracy=float((y_pred == y_true).mean()),
        top5=float(top5_hits) / n if num_classes >= 5 else None,
        targets=y_true,
        predictions=y_pred,
    )
