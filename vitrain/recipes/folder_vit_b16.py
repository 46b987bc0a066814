"""The 'ViT-B/16 from scratch on a folder of brain MRI scans' tutorial, for any image folder."""

from . import Recipe

RECIPE = Recipe(
    name="folder-vit-b16",
    summary="ViT-B/16 at 224 px, no augmentation, AdamW 5e-5, StepLR every 10 epochs, 20 epochs, 15% validation",
    reference="about 94% validation accuracy on a 3-class brain-tumor MRI set after 20 epochs, as the tutorial reports",
    command="vitrain train --recipe folder-vit-b16 --data brain-tumor-mri.zip --classes glioma,meningioma,pituitary",
    config=dict(
        val_fraction=0.15,
        model="vit-b16",
        img_size=224,
        patch_size=16,
        dropout=0.0,
        drop_path=0.0,
        augment="none",
        normalize="dataset",
        # the tutorial leaves weight decay at PyTorch's AdamW default
        optimizer="adamw",
        lr=5e-5,
        weight_decay=0.01,
        betas=[0.9, 0.95],
        eps=1e-5,
        schedule="step",
        step_size=10,
        gamma=0.1,
        warmup_epochs=0,
        label_smoothing=0.0,
        clip_grad=0.0,
        batch_size=32,
        epochs=20,
    ),
)
