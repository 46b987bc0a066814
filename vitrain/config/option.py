"""How an option of ``vitrain train`` / ``vitrain pretrain`` is declared: a dataclass field with its metadata.

Each field of :class:`~vitrain.config.TrainConfig` is declared with :func:`option`, which records
its help, its check, its choices and the commands that take it. The command-line parser
(:mod:`vitrain.cli.parser`), :func:`validate`, the docs' reference pages and the options each
command refuses (:mod:`vitrain.engine.launch`) are all generated from these declarations.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import cache
from typing import Any, Sequence

from ..errors import ConfigError
from .checks import Check, one_of

COMMANDS = ("train", "pretrain")
# scope: "first-stage" options only apply to pretraining (vitrain pretrain, or train --pretrain);
# "instance" ones only to instance-discrimination pretraining (not to train --pretrain labels)
SCOPES = (None, "first-stage", "instance")


@dataclass(frozen=True)
class Option:
    """What the command line, the docs and :func:`validate` know about one config field.

    Attributes:
        help: what the option does, for ``--help`` and the docs (the default is added to it there).
        group: the ``--help`` section it is listed in; None: the top-level options.
        check: what is wrong with a value (see :mod:`vitrain.config.checks`); None: any value of its type.
        choices: the values the flag accepts (also checked in YAML files and the Python API).
        flag: how it is spelled on the command line; "" for a setting that has no flag.
        metavar: the flag's placeholder in ``--help``.
        commands: the commands that use it (the others refuse it by name).
        scope: None, or "first-stage" / "instance" (see ``SCOPES``).
        resumable: may change when a run is resumed (it changes where and how fast it runs, not what).
        label: what its errors call it (default: ``flag``), e.g. ``--mean/--std``.
        const: the value of the flag given without one (``--dedupe`` means ``--dedupe exact``); None: the
            flag always takes a value (or none, for a bool).
        name: the field's name (filled in by :func:`options`).
    """

    help: str
    group: str | None
    check: Check | None = None
    choices: tuple[Any, ...] | None = None
    flag: str | None = None
    metavar: str | None = None
    commands: tuple[str, ...] = COMMANDS
    scope: str | None = None
    resumable: bool = False
    label: str | None = None
    const: Any = None
    name: str = ""


def option(
    default: Any,
    help: str,
    *,
    group: str | None,
    check: Check | None = None,
    choices: Sequence[Any] | None = None,
    flag: str | None = None,
    metavar: str | None = None,
    commands: tuple[str, ...] = COMMANDS,
    scope: str | None = None,
    resumable: bool = False,
    label: str | None = None,
    const: Any = None,
) -> Any:
    """A dataclass field declaring one option; its type is the field's annotation.

    ``choices`` without a ``check`` also makes the check: the value must be one of them. ``flag``
    defaults to ``--NAME-WITH-DASHES``; a bool whose default is true is switched off by its flag
    (``flag="--no-download"``). A list default is copied for every instance.
    """
    if not set(commands) <= set(COMMANDS) or scope not in SCOPES:
        raise ValueError(f"option: commands must be among {COMMANDS} and scope one of {SCOPES}")
    if choices is not None:
        choices = tuple(choices)
        if check is None:
            check = one_of(choices)
    meta = Option(help, group, check, choices, flag, metavar, tuple(commands), scope, resumable, label, const)
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata={"option": meta})
    return dataclasses.field(default=default, metadata={"option": meta})


@cache
def options(config_class: type) -> tuple[Option, ...]:
    """The options of a dataclass declared with :func:`option`, in field order, with their names and flags."""
    found = []
    for f in dataclasses.fields(config_class):
        meta: Option = f.metadata["option"]
        flag = meta.flag if meta.flag is not None else "--" + f.name.replace("_", "-")
        found.append(dataclasses.replace(meta, name=f.name, flag=flag))
    return tuple(found)


def validate(cfg: Any) -> None:
    """Raise :class:`ConfigError` naming the first option (in field order) whose value its check refuses."""
    for opt in options(type(cfg)):
        if opt.check is None:
            continue
        value = getattr(cfg, opt.name)
        message = opt.check(value, cfg)
        if message:
            raise ConfigError(f"{opt.label or opt.flag or opt.name} {message} (got {value})")


def format_value(value: Any) -> str:
    """A value as it is written on the command line: ``0.001``, ``0.08,1``, ``auto``."""
    if isinstance(value, (list, tuple)):
        return ",".join(format_value(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)
