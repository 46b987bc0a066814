"""The training configuration: one dataclass, read from flags or YAML, saved with every run."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Optional, get_args, get_origin, get_type_hints

import yaml

from .checkpoint import atomic_write_bytes
from .errors import ConfigError
from .models.registry import ALIASES, model_names


@dataclass
class TrainConfig:
    """Every setting of ``vitrain train``. Field names are the CLI flags with '-' for '_'."""

    recipe: Optional[str] = None  # the recipe these settings started from (see vitrain.recipes)
    # data
    data: str = "digits"
    data_root: Optional[str] = None
    download: bool = True
    classes: Optional[list[str]] = None
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    split_seed: int = 0
    channels: Optional[int] = None
    # model ("auto" picks one for the data; "vit" means explicit dims only)
    model: str = "auto"
    img_size: Optional[int] = None
    patch_size: Optional[int] = None
    embed_dim: Optional[int] = None
    depth: Optional[int] = None
    num_heads: Optional[int] = None
    mlp_dim: Optional[int] = None
    dropout: Optional[float] = None
    drop_path: Optional[float] = None
    pool: Optional[str] = None
    stem: Optional[str] = None
    # fine-tuning (see vitrain.models.pretrained); distilled/norm_eps come from the pretrained weights
    pretrained: Optional[str] = None  # timm:NAME, torchvision:NAME, hf:ORG/NAME, a weights file or a run folder
    freeze: str = "none"  # none, backbone (train the head only) or N (train the last N blocks and the head)
    head: str = "linear"  # linear, or mlp:HIDDEN[:DROPOUT]
    layer_decay: float = 1.0  # learning rate x layer_decay^(distance from the head), per block
    head_lr: Optional[float] = None  # the head's learning rate (default: --lr)
    distilled: Optional[bool] = None
    norm_eps: Optional[float] = None
    # small-data pretraining (vitrain pretrain; with `train`, a first stage before fine-tuning)
    # instance-discrimination: pretrain on the training images without labels, then fine-tune; labels:
    # train on the labels at pretrain_img_size first (a cheap small-input stage), then fine-tune
    pretrain: Optional[str] = None
    pretrain_share: float = 0.5  # that stage's share of --time-budget (or of --epochs without a budget)
    views: int = 2  # augmented views of each image per step
    infonce: float = 0.0  # weight of an InfoNCE term between two views (0: off; an ablation)
    temperature: float = 0.2  # of the cosine instance classifier and of InfoNCE
    instance_smoothing: float = 0.0  # label smoothing of the instance targets
    instance_init: str = "random"  # the instance classifier's start: random, or features (each image's projection)
    pretrain_crop_scale: list[float] = field(default_factory=lambda: [0.08, 1.0])
    # multi-crop: this many extra small crops of each image per pretraining step, at a smaller input
    local_crops: int = 0
    local_crop_size: Optional[int] = None  # their input size (None: half the pretraining input)
    local_crop_scale: list[float] = field(default_factory=lambda: [0.05, 0.4])
    # every N pretraining epochs (and after the last), the validation split's k-nearest-neighbour
    # accuracy on the backbone's features: the labels are read for this report only (0: off)
    knn_every: int = 0
    # MixUp/CutMix alphas between instances in the first stage of `train --pretrain` (0: off); the
    # `vitrain pretrain` command itself uses --mixup/--cutmix
    pretrain_mixup: float = 0.0
    pretrain_cutmix: float = 0.0
    # the first stage's input size in `train --pretrain` (None: --img-size); smaller is cheaper per
    # step, and the second stage resamples the position embeddings to --img-size
    pretrain_img_size: Optional[int] = None
    # preprocessing and augmentation
    augment: str = "auto"  # none for images of at most 16 px, else flip-crop
    hflip: Optional[float] = None  # None: 0.5, or 0 for data where flips change labels
    crop: str = "auto"  # pad-and-crop for images of at most 64 px, else random resized crop
    crop_scale: list[float] = field(default_factory=lambda: [0.08, 1.0])
    crop_ratio: list[float] = field(default_factory=lambda: [0.75, 4 / 3])
    crop_pct: Optional[float] = None  # None: the pretrained weights' crop, else 1.0
    random_erasing: float = 0.0
    mixup: float = 0.0  # MixUp alpha (0: off)
    cutmix: float = 0.0  # CutMix alpha (0: off); with both, each batch uses one of them
    normalize: str = "auto"  # auto: the pretrained weights' statistics with --pretrained, else the dataset's
    mean: Optional[list[float]] = None
    std: Optional[list[float]] = None
    # optimization
    epochs: int = 80
    batch_size: int = 32
    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.05
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    momentum: float = 0.9
    nesterov: bool = False
    schedule: str = "cosine"
    warmup_epochs: float = 3.0
    min_lr: float = 0.0
    step_size: float = 10.0
    gamma: float = 0.1
    milestones: list[float] = field(default_factory=lambda: [0.6, 0.85])
    label_smoothing: float = 0.1
    class_weights: str = "none"  # "balanced": each class's loss weighted by n / (classes x its images)
    clip_grad: float = 0.0
    skip_nonfinite: int = 0  # batches with a NaN/Inf loss or gradient that may be skipped before stopping
    ema: float = 0.0  # decay of an exponential moving average of the weights (0: off), e.g. 0.999
    time_budget: Optional[float] = None  # minutes of wall clock; the schedule is planned to fit
    # running
    seed: int = 0
    dedupe: bool = False  # drop evaluation images identical to a training image
    skip_bad_images: bool = False  # leave unreadable image files out instead of failing
    device: str = "auto"
    workers: Optional[int] = None
    in_memory: str = "auto"  # decode every image once and augment batches in memory: auto, on, off
    compile: str = "auto"  # torch.compile the training step: auto (on for CUDA), on, off
    best_metric: str = "accuracy"
    out: Optional[str] = None
    overwrite: bool = False
    progress: bool = True

    def validate(self) -> "TrainConfig":
        """Raise :class:`ConfigError` naming the first option with an impossible value."""
        checks = [
            (self.epochs >= 1, "--epochs", "must be at least 1"),
            (self.batch_size >= 1, "--batch-size", "must be at least 1"),
            (self.lr > 0, "--lr", "must be positive"),
            (self.weight_decay >= 0, "--weight-decay", "must be >= 0"),
            (self.optimizer in ("adamw", "adam", "sgd"), "--optimizer", "must be adamw, adam or sgd"),
            (self.schedule in SCHEDULES, "--schedule", f"must be one of {', '.join(SCHEDULES)}"),
            (self.warmup_epochs >= 0, "--warmup-epochs", "must be >= 0"),
            (self.min_lr >= 0, "--min-lr", "must be >= 0"),
            (self.step_size > 0, "--step-size", "must be positive"),
            (0 < self.gamma <= 1, "--gamma", "must be in (0, 1]"),
            (all(0 < m < 1 for m in self.milestones), "--milestones", "fractions must be in (0, 1)"),
            (0 <= self.label_smoothing < 1, "--label-smoothing", "must be in [0, 1)"),
            (self.clip_grad >= 0, "--clip-grad", "must be >= 0 (0 turns clipping off)"),
            (self.skip_nonfinite >= 0, "--skip-nonfinite", "must be >= 0"),
            (len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "--betas", "needs two values in [0, 1)"),
            (
                self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"),
                "--device",
                "must be auto, cpu, cuda or cuda:N",
            ),
            (self.workers is None or self.workers >= 0, "--workers", "must be >= 0"),
            (
                self.workers is None or self.workers <= 4 * (os.cpu_count() or 1),
                "--workers",
                f"is more than 4x this machine's {os.cpu_count()} CPUs",
            ),
            (self.in_memory in ("auto", "on", "off"), "--in-memory", "must be auto, on or off"),
            (self.compile in ("auto", "on", "off"), "--compile", "must be auto, on or off"),
            (
                self.best_metric in ("accuracy", "balanced-accuracy", "loss"),
                "--best-metric",
                "must be accuracy, balanced-accuracy or loss",
            ),
            (self.class_weights in ("none", "balanced"), "--class-weights", "must be none or balanced"),
            (self.hflip is None or 0 <= self.hflip <= 1, "--hflip", "must be a probability in [0, 1]"),
            (0 <= self.random_erasing <= 1, "--random-erasing", "must be a probability in [0, 1]"),
            (self.mixup >= 0 and self.cutmix >= 0, "--mixup/--cutmix", "alphas must be >= 0 (0 turns them off)"),
            (
                self.pretrain_mixup >= 0 and self.pretrain_cutmix >= 0,
                "--pretrain-mixup/--pretrain-cutmix",
                "alphas must be >= 0 (0 turns them off)",
            ),
            (0 <= self.ema < 1, "--ema", "decay must be in [0, 1) (0 turns it off)"),
            (self.time_budget is None or self.time_budget > 0, "--time-budget", "must be a positive number of minutes"),
            (self.crop_pct is None or 0 < self.crop_pct <= 1, "--crop-pct", "must be in (0, 1]"),
            (self.crop in ("auto", "resized", "pad"), "--crop", "must be auto, resized or pad"),
            (
                len(self.crop_scale) == 2 and 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1,
                "--crop-scale",
                "needs MIN,MAX with 0 < MIN <= MAX <= 1",
            ),
            (
                len(self.crop_ratio) == 2 and 0 < self.crop_ratio[0] <= self.crop_ratio[1],
                "--crop-ratio",
                "needs MIN,MAX with 0 < MIN <= MAX",
            ),
            (
                self.normalize in ("auto", "dataset", "imagenet", "none"),
                "--normalize",
                "must be auto, dataset, imagenet or none",
            ),
            (
                self.freeze in ("none", "backbone") or (self.freeze.isdigit()),
                "--freeze",
                "must be none, backbone or a number of blocks to train",
            ),
            (_valid_head(self.head), "--head", "must be linear or mlp:HIDDEN[:DROPOUT], e.g. mlp:512:0.3"),
            (0 < self.layer_decay <= 1, "--layer-decay", "must be in (0, 1] (1 turns it off)"),
            (self.head_lr is None or self.head_lr > 0, "--head-lr", "must be positive"),
            (
                self.pretrain in (None, "instance-discrimination", "labels"),
                "--pretrain/--method",
                "must be instance-discrimination or labels (none: no first stage)",
            ),
            (0 < self.pretrain_share < 1, "--pretrain-share", "must be in (0, 1)"),
            (
                self.views >= 1 and (self.views >= 2 or self.infonce == 0),
                "--views",
                "must be at least 1 (2 with --infonce)",
            ),
            (self.infonce >= 0, "--infonce", "must be >= 0"),
            (self.temperature > 0, "--temperature", "must be positive"),
            (0 <= self.instance_smoothing < 1, "--instance-smoothing", "must be in [0, 1)"),
            (self.instance_init in ("random", "features"), "--instance-init", "must be random or features"),
            (
                len(self.pretrain_crop_scale) == 2
                and 0 < self.pretrain_crop_scale[0] <= self.pretrain_crop_scale[1] <= 1,
                "--pretrain-crop-scale",
                "needs MIN,MAX with 0 < MIN <= MAX <= 1",
            ),
            (self.local_crops >= 0, "--local-crops", "must be >= 0 (0 turns multi-crop off)"),
            (self.knn_every >= 0, "--knn-every", "must be >= 0 (0 turns the kNN report off)"),
            (
                len(self.local_crop_scale) == 2 and 0 < self.local_crop_scale[0] <= self.local_crop_scale[1] <= 1,
                "--local-crop-scale",
                "needs MIN,MAX with 0 < MIN <= MAX <= 1",
            ),
            (
                self.local_crop_size is None
                or (self.local_crop_size > 0 and (not self.patch_size or self.local_crop_size % self.patch_size == 0)),
                "--local-crop-size",
                f"must be a positive multiple of --patch-size ({self.patch_size})",
            ),
            ((self.mean is None) == (self.std is None), "--mean/--std", "must be given together"),
            (self.std is None or all(s > 0 for s in self.std), "--std", "values must be positive"),
            (
                self.model == "auto" or self.model in ALIASES or self.model in model_names(),
                "--model",
                f"must be auto or one of {', '.join(model_names())}",
            ),
            (self.img_size is None or self.img_size > 0, "--img-size", "must be positive"),
            (
                self.pretrain_img_size is None
                or (
                    self.pretrain_img_size > 0
                    and (not self.patch_size or self.pretrain_img_size % self.patch_size == 0)
                ),
                "--pretrain-img-size",
                f"must be a positive multiple of --patch-size ({self.patch_size})",
            ),
            (self.patch_size is None or self.patch_size > 0, "--patch-size", "must be positive"),
        ]
        for ok, option, message in checks:
            if not ok:
                raise ConfigError(f"{option} {message} (got {getattr(self, _attr(option), '')})".rstrip())
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: Path, extra: dict[str, Any] | None = None) -> None:
        """Write the config (plus resolved values in ``extra``) as YAML."""
        data = {"train": self.to_dict(), **(extra or {})}
        atomic_write_bytes(path, yaml.safe_dump(data, sort_keys=False).encode())


SCHEDULES = ("cosine", "step", "multistep", "constant")
# the options of `train --pretrain`'s first stage and the pretraining options they become there
# (and in `vitrain pretrain --recipe R`, unless given); a None first-stage value keeps the option
FIRST_STAGE = {"mixup": "pretrain_mixup", "cutmix": "pretrain_cutmix", "img_size": "pretrain_img_size"}


def parse_head(spec: str) -> tuple[int, float]:
    """``linear`` -> (0, 0.0); ``mlp:512:0.3`` -> (512, 0.3): the hidden units and dropout of the head."""
    if spec == "linear":
        return 0, 0.0
    kind, _, rest = spec.partition(":")
    hidden, _, dropout = rest.partition(":")
    if kind != "mlp" or not hidden.isdigit() or int(hidden) < 1:
        raise ValueError(spec)
    value = float(dropout) if dropout else 0.0
    if not 0 <= value < 1:
        raise ValueError(spec)
    return int(hidden), value


def _valid_head(spec: str) -> bool:
    try:
        parse_head(spec)
    except ValueError:
        return False
    return True


def _attr(option: str) -> str:
    return option.split("/")[0].lstrip("-").replace("-", "_")


def comma_list(value: str) -> list[str]:
    """``"a, b,c"`` -> ``["a", "b", "c"]`` (empty items dropped), as list options are written on the command line."""
    return [v.strip() for v in value.split(",") if v.strip()]


def _coerce(name: str, hint: Any, value: Any) -> Any:
    """Check a YAML value against the field's type, converting ints to floats where expected."""
    origin = get_origin(hint)
    if origin is not None and type(None) in get_args(hint):
        if value is None:
            return None
        hint = next(a for a in get_args(hint) if a is not type(None))
        origin = get_origin(hint)
    if origin is list:
        (item,) = get_args(hint)
        if isinstance(value, str):
            value = comma_list(value)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name}: expected a list, got {value!r}")
        return [_coerce(name, item, v) for v in value]
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{name}: expected true or false, got {value!r}")
    try:
        if hint is float and isinstance(value, (int, float, str)) and not isinstance(value, bool):
            return float(value)
        if hint is int and (isinstance(value, int) or (isinstance(value, str) and value.lstrip("-").isdigit())):
            return int(value)
        if hint is str and isinstance(value, (str, int, float)):
            return str(value)
    except ValueError:
        pass
    raise ConfigError(f"{name}: expected {hint.__name__}, got {value!r}")


