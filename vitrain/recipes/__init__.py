"""Recipes: named, typed training configurations that state what they reach and how to run them.

Each module in this package defines ``RECIPE``, a :class:`Recipe`. ``vitrain train
--recipe NAME`` starts from the recipe's settings; a ``--config`` file and command-line
flags still override any of them.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError


@dataclass(frozen=True)
class Recipe:
    """A training configuration with its provenance.

    Attributes:
        name: what ``--recipe`` takes.
        summary: one line on what it is.
        reference: the result it is known for, and where that number comes from.
        command: the exact command that runs it.
        config: ``TrainConfig`` field values (checked against ``TrainConfig`` when loaded).
    """

    name: str
    summary: str
    reference: str
    command: str
    config: dict[str, Any] = field(default_factory=dict)


def _load() -> dict[str, Recipe]:
    # each recipe's config is checked against TrainConfig where it is used (vitrain.config.layered_config)
    found: dict[str, Recipe] = {}
    for info in pkgutil.iter_modules(__path__):
        recipe = importlib.import_module(f"{__name__}.{info.name}").RECIPE
        found[recipe.name] = recipe
    return found


_RECIPES: dict[str, Recipe] | None = None


def recipes() -> dict[str, Recipe]:
    """Every recipe, by name."""
    global _RECIPES
    if _RECIPES is None:
        _RECIPES = _load()
    return _RECIPES


def get_recipe(name: str) -> Recipe:
    """The recipe called ``name``; an unknown name is an error that lists the known ones."""
    table = recipes()
    if name not in table:
        raise ConfigError(f"--recipe {name}: unknown recipe; choose one of {', '.join(sorted(table))}")
    return table[name]
