"""The 'ViT on CIFAR-10 upscaled to 224 px' tutorial."""

from . import Recipe

RECIPE = Recipe(
    name="cifar10-vit224",
    summary="CIFAR-10 at 224 px, patch 16, 6 layers x 288 dim, AutoAugment, StepLR every 10 epochs, 50 epochs",
    reference="73.7% CIFAR-10 validation accuracy after 50 epochs, as the tutorial reports",
    command="vitrain train --recipe cifar10-vit224 --data cifar10",
    config=dict(
        data="cifar10",
        val_fraction=0.1,
        model="vit",
        img_size=224,
        patch_size=16,
        embed_dim=288,
        mlp_dim=1152,
        num_heads=6,
        depth=6,
        dropout=0.0,
        drop_path=0.0,
        pool="cls",
        augment="autoaugment",
        hflip=0.5,
        normalize="dataset",
        # the tutorial leaves weight decay at PyTorch's AdamW default
        optimizer="adamw",
        lr=5e-4,
        weight_decay=0.01,
        betas=[0.9, 0.95],
        eps=1e-5,
        schedule="step",
        step_size=10,
        gamma=0.1,
        warmup_epochs=0,
        label_smoothing=0.0,
        clip_grad=0.0,
        batch_size=128,
        epochs=50,
    ),
)
