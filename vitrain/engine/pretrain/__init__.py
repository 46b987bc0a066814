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
input sizes per step); on a CPU ``--compile auto`` times it first, as ``vitrain train`` does.
"""

from .chain import pretrain_then_train
from .loop import BACKBONE_FILE, PRETRAIN_FILES, pretrain
from .method import (
    KNN_K,
    KNN_TEMPERATURE,
    InstanceHead,
    backbone_features,
    info_nce,
    instance_loss,
    knn_predict,
    mix_instances,
    mixed_targets,
)

__all__ = [
    "BACKBONE_FILE",
    "KNN_K",
    "KNN_TEMPERATURE",
    "PRETRAIN_FILES",
    "InstanceHead",
    "backbone_features",
    "info_nce",
    "instance_loss",
    "knn_predict",
    "mix_instances",
    "mixed_targets",
    "pretrain",
    "pretrain_then_train",
]
