"""The ``vitrain`` command line: ``train``, ``pretrain``, ``eval``, ``predict``, ``export``, ``card``, ``push``,
``serve``, ``bench``, ``models`` and ``recipes``.

``parser.py`` builds the parser (the ``train``/``pretrain`` options generated from
:class:`~vitrain.config.TrainConfig`); ``tools.py`` runs the commands other than training.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
from typing import Sequence

from ..config import ConfigError, TrainConfig
from .parser import build_parser
from .tools import models_table, recipes_list, run_tool

__all__ = ["build_parser", "main", "train_config_from_args"]


def _given(args: argparse.Namespace) -> dict:
    """The options given on the command line (the parser leaves out those that were not), by field name."""
    return {k: v for k, v in vars(args).items() if k not in ("command", "config", "resume")}


def train_config_from_args(args: argparse.Namespace) -> tuple[TrainConfig, bool]:
    """Merge defaults < recipe < --config file < flags (or the resumed run's saved config); returns (config, resume)."""
    from ..engine.launch import resolve_config

    return resolve_config(_given(args), config_file=args.config, resume=args.resume, command=args.command)


def _on_sigterm(signum, frame):  # noqa: ARG001 - signal handler signature
    """A SIGTERM (a scheduler or spot machine about to stop the job): a running epoch saves at its next
    step and stops; elsewhere, or at a second SIGTERM, stop like Ctrl-C (every completed epoch is saved)."""
    from ..engine.midepoch import request_stop

    if not request_stop():
        raise KeyboardInterrupt


def _worker_message(err: Exception) -> str:
    """The error's own message, also when a DataLoader worker raised it.

    DataLoader re-raises a worker's exception as the same type with the worker's whole
    traceback as its message; its last line is ``module.Type: original message``.
    """
    text = str(err)
    if "Original Traceback" not in text:
        return text
    last = text.strip().splitlines()[-1]
    return last.split(": ", 1)[1] if ": " in last else last


def _continue_with(args: argparse.Namespace, out: str | None) -> str:
    """The command that continues an interrupted run: the same one under ``--resume auto``."""
    if args.resume == "auto":
        return "the same command (it has --resume auto)"
    return f"vitrain {args.command} --resume {out or 'RUN_FOLDER'}"


def _command_line(argv: Sequence[str] | None) -> str:
    """The command as typed (recorded in the run's report); under torchrun, as its launch (the rendezvous
    options, which each site chooses, left out)."""
    words = list(sys.argv[1:] if argv is None else argv)
    world, local = int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    if world > 1:
        nodes = f"--nnodes {world // local} " if world > local else ""
        return f"torchrun {nodes}--nproc-per-node {local} -m vitrain {shlex.join(words)}"
    return shlex.join(["vitrain", *words])


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``vitrain`` console script and ``python -m vitrain``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    if args.command == "models":
        print(models_table())
        return 0
    if args.command == "recipes":
        print(recipes_list())
        return 0

    from ..checkpoint import CheckpointError
    from ..data.archive import ArchiveError
    from ..data.images import ImageReadError
    from ..data.sources import SKIP_BAD_IMAGES_HINT, DataError
    from ..engine.card import CardError
    from ..engine.export import ExportError
    from ..engine.push import PushError

    if args.command not in ("train", "pretrain"):
        try:
            return run_tool(args)
        except (
            ConfigError,
            DataError,
            ArchiveError,
            ImageReadError,
            CheckpointError,
            ExportError,
            CardError,
            PushError,
            ValueError,
        ) as err:
            print(f"vitrain: error: {err}", file=sys.stderr)
            return 2
        except OSError as err:  # an output that cannot be written: disk full, permissions
            print(f"vitrain: error: {err}", file=sys.stderr)
            return 1

    from ..engine.distributed import PeerLost, from_environment, waiting_in
    from ..engine.launch import launch
    from ..engine.midepoch import StopRequested
    from ..engine.train import TrainingError

    signal.signal(signal.SIGTERM, _on_sigterm)
    out = None
    try:
        cfg, resume = train_config_from_args(args)
        out = cfg.out
        with waiting_in(f"vitrain {args.command}", from_environment(cfg.dist_timeout)):
            launch(args.command, cfg, resume, _given(args), invocation=_command_line(argv))
    except ImageReadError as err:  # a file that passed the header check but does not decode, mid-epoch
        message = _worker_message(err)
        if SKIP_BAD_IMAGES_HINT not in message:
            message += f" ({SKIP_BAD_IMAGES_HINT})"
        print(f"vitrain: error: {message}", file=sys.stderr)
        return 2
    except (ConfigError, DataError, ArchiveError, CheckpointError) as err:
        print(f"vitrain: error: {err}", file=sys.stderr)
        return 2
    except TrainingError as err:
        print(f"vitrain: training stopped: {err}", file=sys.stderr)
        return 1
    except PeerLost as err:
        print(
            f"vitrain: training stopped: {err}. Every completed epoch is saved; continue with: "
            f"{_continue_with(args, out)}",
            file=sys.stderr,
        )
        return 1
    except OSError as err:  # disk full, permissions: the files of the last completed epoch are intact
        where = f"; continue with: {_continue_with(args, out)}" if out else ""
        print(f"vitrain: error: {err}. Files already written are intact{where}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as err:
        saved = f"{err}" if isinstance(err, StopRequested) else "interrupted; every completed epoch is saved"
        print(f"\nvitrain: {saved}. Continue with: {_continue_with(args, out)}", file=sys.stderr)
        return 130
    finally:
        from ..engine.distributed import shutdown

        shutdown()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
