"""The checks of option values: a few constructors for the usual ones, and those that read other fields.

A check is a callable ``(value, cfg) -> message or None``; the message follows the option's name in
the error (``--epochs must be at least 1 (got 0)``). A value of None passes the constructed checks:
it means "not set", and is resolved later from the data or the weights.
"""

from __future__ import annotations

import os
import re
from typing import Any, Callable, Optional, Sequence

from ..models.registry import ALIASES, model_names

# what is wrong with a value, or None; it gets the value and the whole config (for cross-field checks)
Check = Callable[[Any, Any], Optional[str]]


def rule(ok: Callable[[Any], bool], message: str) -> Check:
    """A check of the value alone: ``message`` where ``ok(value)`` is false."""
    return lambda value, cfg: None if value is None or ok(value) else message


def one_of(choices: Sequence[Any]) -> Check:
    """The value must be one of ``choices`` (``must be auto, on or off``)."""
    names = [str(c) for c in choices]
    listed = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"
    return rule(lambda v: v in choices, f"must be {listed}")


def at_least(low: int) -> Check:
    """``must be at least LOW``."""
    return rule(lambda v: v >= low, f"must be at least {low}")


def positive(message: str = "must be positive") -> Check:
    """The value must be > 0."""
    return rule(lambda v: v > 0, message)


def non_negative(note: str = "", message: str = "must be >= 0") -> Check:
    """The value must be >= 0; ``note`` says what 0 means, e.g. `` (0 turns clipping off)``."""
    return rule(lambda v: v >= 0, message + note)


def in_range(interval: str, *, what: str = "must be", note: str = "") -> Check:
    """The value must lie in ``interval``, written as in the message: ``"(0, 1]"``, ``"[0, 1)"``."""
    low, high = (float(x) for x in interval[1:-1].split(","))
    above = (lambda v: v >= low) if interval[0] == "[" else (lambda v: v > low)
    below = (lambda v: v <= high) if interval[-1] == "]" else (lambda v: v < high)
    return rule(lambda v: above(v) and below(v), f"{what} in {interval}{note}")


def min_max(at_most: float | None = None) -> Check:
    """Two values ``MIN,MAX`` with ``0 < MIN <= MAX`` (``<= at_most`` where given)."""
    bound = "" if at_most is None else f" <= {at_most:g}"
    return rule(
        lambda v: len(v) == 2 and 0 < v[0] <= v[1] and (at_most is None or v[1] <= at_most),
        f"needs MIN,MAX with 0 < MIN <= MAX{bound}",
    )


# the checks of particular options of TrainConfig; those that read `cfg` are cross-field checks


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


def check_device(value: str, cfg: Any) -> str | None:
    """--device: auto, cpu, cuda or cuda:N."""
    if value in ("auto", "cpu", "cuda") or value.startswith("cuda:"):
        return None
    return "must be auto, cpu, cuda or cuda:N"


def check_workers(value: int | None, cfg: Any) -> str | None:
    """--workers: from 0 to 4x this machine's CPUs (more is a typo, not a setting)."""
    if value is not None and value < 0:
        return "must be >= 0"
    if value is not None and value > 4 * (os.cpu_count() or 1):
        return f"is more than 4x this machine's {os.cpu_count()} CPUs"
    return None


def check_model(value: str, cfg: Any) -> str | None:
    """--model: auto, or a preset of the model registry."""
    if value == "auto" or value in ALIASES or value in model_names():
        return None
    return f"must be auto or one of {', '.join(model_names())}"


def multiple_of_patch(value: int | None, cfg: Any) -> str | None:
    """An input size that the patch grid must divide (when --patch-size is set)."""
    if value is None or (value > 0 and (not cfg.patch_size or value % cfg.patch_size == 0)):
        return None
    return f"must be a positive multiple of --patch-size ({cfg.patch_size})"


def views_with_infonce(value: int, cfg: Any) -> str | None:
    """--views: at least 1, and 2 when --infonce contrasts two views."""
    return None if value >= 1 and (value >= 2 or cfg.infonce == 0) else "must be at least 1 (2 with --infonce)"


def with_std(value: list[float] | None, cfg: Any) -> str | None:
    """--mean: given exactly when --std is."""
    return None if (value is None) == (cfg.std is None) else "must be given together"


# --freeze: none, backbone, or how many of the last blocks train
FREEZE = rule(
    lambda v: v in ("none", "backbone") or v.isdigit(), "must be none, backbone or a number of blocks to train"
)
HEAD = rule(_valid_head, "must be linear or mlp:HIDDEN[:DROPOUT], e.g. mlp:512:0.3")
ALPHA = non_negative(" (0 turns it off)", message="alpha must be >= 0")  # MixUp and CutMix alphas
CROP_SCALE = min_max(at_most=1)  # the area range of a random crop


def parse_save_every(text: str | None) -> tuple[float | None, int | None]:
    """``--save-every``: ``30`` or ``30m`` (minutes of training), ``2h``, or ``500steps``; (minutes, steps)."""
    if text is None:
        return None, None
    found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(m|min|minutes?|h|hours?|steps?)?\s*", str(text))
    if not found or float(found[1]) <= 0:
        raise ValueError(f"--save-every {text}: expected minutes (30, 30m, 1.5h) or steps (500steps)")
    value, unit = float(found[1]), (found[2] or "m")
    if unit.startswith("step"):
        if value != int(value):
            raise ValueError(f"--save-every {text}: a whole number of steps")
        return None, int(value)
    return (value * 60 if unit.startswith("h") else value), None


def check_save_every(value: Any, cfg: Any) -> Optional[str]:
    """``--save-every``: minutes or steps, with the PyTorch backend."""
    if value is None:
        return None
    try:
        parse_save_every(value)
    except ValueError:
        return "must be minutes (30, 30m, 1.5h) or steps (500steps)"
    if cfg.backend == "jax":
        return "needs --backend torch (the jax backend saves at the end of each epoch)"
    return None


def check_stem_init(value: Any, cfg: Any) -> Optional[str]:
    """``--stem-init``: random or pca, and pca only for a model trained from scratch."""
    if value not in ("random", "pca"):
        return "must be random or pca"
    if value == "pca" and cfg.pretrained:
        return "pca is for a model trained from scratch; with --pretrained, the pretrained weights start the stem"
    return None


def parse_bit_depth(value: Any) -> str | int:
    """``--bit-depth``: ``auto``, or a number of bits from 8 to 16."""
    if str(value) == "auto":
        return "auto"
    if str(value).isdigit() and 8 <= int(value) <= 16:
        return int(value)
    raise ValueError(f"--bit-depth {value}: expected auto or a number of bits from 8 to 16")


def check_bit_depth(value: Any, cfg: Any) -> Optional[str]:  # noqa: ARG001 - a check's signature
    try:
        parse_bit_depth(value)
    except ValueError:
        return "must be auto or a number of bits from 8 to 16 (12 for 12-bit scans stored in 16 bits)"
    return None
