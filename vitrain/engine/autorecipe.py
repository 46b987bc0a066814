"""``--recipe auto`` (the default): the recipe and batch size that fit the data, and why.

A user who names no recipe and no model gets one picked from what the data is, once it has
loaded: its typical image side, its number of training images and channels.

| the data | the recipe |
|---|---|
| images of at most 16 px (``digits``) | none: the defaults, whose ``vit-digits`` model is made for them |
| images of 17 to 48 px (MNIST, CIFAR) | ``cifar10-best`` (32 px input, convolutional stem, 16 tokens) |
| larger images (a folder of photos or scans) | ``folder-best`` (64 px input, random resized crops) |

The batch size is the recipe's, halved until an epoch has at least
:data:`MIN_STEPS_PER_EPOCH` steps (a few hundred images would otherwise train a handful
of steps per epoch). The recipe's horizontal flips are left to the data (off for digits,
whose labels a mirror changes), and so is its flip test-time augmentation. Settings the
user gave (flags, a ``--config`` file) still win; naming a model option (``--model``,
``--img-size``, ``--embed-dim``, ...), a recipe, ``--pretrained`` or ``--pretrain`` turns
the choice off.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable

from ..config import TrainConfig, config_from_dict
from ..data.sources import DataSplits
from ..recipes import get_recipe

MIN_STEPS_PER_EPOCH = 10
MIN_BATCH = 8
# options that say which model to train: given any, the user chose the model and auto picks nothing
MODEL_OPTIONS = (
    "model",
    "img_size",
    "patch_size",
    "embed_dim",
    "depth",
    "num_heads",
    "mlp_dim",
    "stem",
    "stem_width",
    "pool",
    "pretrained",
    "pretrain",
)
LEFT_TO_THE_DATA = ("hflip",)  # recipe settings that auto leaves to the data
KEPT = ("data", "out")  # what the run already has from the command, given or not
SPLIT_OPTIONS = ("val_fraction", "test_fraction", "split_seed")  # a change here means loading the data again


@dataclasses.dataclass(frozen=True)
class RecipeChoice:
    """The recipe ``--recipe auto`` chose (``name``; None: the defaults), the batch size, and why."""

    name: str | None
    batch_size: int | None
    reason: str
    flips: bool = True  # whether a mirror image keeps the label: else the recipe's flip TTA is dropped too

    def to_dict(self) -> dict[str, Any]:
        """``report.json``'s ``recipe``."""
        return {"setting": "auto", "name": self.name, "batch_size": self.batch_size, "reason": self.reason}


def auto_applies(user: Iterable[str]) -> bool:
    """Whether ``--recipe auto`` chooses, given the names of the settings the user gave."""
    user = set(user)
    return not (user & set(MODEL_OPTIONS))


def choose_recipe(splits: DataSplits) -> RecipeChoice:
    """The recipe and batch size for ``splits`` (see the module docstring)."""
    side, images = splits.native_size, len(splits.train)
    what = f"{side} px images, {images:,} training images"
    if side <= 16:
        return RecipeChoice(None, None, f"auto: {what}; the defaults' model is made for images this small")
    name = "cifar10-best" if side <= 48 else "folder-best"
    batch = given = int(get_recipe(name).config.get("batch_size", 32))
    while batch > MIN_BATCH and images // batch < MIN_STEPS_PER_EPOCH:
        batch //= 2
    fits = "small images, many of them" if side <= 48 else "larger images, trained at 64 px"
    halved = f"; batch {batch}, the recipe's {given} halved for more steps per epoch" if batch < given else ""
    return RecipeChoice(name, batch, f"auto: {what} ({fits}){halved}", splits.hflip_ok)


def apply_recipe(cfg: TrainConfig, user: Iterable[str], choice: RecipeChoice) -> TrainConfig:
    """``cfg`` rebuilt on ``choice``'s recipe: the recipe's settings (less those left to the data),
    the chosen batch size, then every setting in ``user`` as ``cfg`` has it."""
    if choice.name is None:
        return dataclasses.replace(cfg, recipe=None)
    recipe = {k: v for k, v in get_recipe(choice.name).config.items() if k not in LEFT_TO_THE_DATA}
    if not choice.flips:
        recipe.pop("tta", None)  # the mirror images of data whose labels a mirror changes mean nothing
    base = config_from_dict({**recipe, "batch_size": choice.batch_size})
    kept = {name: getattr(cfg, name) for name in {*user, *KEPT} if hasattr(cfg, name)}
    kept.pop("recipe", None)
    return dataclasses.replace(base, **kept, recipe=choice.name)
