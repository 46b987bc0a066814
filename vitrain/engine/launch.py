"""Starting ``train`` or ``pretrain``: the layered configuration, the options each refuses, the dispatch.

The command line and the Python API (:mod:`vitrain.api`) both come through here, so they
resolve the same defaults and raise the same errors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from ..config import (
    FIRST_STAGE,
    ConfigError,
    TrainConfig,
    config_from_dict,
    layered_config,
    load_config_file,
    options,
)
from .autorecipe import auto_applies

# which command takes which option is declared with the option (vitrain/config/train.py)
_OPTIONS = options(TrainConfig)
# options that may differ when a run is resumed: they change where and how fast it runs, not what it computes
RESUME_OVERRIDABLE = {o.name for o in _OPTIONS if o.resumable}
# options of `vitrain train` that `vitrain pretrain` (which shares its parser) has no use for
PRETRAIN_UNUSED = tuple(o.name for o in _OPTIONS if "pretrain" not in o.commands)
# options of the instance-discrimination task, which `vitrain train --pretrain labels` has no use for
INSTANCE_ONLY = tuple(o.name for o in _OPTIONS if o.scope == "instance")
# options of the first stage that `vitrain train` without --pretrain has no use for
PRETRAIN_ONLY = tuple(o.name for o in _OPTIONS if o.scope is not None)


def as_flags(given: Iterable[str], names: Iterable[str]) -> str:
    """Those of ``names`` that were given, as flags (``--views, --knn-every``), or ""."""
    given = set(given)
    return ", ".join("--" + name.replace("_", "-") for name in names if name in given)


def resolve_config(
    given: dict[str, Any],
    *,
    config_file: str | Path | None = None,
    resume: str | Path | None = None,
    command: str = "train",
) -> tuple[TrainConfig, bool]:
    """Merge defaults < recipe < ``config_file`` < ``given`` (or the resumed run's saved config).

    ``given`` holds only the options the user set, by field name. ``resume`` is a run folder to
    continue, or ``"auto"``: continue the run in ``--out`` if it has committed an epoch (its
    settings must be the given ones), else start it there. Returns the configuration and
    whether the run resumes.
    """
    from .rundir import default_run_dir

    if resume == "auto":
        user = {**(load_config_file(config_file) if config_file else {}), **given}
        resume, unfinished_start = _resume_auto(user.get("out"))
        if resume is None:  # nothing to continue: start the run, as the same command would without --resume
            start = {**given, "overwrite": True} if unfinished_start else given
            return resolve_config(start, config_file=config_file, command=command)
        base = config_from_dict(load_config_file(Path(resume) / "config.yaml"))
        changed = changed_settings(user, base)
        if changed:
            raise ConfigError(
                f"--resume auto: {resume} holds a run started with other settings; changed: {', '.join(changed)} "
                f"(give the run's own settings to continue it, or another --out to start a new run)"
            )
        resumable = {k: v for k, v in given.items() if k in RESUME_OVERRIDABLE}
        return config_from_dict({**resumable, "out": str(resume)}, base), True
    if resume:
        saved = Path(resume) / "config.yaml"
        if not saved.is_file():
            raise ConfigError(f"--resume {resume}: no config.yaml there, so it is not a vitrain run folder")
        fixed = sorted(set(given) - RESUME_OVERRIDABLE - {"out"})
        if fixed:
            raise ConfigError(
                "--resume continues the saved configuration; these options cannot change: "
                + ", ".join("--" + k.replace("_", "-") for k in fixed)
            )
        base = config_from_dict(load_config_file(saved))
        return config_from_dict({**given, "out": str(resume)}, base), True
    file_values = load_config_file(config_file) if config_file else {}
    cfg = layered_config(file_values, given)
    user = {**file_values, **given}
    if cfg.stem == "patch" and "stem_width" not in user:
        cfg.stem_width = None  # a recipe's conv-stem width means nothing to the patch stem the user chose
    if command == "train" and user.get("recipe") in (None, "auto") and auto_applies(user):
        cfg.recipe = "auto"  # chosen once the data has loaded (vitrain/engine/autorecipe.py)
        cfg._user_settings = frozenset(user)  # what a recipe may not override; read by launch()
    elif cfg.recipe == "auto":
        cfg.recipe = None  # the user chose the model
    if command == "pretrain":  # a recipe's first-stage settings are this command's own, unless set
        for own, first_stage in FIRST_STAGE.items():
            if own not in given and own not in file_values and getattr(cfg, first_stage) is not None:
                setattr(cfg, own, getattr(cfg, first_stage))
    if cfg.pretrain == "none":
        cfg.pretrain = None
    if cfg.out is None:
        cfg.out = default_run_dir(cfg.data)
    return cfg, False


def _resume_auto(out: str | Path | None) -> tuple[Path | None, bool]:
    """``--resume auto`` with ``--out`` ``out``: (the run folder to continue, when it holds a committed
    epoch, else None; whether it holds only the start of a run that never committed an epoch).

    Such a start (killed while loading its data or during its first epoch: a config.yaml and
    TensorBoard events) is replaced, since there is nothing in it to continue; a folder with
    other run files and no training state is left to the usual check, which refuses it.
    """
    from .rundir import RUN_FILES
    from .state import STATE_FILE

    if not out:
        raise ConfigError("--resume auto needs --out DIR: the folder the run is started in, or continued from")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file, not a folder")
    if (out / STATE_FILE).is_file() and (out / "config.yaml").is_file():
        return out, False
    return None, [name for name in RUN_FILES if (out / name).exists()] == ["config.yaml"]


def changed_settings(user: dict[str, Any], saved: TrainConfig) -> list[str]:
    """The options in ``user`` (given values, by field name) whose values differ from the saved run's, as flags.

    Options that may change on resuming (where and how fast it runs) and ``out`` are not compared.
    """
    fixed = {k: v for k, v in user.items() if k not in RESUME_OVERRIDABLE and k not in ("out", "overwrite")}
    wanted = config_from_dict(fixed, saved)  # the saved run with these values: equal where nothing changed
    return ["--" + k.replace("_", "-") for k in sorted(fixed) if getattr(wanted, k) != getattr(saved, k)]


def check_options(command: str, cfg: TrainConfig, given: Iterable[str]) -> None:
    """Refuse, by name, the given options that this kind of run has no use for."""
    given = set(given)
    if command == "pretrain":
        unused = as_flags(given, PRETRAIN_UNUSED)
        if unused:
            raise ConfigError(
                f"vitrain pretrain does not use {unused} (options of vitrain train; the "
                "pretraining crops are --pretrain-crop-scale, its input size --img-size)"
            )
        if cfg.pretrain == "labels":
            raise ConfigError(
                "vitrain pretrain's method is instance-discrimination; a first stage on the "
                "labels is vitrain train --pretrain labels"
            )
    elif cfg.pretrain:
        unused = as_flags(given, INSTANCE_ONLY) if cfg.pretrain == "labels" else ""
        if unused:
            raise ConfigError(
                f"{unused} only apply to --pretrain instance-discrimination; --pretrain labels "
                "trains its first stage with the training options (--mixup, --crop-scale, ...) "
                "at --pretrain-img-size"
            )
    else:
        unused = as_flags(given, PRETRAIN_ONLY)
        if unused:
            raise ConfigError(
                f"{unused} only apply to pretraining: add --pretrain instance-discrimination, or use vitrain pretrain"
            )


def launch(
    command: str, cfg: TrainConfig, resume: bool, given: Iterable[str], invocation: str | None = None
) -> dict[str, Any]:
    """Check the options, then run ``vitrain pretrain``, a two-stage ``train --pretrain`` or ``train``.

    ``invocation`` (the command line, or the Python call) goes into a trained run's report
    as ``command``. Returns the run's report (also in its ``report.json``).
    """
    from .pretrain import pretrain, pretrain_then_train
    from .train import train

    check_options(command, cfg, given)
    if command == "pretrain":
        return pretrain(cfg, resume=resume)
    if cfg.pretrain:
        return pretrain_then_train(cfg, resume=resume, invocation=invocation)
    return train(cfg, resume=resume, user_settings=getattr(cfg, "_user_settings", None), invocation=invocation)
