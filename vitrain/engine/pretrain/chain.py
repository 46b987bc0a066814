"""``vitrain train --pretrain``: a first stage (pretraining, or training on the labels at a small input),
then fine-tuning from it, in one run folder."""

from __future__ import annotations

import dataclasses
import functools
import json
import time
from pathlib import Path
from typing import Any

from ...config import FIRST_STAGE, ConfigError, TrainConfig, load_config_file
from ...models.registry import resolve_config
from ...report import write_report
from .. import distributed
from ..device import resolve_device
from ..rundir import RUN_FILES, agree_on_run_dir, check_run_dir, start_run_dir
from ..setup import quiet
from ..state import STATE_FILE
from ..train import train
from .loop import PRETRAIN_FILES, pretrain


def pretrain_then_train(
    cfg: TrainConfig, resume: bool = False, log=print, invocation: str | None = None
) -> dict[str, Any]:
    """``vitrain train`` with ``--pretrain``: a first stage into ``OUT/pretrain``, then fine-tuning
    from that model into ``OUT``. The first stage is instance-discrimination pretraining on the
    training images (``--pretrain instance-discrimination``), or training on the labels
    (``--pretrain labels``: the run's own options, at ``pretrain_img_size``; the second stage
    keeps its classifier and continues at ``img_size`` with a new schedule).

    With ``--time-budget`` the first stage gets ``pretrain_share`` of it and the second what is
    left; otherwise the first stage runs ``pretrain_share`` x ``--epochs`` epochs and the second
    the rest. The first stage mixes instances with ``pretrain_mixup``/``pretrain_cutmix`` and runs
    at ``pretrain_img_size`` (default ``img_size``); the second mixes images with
    ``mixup``/``cutmix`` and resamples the position embeddings when the sizes differ. A
    ``labels`` first stage mixes images with ``mixup``/``cutmix`` too.

    ``OUT/config.yaml`` holds the whole run's config until the second stage starts, then that
    stage's (the same, plus ``pretrained: OUT/pretrain`` and its own epochs or budget). So
    ``resume`` knows the stage from ``cfg.pretrained``: it continues an interrupted first stage
    and then runs the second (with ``1 - pretrain_share`` of the budget), or continues (or
    restarts, if no epoch of it completed) the second.

    Under ``torchrun`` (``--pretrain labels`` only: instance pretraining runs in one process)
    every rank runs both stages; rank 0 logs and writes, the merged report included.
    """
    if distributed.from_environment().active and cfg.pretrain != "labels":  # before the folder is checked
        raise ConfigError(
            f"--pretrain {cfg.pretrain} runs in one process; start it without torchrun (or use "
            "--pretrain labels, which runs under torchrun)"
        )
    place = distributed.setup(resolve_device(cfg.device), cfg.dist_timeout)  # the stages find the process group up
    main = place.main
    if not main:
        log = quiet  # rank 0 speaks and writes for all
    cfg = agree_on_run_dir(cfg, place)
    out = Path(cfg.out)
    first_epochs = max(1, round(cfg.epochs * cfg.pretrain_share))
    started = time.perf_counter()
    if resume and cfg.pretrained:  # the second stage had started
        if (out / STATE_FILE).is_file():
            report = train(cfg, resume=True, log=log, invocation=invocation)
        else:
            log(f"no epoch of the fine-tuning stage completed; starting it again from {out / 'pretrain'}")
            report = train(dataclasses.replace(cfg, overwrite=True), log=log, invocation=invocation)
        return _merge_reports(out, report, started) if main else report
    if cfg.pretrained:
        raise ConfigError(f"--pretrain with --pretrained {cfg.pretrained}: the first stage starts from scratch")
    labels = cfg.pretrain == "labels"
    # a labels stage trains with the run's own mixing; only its input size is the first stage's
    first_stage = {"img_size": FIRST_STAGE["img_size"]} if labels else FIRST_STAGE
    stage = dataclasses.replace(
        cfg,
        out=str(out / "pretrain"),
        overwrite=True,
        epochs=first_epochs,
        time_budget=cfg.time_budget * cfg.pretrain_share if cfg.time_budget else None,
        pretrain=None if labels else cfg.pretrain,
        **{own: getattr(cfg, first) for own, first in first_stage.items() if getattr(cfg, first) is not None},
    )
    run_stage = functools.partial(train if labels else pretrain, log=log)  # the same signature
    name = "first (labels) stage" if labels else "pretraining stage"
    if cfg.pretrain_img_size and cfg.img_size and cfg.pretrain_img_size > cfg.img_size:
        log(
            f"note: the {name} runs at --pretrain-img-size {cfg.pretrain_img_size}, larger than "
            f"--img-size {cfg.img_size} (a recipe's value?); set --pretrain-img-size to change it"
        )
    elif labels and not cfg.pretrain_img_size:
        log(
            "note: the first (labels) stage runs at --img-size, so the two stages differ only in their schedules; "
            "--pretrain labels is meant with a smaller --pretrain-img-size"
        )
    if resume:
        if (out / "pretrain" / "report.json").is_file():
            log(f"the {name} in {out / 'pretrain'} is complete; starting the fine-tuning stage")
        elif (out / "pretrain" / STATE_FILE).is_file():
            run_stage(stage, resume=True)
        else:
            log(f"no epoch of the {name} completed; starting it again")
            run_stage(stage)
        remaining = cfg.time_budget * (1 - cfg.pretrain_share) if cfg.time_budget else None
    else:
        check_run_dir(cfg, resume=False)

        def start() -> None:  # once the data has loaded: an --overwrite never costs the old run for a typo
            start_run_dir(out)
            # an earlier first stage of the other kind leaves no file that the second stage could load
            for old in {*RUN_FILES, *PRETRAIN_FILES}:
                (out / "pretrain" / old).unlink(missing_ok=True)
            cfg.save(out / "config.yaml")  # what --resume reads should the first stage be interrupted

        run_stage(stage, on_start=start)
        spent = (time.perf_counter() - started) / 60
        remaining = cfg.time_budget - spent if cfg.time_budget else None
    # the first stage's weights define the model (a preset name would be refused next to them); its
    # input is --img-size, or the model's own size when the first stage ran at --pretrain-img-size
    first_model = load_config_file(out / "pretrain" / "config.yaml").get("model", "vit")
    second = dataclasses.replace(
        cfg,
        pretrained=str(out / "pretrain"),
        epochs=max(1, cfg.epochs - first_epochs),
        time_budget=remaining,
        overwrite=True,
        model="vit",
        img_size=cfg.img_size or resolve_config(first_model).img_size,
    )
    report = train(second, log=log, invocation=invocation)
    return _merge_reports(out, report, started) if main else report  # another rank's has no totals


def _merge_reports(out: Path, report: dict[str, Any], started: float) -> dict[str, Any]:
    """The fine-tuning report with the pretraining stage's report in it, written to ``OUT/report.json``."""
    report["pretraining"] = json.loads((out / "pretrain" / "report.json").read_text())
    report["fine_tuning_seconds"] = report["total_seconds"]
    report["total_seconds"] = round(time.perf_counter() - started, 2)  # both stages, in this process
    write_report(out / "report.json", report)
    return report
