"""Small data (a few thousand images or fewer): instance-discrimination pretraining, then fine-tuning.

After Cao, Yu and Wu, "Training Vision Transformers with Only 2040 Images" (ECCV 2022):
the first half of the run (``pretrain_share``) trains the ViT to tell every training image
from every other under strong augmentation and instance MixUp/CutMix, without labels;
the second half fine-tunes that backbone on the labels. The model and the fine-tuning
settings are folder-best's (64 px, conv stem, patch-8 grid, 6 x 128 dim).
"""

from . import Recipe

RECIPE = Recipe(
    name="small-data",
    summary="instance-discrimination pretraining on the training images (half the budget), then fine-tuning; "
            "folder-best's model at 64 px",
    reference="not yet benchmarked against training from scratch (issue 6: benchmarks/small_data.py is to "
              "measure it on flowers17 and a 2,040-image CIFAR-10 subset)",
    command="vitrain train --recipe small-data --data flowers17.tar --time-budget 30",
    config=dict(
        pretrain="instance-discrimination", pretrain_share=0.5, views=2, temperature=0.2,
        pretrain_crop_scale=[0.08, 1.0],
        val_fraction=0.15,
        model="vit", img_size=64, patch_size=8, embed_dim=128, mlp_dim=256, num_heads=4, depth=6, stem="conv",
        dropout=0.0, drop_path=0.1, pool="cls",
        augment="flip-crop", crop="resized", crop_scale=[0.35, 1.0], hflip=0.5, normalize="dataset",
        # MixUp/CutMix mix instances in the first stage and images in the second
        mixup=0.8, cutmix=1.0,
        optimizer="adamw", lr=1e-3, weight_decay=0.05, schedule="cosine", warmup_epochs=2,
        label_smoothing=0.1, clip_grad=0.0,
        batch_size=64, epochs=80,
    ),
)
