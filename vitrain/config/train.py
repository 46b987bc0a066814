"""The training configuration: one dataclass, read from flags or YAML, saved with every run.

Every field is an option of ``vitrain train`` and ``vitrain pretrain``, declared once with
:func:`~vitrain.config.option.option`: the flag, the ``--config`` key, the check and the
``--help`` text all come from that declaration. The field order is the order of the keys in a
run's ``config.yaml``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import yaml

from ..checkpoint import atomic_write_bytes
from .checks import (
    ALPHA,
    CROP_SCALE,
    FREEZE,
    HEAD,
    at_least,
    check_bit_depth,
    check_device,
    check_model,
    check_save_every,
    check_stem_init,
    check_workers,
    in_range,
    min_max,
    multiple_of_patch,
    non_negative,
    positive,
    rule,
    views_with_infonce,
    with_std,
)
from .option import option
from .option import validate as validate_options

SCHEDULES = ("cosine", "step", "multistep", "constant")
# the options of `train --pretrain`'s first stage and the pretraining options they become there
# (and in `vitrain pretrain --recipe R`, unless given); a None first-stage value keeps the option
FIRST_STAGE = {"mixup": "pretrain_mixup", "cutmix": "pretrain_cutmix", "img_size": "pretrain_img_size"}

# the sections of `vitrain train --help`
DATA = "data"
MODEL = "model"
FINE_TUNING = "fine-tuning"
PRETRAINING = "small-data pretraining (see `vitrain pretrain`)"
AUGMENTATION = "augmentation and preprocessing"
OPTIMIZATION = "optimization"
RUNNING = "running"

TRAIN = ("train",)  # the options `vitrain pretrain` has no use for


@dataclass
class TrainConfig:
    """Every setting of ``vitrain train``. Field names are the CLI flags with '-' for '_'."""

    recipe: Optional[str] = option(
        None,
        "start from a named recipe (see `vitrain recipes`); flags still win. Without one (or with auto), "
        "a recipe and batch size are chosen from the data unless a model option is given",
        group=None,
    )
    # data
    data: str = option(
        "digits",
        "digits, cifar10, cifar100, mnist, fashion-mnist, a folder of class folders, or a .zip/.tar of one",
        group=DATA,
    )
    shuffle_buffer: int = option(
        1000,
        "with WebDataset shards, how many samples each DataLoader worker shuffles among (more: a better "
        "shuffle, more memory)",
        group=DATA,
        check=positive(),
        metavar="N",
        commands=TRAIN,
    )
    bit_depth: str = option(
        "auto",
        "how images of more than 8 bits per sample (16-bit PNG/TIFF, DICOM without a window) become 8-bit: "
        "auto stretches each image's own range over 0-255; N (8-16) maps 0..2^N-1 onto 0-255 for every "
        "image alike (12 for 12-bit MRI or CT stored in 16 bits)",
        group=DATA,
        check=check_bit_depth,
        metavar="auto|N",
    )
    data_root: Optional[str] = option(
        None,
        "where torchvision sets are stored/downloaded (default: ~/.cache/vitrain/datasets)",
        group=DATA,
        resumable=True,
    )
    download: bool = option(
        True,
        "never download torchvision sets; fail with a message saying where to put them",
        group=DATA,
        flag="--no-download",
        resumable=True,
    )
    classes: Optional[list[str]] = option(
        None, "comma-separated subset of classes to train on, e.g. glioma,meningioma", group=DATA
    )
    val_fraction: float = option(0.1, "validation share where the data has no val split", group=DATA)
    test_fraction: float = option(0.1, "test share of a flat folder", group=DATA)
    split_seed: int = option(0, "seed of those splits, independent of --seed", group=DATA)
    channels: Optional[int] = option(
        None,
        "convert images to 1 or 3 channels (default: 1 if every image is grayscale)",
        group=DATA,
        choices=[1, 3],
    )
    # model ("auto" picks one for the data; "vit" means explicit dims only)
    model: str = option(
        "auto",
        "auto: picked from the image size, a preset (see `vitrain models`), or vit (explicit dims only)",
        group=MODEL,
        check=check_model,
    )
    img_size: Optional[int] = option(None, "input size in pixels (images are resized)", group=MODEL, check=positive())
    patch_size: Optional[int] = option(
        None, "patch size in pixels (the token grid is img-size / patch-size)", group=MODEL, check=positive()
    )
    embed_dim: Optional[int] = option(None, "token width", group=MODEL)
    depth: Optional[int] = option(None, "number of encoder blocks", group=MODEL)
    num_heads: Optional[int] = option(None, "attention heads per block", group=MODEL)
    mlp_dim: Optional[int] = option(None, "hidden width of each block's MLP", group=MODEL)
    dropout: Optional[float] = option(
        None, "dropout rate of the attention weights, the projections, the MLP and the embeddings", group=MODEL
    )
    drop_path: Optional[float] = option(None, "stochastic depth rate of the last block", group=MODEL)
    pool: Optional[str] = option(None, "class token or global average pooling", group=MODEL, choices=["cls", "avg"])
    stem: Optional[str] = option(
        None,
        "patch: one patchifying convolution (standard ViT); conv: stride-2 3x3 convolutions "
        "(better on small data and short budgets)",
        group=MODEL,
        choices=["patch", "conv"],
    )
    stem_width: Optional[int] = option(
        None,
        "channels of a conv stem's first convolution, doubling at each further one (default: they double "
        "up to half the token width, at least 16 each)",
        group=MODEL,
        check=non_negative(" (0: the default widths)"),
    )
    stem_init: str = option(
        "random",
        "random: the first convolution starts random, as every other layer; pca: its filters start as the "
        "whitened principal components of training image patches (helps short runs from scratch)",
        group=MODEL,
        choices=["random", "pca"],
        check=check_stem_init,
        commands=TRAIN,
    )
    # fine-tuning (see vitrain.models.pretrained)
    pretrained: Optional[str] = option(
        None,
        "start from pretrained ViT/DeiT weights: timm:NAME, torchvision:NAME, hf:ORG/NAME, a "
        ".safetensors/.pth/.bin file (timm, torchvision, Hugging Face or vitrain layout) or a run folder",
        group=FINE_TUNING,
        metavar="SOURCE",
        commands=TRAIN,
    )
    freeze: str = option(
        "none",
        "none, backbone (train the head only), or N (train the last N blocks and the head)",
        group=FINE_TUNING,
        check=FREEZE,
        commands=TRAIN,
    )
    head: str = option(
        "linear",
        "linear or mlp:HIDDEN[:DROPOUT], e.g. mlp:512:0.3",
        group=FINE_TUNING,
        check=HEAD,
        commands=TRAIN,
    )
    layer_decay: float = option(
        1.0,
        "layer-wise learning-rate decay, e.g. 0.75: each block down from the head gets x0.75 (1: off)",
        group=FINE_TUNING,
        check=in_range("(0, 1]", note=" (1 turns it off)"),
    )
    head_lr: Optional[float] = option(
        None, "learning rate of the head (default: --lr)", group=FINE_TUNING, check=positive(), commands=TRAIN
    )
    distilled: Optional[bool] = option(
        None, "a distillation token and head, as DeiT's distilled models have", group=FINE_TUNING, flag=""
    )
    norm_eps: Optional[float] = option(None, "the epsilon of the model's LayerNorms", group=FINE_TUNING, flag="")
    # small-data pretraining (vitrain pretrain; with `train`, a first stage before fine-tuning)
    pretrain: Optional[str] = option(
        None,
        "a first stage before training, in the same run: instance-discrimination pretrains on the "
        "training images without labels; labels trains on the labels at --pretrain-img-size (a cheap "
        "small-input stage); the second stage fine-tunes that model at --img-size. none: skip that "
        "stage, e.g. to compare with --recipe small-data",
        group=PRETRAINING,
        choices=["instance-discrimination", "labels", "none"],
        check=rule(
            lambda v: v in ("instance-discrimination", "labels"),
            "must be instance-discrimination or labels (none: no first stage)",
        ),
        label="--pretrain/--method",
    )
    pretrain_share: float = option(
        0.5,
        "the first stage's share of --time-budget, or of --epochs",
        group=PRETRAINING,
        check=in_range("(0, 1)"),
        commands=TRAIN,
        scope="first-stage",
    )
    views: int = option(
        2,
        "augmented views of each image per pretraining step",
        group=PRETRAINING,
        check=views_with_infonce,
        scope="instance",
    )
    infonce: float = option(
        0.0,
        "weight of an InfoNCE term between two views, with in-batch negatives (0: off)",
        group=PRETRAINING,
        check=non_negative(),
        scope="instance",
    )
    temperature: float = option(
        0.2, "of the cosine instance classifier and InfoNCE", group=PRETRAINING, check=positive(), scope="instance"
    )
    instance_smoothing: float = option(
        0.0,
        "label smoothing of the instance targets (0: off)",
        group=PRETRAINING,
        check=in_range("[0, 1)"),
        scope="instance",
    )
    instance_init: str = option(
        "random",
        "the instance classifier's starting weights: random, or features: each image's projection "
        "by the untrained backbone, so the first steps already discriminate",
        group=PRETRAINING,
        choices=["random", "features"],
        scope="instance",
    )
    pretrain_crop_scale: list[float] = option(
        [0.08, 1.0], "MIN,MAX area of the pretraining crops", group=PRETRAINING, check=CROP_SCALE, scope="instance"
    )
    local_crops: int = option(
        0,
        "multi-crop: N extra small crops of each image per pretraining step, at --local-crop-size, "
        "each labelled with its image (0: off)",
        group=PRETRAINING,
        check=non_negative(" (0 turns multi-crop off)"),
        metavar="N",
        scope="instance",
    )
    local_crop_size: Optional[int] = option(
        None,
        "input size of the local crops (default: half the pretraining input, a multiple of the patch)",
        group=PRETRAINING,
        check=multiple_of_patch,
        metavar="PX",
        scope="instance",
    )
    local_crop_scale: list[float] = option(
        [0.05, 0.4], "MIN,MAX area of the local crops", group=PRETRAINING, check=CROP_SCALE, scope="instance"
    )
    knn_every: int = option(
        0,
        "every N pretraining epochs and after the last, report the validation split's "
        "20-nearest-neighbour accuracy on the backbone's features; labels are read for this report "
        "only (0: off)",
        group=PRETRAINING,
        check=non_negative(" (0 turns the kNN report off)"),
        metavar="N",
        scope="instance",
    )
    pretrain_mixup: float = option(
        0.0,
        "MixUp alpha between instances in the first stage of --pretrain (0: off; `vitrain pretrain` uses --mixup)",
        group=PRETRAINING,
        check=ALPHA,
        commands=TRAIN,
        scope="instance",
    )
    pretrain_cutmix: float = option(
        0.0,
        "CutMix alpha between instances in the first stage of --pretrain (0: off; `vitrain pretrain` uses --cutmix)",
        group=PRETRAINING,
        check=ALPHA,
        commands=TRAIN,
        scope="instance",
    )
    pretrain_img_size: Optional[int] = option(
        None,
        "input size of the first stage of --pretrain, instance-discrimination or labels (default: "
        "--img-size); the second stage resamples the position embeddings to --img-size "
        "(`vitrain pretrain` uses --img-size)",
        group=PRETRAINING,
        check=multiple_of_patch,
        metavar="PX",
        commands=TRAIN,
        scope="first-stage",
    )
    # preprocessing and augmentation
    augment: str = option(
        "auto",
        "training augmentation (auto: none for images of at most 16 px, else flip-crop)",
        group=AUGMENTATION,
        choices=["auto", "none", "flip-crop", "autoaugment", "randaugment", "trivialaugment"],
        commands=TRAIN,
    )
    hflip: Optional[float] = option(
        None,
        "horizontal flip probability (default: 0.5, or 0 for digits)",
        group=AUGMENTATION,
        check=in_range("[0, 1]", what="must be a probability"),
    )
    crop: str = option(
        "auto",
        "the crop of flip-crop: random resized, or pad-and-crop (auto: pad for images of at most 64 px)",
        group=AUGMENTATION,
        choices=["auto", "resized", "pad"],
        commands=TRAIN,
    )
    crop_scale: list[float] = option(
        [0.08, 1.0], "MIN,MAX area of random resized crops", group=AUGMENTATION, check=CROP_SCALE, commands=TRAIN
    )
    crop_ratio: list[float] = option(
        [0.75, 4 / 3],
        "MIN,MAX aspect ratio of random resized crops",
        group=AUGMENTATION,
        check=min_max(),
        commands=TRAIN,
    )
    crop_pct: Optional[float] = option(
        None,
        "evaluation center-crop fraction (default: 1.0, or the --pretrained weights' own)",
        group=AUGMENTATION,
        check=in_range("(0, 1]"),
        commands=TRAIN,
    )
    random_erasing: float = option(
        0.0,
        "random erasing probability",
        group=AUGMENTATION,
        check=in_range("[0, 1]", what="must be a probability"),
        commands=TRAIN,
    )
    mixup: float = option(0.0, "MixUp alpha on training batches (0: off)", group=AUGMENTATION, check=ALPHA)
    cutmix: float = option(
        0.0, "CutMix alpha (0: off); with --mixup each batch uses one", group=AUGMENTATION, check=ALPHA
    )
    normalize: str = option(
        "auto",
        "auto: the pretrained weights' statistics with --pretrained, else the dataset's; or dataset, imagenet, none",
        group=AUGMENTATION,
        choices=["auto", "dataset", "imagenet", "none"],
    )
    mean: Optional[list[float]] = option(
        None, "comma-separated per-channel mean (with --std)", group=AUGMENTATION, check=with_std, label="--mean/--std"
    )
    std: Optional[list[float]] = option(
        None,
        "comma-separated per-channel std (with --mean)",
        group=AUGMENTATION,
        check=rule(lambda v: all(s > 0 for s in v), "values must be positive"),
    )
    # optimization
    epochs: int = option(80, "passes over the training data", group=OPTIMIZATION, check=at_least(1))
    batch_size: int = option(32, "images per training step", group=OPTIMIZATION, check=at_least(1))
    optimizer: str = option("adamw", "the optimizer", group=OPTIMIZATION, choices=["adamw", "adam", "sgd"])
    lr: float = option(1e-3, "peak learning rate", group=OPTIMIZATION, check=positive())
    weight_decay: float = option(
        0.05, "applied to weights with ndim >= 2 only", group=OPTIMIZATION, check=non_negative()
    )
    betas: list[float] = option(
        [0.9, 0.999],
        "AdamW betas",
        group=OPTIMIZATION,
        check=rule(lambda v: len(v) == 2 and all(0 <= b < 1 for b in v), "needs two values in [0, 1)"),
    )
    eps: float = option(1e-8, "AdamW epsilon", group=OPTIMIZATION)
    momentum: float = option(0.9, "SGD momentum", group=OPTIMIZATION)
    nesterov: bool = option(False, "Nesterov momentum for SGD", group=OPTIMIZATION)
    schedule: str = option("cosine", "the learning-rate schedule", group=OPTIMIZATION, choices=SCHEDULES)
    warmup_epochs: float = option(3.0, "linear warmup length, any schedule", group=OPTIMIZATION, check=non_negative())
    min_lr: float = option(0.0, "final learning rate of the cosine schedule", group=OPTIMIZATION, check=non_negative())
    step_size: float = option(10.0, "epochs between decays of the step schedule", group=OPTIMIZATION, check=positive())
    gamma: float = option(0.1, "decay factor of step/multistep", group=OPTIMIZATION, check=in_range("(0, 1]"))
    milestones: list[float] = option(
        [0.6, 0.85],
        "multistep decay points as fractions of training",
        group=OPTIMIZATION,
        check=rule(lambda v: all(0 < m < 1 for m in v), "fractions must be in (0, 1)"),
    )
    label_smoothing: float = option(
        0.1, "label smoothing of the training targets", group=OPTIMIZATION, check=in_range("[0, 1)"), commands=TRAIN
    )
    class_weights: str = option(
        "none",
        "balanced: weight each class's loss by n / (classes x its training images), for imbalanced data",
        group=OPTIMIZATION,
        choices=["none", "balanced"],
        commands=TRAIN,
    )
    clip_grad: float = option(
        0.0,
        "clip the gradient norm at this value (0: off)",
        group=OPTIMIZATION,
        check=non_negative(" (0 turns clipping off)"),
    )
    skip_nonfinite: int = option(
        0,
        "skip up to N batches whose loss or gradient is NaN/Inf, then stop (0: stop at the first)",
        group=OPTIMIZATION,
        check=non_negative(),
        metavar="N",
    )
    ema: float = option(
        0.0,
        "keep an exponential moving average of the weights with this decay, e.g. 0.999; "
        "it is what is validated and checkpointed (0: off)",
        group=OPTIMIZATION,
        check=in_range("[0, 1)", what="decay must be", note=" (0 turns it off)"),
        commands=TRAIN,
    )
    time_budget: Optional[float] = option(
        None,
        "fit the run into this wall-clock time: measure speed, plan the steps, scale the schedule",
        group=OPTIMIZATION,
        check=positive("must be a positive number of minutes"),
        metavar="MINUTES",
    )
    # running
    seed: int = option(0, "seed of the model's initialization, the data order and the augmentation", group=RUNNING)
    dedupe: str = option(
        "off",
        "drop validation/test images that copy a training image (they are always counted): exact (the flag "
        "alone) drops identical files; near also drops resized, re-encoded or slightly edited copies, found "
        "by perceptual hashes as vitrain inspect finds them (every image is read once more to hash it)",
        group=RUNNING,
        choices=["off", "exact", "near"],
        commands=TRAIN,
        const="exact",
    )
    skip_bad_images: bool = option(
        False,
        "decode every image before training and leave out the unreadable ones (counted in "
        "report.json) instead of stopping at the first",
        group=DATA,
    )
    backend: str = option(
        "torch",
        "what computes the steps: torch (PyTorch), or jax (the same ViT in Flax, trained with optax; "
        "pip install 'vitrain[jax]')",
        group=RUNNING,
        choices=["torch", "jax"],
        commands=TRAIN,
    )
    device: str = option("auto", "auto, cpu, cuda or cuda:N", group=RUNNING, check=check_device, resumable=True)
    workers: Optional[int] = option(
        None, "data-loading processes (default: auto)", group=RUNNING, check=check_workers, resumable=True
    )
    save_every: Optional[str] = option(
        None,
        "also save the resumable state inside epochs: every N minutes of training (30, 30m, 1.5h) or every "
        "N steps (500steps); a SIGTERM saves at the next step in any case",
        group=RUNNING,
        check=check_save_every,
        metavar="WHEN",
        commands=TRAIN,
        resumable=True,
    )
    dist_timeout: float = option(
        600.0,
        "under torchrun, how long a process waits for the others in a collective (a step's gradient "
        "all-reduce, a shared decision) before the run stops with an error naming it; raise it when "
        "rank 0 alone does long work the others wait for (a download, a checkpoint on a slow filesystem)",
        group=RUNNING,
        check=positive(),
        metavar="SECONDS",
        resumable=True,
    )
    in_memory: str = option(
        "auto",
        "decode every image once and augment whole batches in memory (auto: when the decoded images fit in 2 GiB)",
        group=RUNNING,
        choices=["auto", "on", "off"],
        commands=TRAIN,
    )
    precision: str = option(
        "auto",
        "what the steps compute in: bf16 (weights and optimizer state stay float32; PyTorch autocasts, the JAX "
        "model computes in bfloat16) or fp32; auto: bf16 on GPUs that have it, and on CPUs with bf16 units where "
        "the model's step measures faster in it",
        group=RUNNING,
        choices=["auto", "fp32", "bf16"],
        resumable=True,
    )
    compile: str = option(
        "auto",
        "torch.compile the model for training (auto: on for CUDA, with CUDA graphs on one GPU; on a CPU, "
        "on where a compiled copy of the step, timed once, wins back its compile time over the run); the "
        "first steps are slower while it compiles",
        group=RUNNING,
        choices=["auto", "on", "off"],
        resumable=True,
    )
    tta: str = option(
        "none",
        "test-time augmentation of the final evaluation (validation and test with the best model): flip "
        "averages the predicted probabilities of each image and its mirror image (not for data whose labels "
        "a mirror changes); the per-epoch validation stays plain",
        group=RUNNING,
        choices=["none", "flip"],
        commands=TRAIN,
        resumable=True,
    )
    best_metric: str = option(
        "accuracy",
        "which validation metric picks best.safetensors; balanced-accuracy: the mean of the "
        "per-class recalls, for imbalanced data",
        group=RUNNING,
        choices=["accuracy", "balanced-accuracy", "loss"],
        commands=TRAIN,
    )
    out: Optional[str] = option(None, "run folder (default: runs/DATA-TIMESTAMP)", group=RUNNING)
    overwrite: bool = option(False, "replace a run already in --out", group=RUNNING)
    progress: bool = option(
        True, "no progress bars (one line per epoch only)", group=RUNNING, flag="--no-progress", resumable=True
    )

    def validate(self) -> TrainConfig:
        """Raise :class:`ConfigError` naming the first option with an impossible value."""
        validate_options(self)
        return self

    def to_dict(self) -> dict[str, Any]:
        """The fields by name, as ``config.yaml`` holds them."""
        return dataclasses.asdict(self)

    def save(self, path: Path, extra: dict[str, Any] | None = None) -> None:
        """Write the config (plus resolved values in ``extra``) as YAML."""
        data = {"train": self.to_dict(), **(extra or {})}
        atomic_write_bytes(path, yaml.safe_dump(data, sort_keys=False).encode())
