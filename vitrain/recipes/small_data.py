"""Small data (a few thousand images or fewer): instance-discrimination pretraining, then fine-tuning.

After Cao, Yu and Wu, "Training Vision Transformers with Only 2040 Images" (ECCV 2022):
the first half of the run (``pretrain_share``) trains the ViT to tell every training image
from every other under strong augmentation, without labels; the second half fine-tunes
that backbone on the labels. The model and the fine-tuning settings are folder-best's
(64 px, conv stem, patch-8 grid, 6 x 128 dim) with MixUp/CutMix added.

Two departures from the paper, for CPU budgets of minutes rather than hundreds of GPU
epochs: the first stage adds InfoNCE between the two views (``infonce=1``), whose
in-batch negatives give a signal from the first step while the N-way classifier's weights
are still random, and it does not mix instances (``pretrain_mixup``/``pretrain_cutmix`` 0),
which makes the instance task harder than a short run can learn. Both are flags. And the
first stage runs at 32 px (``pretrain_img_size``; a 4x4 token grid for a 64 px model), which
makes several times the pretraining steps of a 64 px first stage in the same time; the
second stage resamples the position embeddings. Most of the recipe's gain over training
from scratch comes from that cheap small-input stage: ``--recipe small-data --pretrain
labels`` runs the same two stages with a supervised first stage, and is worth trying first.
docs/benchmarks/small-data.md has the measurements.
"""

from . import Recipe

RECIPE = Recipe(
    name="small-data",
    summary="instance-discrimination pretraining on the training images (half the budget), then fine-tuning; "
    "folder-best's model at 64 px",
    reference="30 minutes on a 2-core CPU, test accuracy vs the same recipe with --pretrain none: flowers17 "
    "0.8529 vs 0.8015 (seed 0), 0.8382 vs 0.8088 (seeds 1 and 2), CIFAR-10 2,040-image subset 0.5458 vs "
    "0.5255 (seed 0), 0.5201 vs 0.5159 (seed 1) and 0.5095 vs 0.5442 (seed 2) "
    "(`python benchmarks/small_data.py --minutes 30`, docs/benchmarks/small-data.md)",
    command="vitrain train --recipe small-data --data flowers17.tar --time-budget 30",
    config=dict(
        pretrain="instance-discrimination",
        pretrain_share=0.5,
        views=2,
        temperature=0.2,
        infonce=1.0,
        pretrain_crop_scale=[0.08, 1.0],
        pretrain_mixup=0.0,
        pretrain_cutmix=0.0,
        pretrain_img_size=32,
        val_fraction=0.15,
        model="vit",
        img_size=64,
        patch_size=8,
        embed_dim=128,
        mlp_dim=256,
        num_heads=4,
        depth=6,
        stem="conv",
        dropout=0.0,
        drop_path=0.1,
        pool="cls",
        augment="flip-crop",
        crop="resized",
        crop_scale=[0.35, 1.0],
        hflip=0.5,
        normalize="dataset",
        mixup=0.8,
        cutmix=1.0,  # between images, in the fine-tuning stage
        optimizer="adamw",
        lr=1e-3,
        weight_decay=0.05,
        schedule="cosine",
        warmup_epochs=2,
        label_smoothing=0.1,
        clip_grad=0.0,
        batch_size=64,
        epochs=80,
    ),
)
