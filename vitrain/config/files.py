"""Reading options from YAML files and dicts: type coercion, recipes and config files layered in order."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import yaml

from ..errors import ConfigError
from .train import TrainConfig


def comma_list(value: str) -> list[str]:
    """``"a, b,c"`` -> ``["a", "b", "c"]`` (empty items dropped), as list options are written on the command line."""
    return [v.strip() for v in value.split(",") if v.strip()]


# settings that were true/false in earlier versions, and what those values mean now
FORMER_BOOLS = {"dedupe": {True: "exact", False: "off"}}


def _coerce(name: str, hint: Any, value: Any) -> Any:
    """Check a YAML value against the field's type, converting ints to floats where expected."""
    if isinstance(value, bool) and name in FORMER_BOOLS:  # a config.yaml written by an earlier version
        return FORMER_BOOLS[name][value]
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
    if merged.get("recipe") and merged["recipe"] != "auto":  # auto: chosen from the data (engine/autorecipe.py)
        from ..recipes import get_recipe

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
