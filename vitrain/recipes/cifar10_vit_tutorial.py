"""The classic 'ViT on CIFAR-10 from scratch' tutorial, reproduced setting by setting."""

from . import Recipe

RECIPE = Recipe(
    name="cifar10-vit-tutorial",
    summary="32 px, patch 4, 6 layers x 256 dim, AdamW 3e-4, LR x0.1 at 60% and 85%, 200 epochs",
    reference="78.4% CIFAR-10 test accuracy after 200 epochs (27 min on an RTX 3090), as the tutorial reports",
    command="vitrain train --recipe cifar10-vit-tutorial --data cifar10",
    config=dict(
        data="cifar10",
        val_fraction=0.1,  # 45,000 / 5,000 train / validation
        model="vit",
        img_size=32,
        patch_size=4,
        embed_dim=256,
        mlp_dim=512,
        num_heads=8,
        depth=6,
        dropout=0.2,
        drop_path=0.0,
        pool="cls",
        augment="flip-crop",
        crop="resized",
        crop_scale=[0.8, 1.0],
        crop_ratio=[0.9, 1.1],
        hflip=0.5,
        normalize="dataset",
        optimizer="adamw",
        lr=3e-4,
        weight_decay=0.01,
        betas=[0.9, 0.999],
        eps=1e-8,
        schedule="multistep",
        milestones=[0.6, 0.85],
        gamma=0.1,
        warmup_epochs=0,
        label_smoothing=0.0,
        clip_grad=1.0,
        batch_size=128,
        epochs=200,
    ),
)