def config_from_dict(values: dict[str, Any], base: TrainConfig | None = None) -> TrainConfig:
    """A :class:`TrainConfig` from ``base`` with ``values`` applied; unknown keys are errors."""
    hints = get_type_hints(TrainConfig)
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown option(s): {', '.join(unknown)}")
    merged = (base or TrainConfig()).to_dict()
    for key, value in values.items():
        merged[key] = _coerce(key, hints[key], value)
    return TrainConfig(**merged)


def layered_config(*layers: dict[str, Any]) -> TrainConfig:
    """Defaults < the named recipe's settings < each layer in turn (a config file, then flags).

    The recipe is whichever ``recipe`` the layers name last.
    """
    merged: dict[str, Any] = {}
    for layer in layers:
        merged.update(layer)
    base = None
    if merged.get("recipe"):
        from .recipes import get_recipe

        recipe = get_recipe(str(merged["recipe"]))
        try:
            base = config_from_dict(recipe.config)
        except ConfigError as err:  # a recipe file that names an option wrongly
            raise ConfigError(f"--recipe {recipe.name}: {err}") from None
    return config_from_dict(merged, base)


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML config: either flat options, or a saved run's ``config.yaml`` (``train:`` section)."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"--config {path}: no such file") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"--config {path}: not valid YAML ({err})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path}: expected a mapping of option: value")
    if isinstance(data.get("train"), dict):
        data = data["train"]
    values = {str(k).replace("-", "_"): v for k, v in data.items()}
    try:
        config_from_dict(values)  # unknown keys and wrong types are named with the file, before flags apply
    except ConfigError as err:
        raise ConfigError(f"--config {path}: {err}") from None
    return values
