"""The 'fine-tune a pretrained DeiT-tiny on 50 butterfly species' tutorial, for any image folder."""

from . import Recipe

RECIPE = Recipe(
    name="finetune-deit",
    summary="pretrained DeiT-tiny at 224 px, backbone frozen, head Linear(192,512)-ReLU-Dropout(0.3)-Linear, "
    "Adam 1e-3, StepLR every 3 epochs x0.97, label smoothing, 10 epochs, ImageNet normalization",
    reference="94% validation / 93% test accuracy on 50 butterfly species, as the tutorial reports "
    "(the weights come from timm: needs internet once, or --pretrained with a local file)",
    command="vitrain train --recipe finetune-deit --data butterflies/",
    config=dict(
        pretrained="timm:deit_tiny_patch16_224",
        img_size=224,
        freeze="backbone",
        head="mlp:512:0.3",
        # the tutorial resizes to 224 px and normalizes with ImageNet's statistics, without augmentation
        augment="none",
        crop_pct=1.0,
        normalize="imagenet",
        optimizer="adam",
        lr=1e-3,
        weight_decay=0.0,
        schedule="step",
        step_size=3,
        gamma=0.97,
        warmup_epochs=0,
        label_smoothing=0.1,
        clip_grad=0.0,
        batch_size=32,
        epochs=10,
    ),
)
