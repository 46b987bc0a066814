"""How DataLoader worker processes start."""

from __future__ import annotations

import multiprocessing
import signal
import sys
from multiprocessing.context import BaseContext

# what the fork server imports once, so that the workers forked from it start in milliseconds
PRELOAD = ["torch", "PIL.Image", "vitrain.data.folders", "vitrain.data.memory", "vitrain.data.transforms"]


def worker_context(workers: int) -> BaseContext | None:
    """How ``workers`` DataLoader processes start: from a fork server once JAX is imported, else as by default.

    JAX's runtime runs threads of its own, and a process forked while one of them holds a lock
    can deadlock; a fork server is a clean process that the workers are forked from instead.
    """
    if not workers or "jax" not in sys.modules:
        return None
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    return context


def leave_sigterm_to_the_main_process(worker_id: int) -> None:  # noqa: ARG001 - DataLoader's worker_init_fn
    """A DataLoader worker ignores SIGTERM: a scheduler that signals every process of a job would otherwise
    kill the workers under the training loop, which saves and stops at its next step and then ends them."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
