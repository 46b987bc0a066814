"""Running on several processes with PyTorch's own distributed stack (``torchrun``).

``torchrun --nproc-per-node=N -m vitrain train ...`` starts N processes with ``RANK``,
``LOCAL_RANK`` and ``WORLD_SIZE`` set; :func:`setup` joins them into one process group
(NCCL on GPUs, gloo on CPUs). Everything else is a thin layer over ``torch.distributed``:

* each rank trains on its own slice of every global batch (see
  :class:`vitrain.data.memory.MemoryLoader` and :class:`vitrain.data.sampling.SeededBatches`);
* evaluation splits are cut into disjoint, unpadded shards (``rank::world``), and the
  per-sample results are gathered back in dataset order, so counts are exact;
* only rank 0 writes files or logs.

A single process (no ``WORLD_SIZE``, or 1) runs exactly as without this module.
"""

from __future__ import annotations

import os
import re
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, Iterator

import torch
import torch.distributed as dist
from torch.utils.data import Dataset, Sampler

from ..place import Dist


class PeerLost(RuntimeError):
    """Another process stopped answering in a collective (hung, stopped, killed, or its machine lost)."""


# what gloo and NCCL say when a peer does not answer in time, or its connection is gone
_TIMED_OUT = re.compile(r"Timed out waiting|timed out|Watchdog caught collective operation timeout", re.I)
_GONE = re.compile(r"Connection closed by peer|Connection reset by peer|Broken pipe|Connection refused", re.I)


@contextmanager
def waiting_in(what: str, place: Dist) -> Iterator[None]:
    """Turn a collective's timeout (or a peer's lost connection) inside the block into :class:`PeerLost`
    naming ``what`` the process was doing; the innermost block names it."""
    try:
        yield
    except PeerLost:
        raise
    except RuntimeError as err:
        if not place.active or not (_TIMED_OUT.search(str(err)) or _GONE.search(str(err))):
            raise
        how = (
            f"waited more than --dist-timeout {place.timeout:g} s for the other processes"
            if _TIMED_OUT.search(str(err))
            else "lost its connection to another process"
        )
        raise PeerLost(
            f"process {place.rank} of {place.world} {how} in {what}: a process stopped answering (hung, stopped, "
            f"killed, or its machine lost)"
        ) from err


def from_environment(timeout: float = 600.0) -> Dist:
    """The process's place as ``torchrun`` (or any launcher setting ``WORLD_SIZE``/``RANK``) describes it."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(timeout=timeout)
    return Dist(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")), timeout)


def setup(device: torch.device, timeout: float = 600.0) -> Dist:
    """Join the process group (once) and return this process's :class:`Dist`.

    The backend is NCCL when training on CUDA, else gloo. On CUDA each process takes the
    GPU of its local rank. A collective that waits more than ``timeout`` seconds for a
    process (``--dist-timeout``) fails instead of waiting forever.
    """
    place = from_environment(timeout)
    if not place.active:
        return place
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(place.local_rank)
        store = _attempt_store(place)
        wait = timedelta(seconds=timeout)
        if store is None:
            dist.init_process_group(backend, timeout=wait)
        else:
            dist.init_process_group(backend, store=store, rank=place.rank, world_size=place.world, timeout=wait)
    return place


def _attempt_store(place: Dist) -> dist.Store | None:
    """Under ``torchrun --max-restarts``, the rendezvous store of this attempt only (None: torch's default).

    The elastic agent's store outlives a failed attempt, and the processes of a restart
    would otherwise read the addresses that the previous attempt's processes published
    (their gloo peers, now dead: "Connection refused"); a prefix per restart count keeps
    the attempts apart.
    """
    restart = os.environ.get("TORCHELASTIC_RESTART_COUNT")
    if restart in (None, "0") or "MASTER_ADDR" not in os.environ:
        return None
    agent_hosts = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = dist.TCPStore(
        os.environ["MASTER_ADDR"],
        int(os.environ["MASTER_PORT"]),
        place.world,
        is_master=not agent_hosts and place.rank == 0,
        timeout=timedelta(minutes=30),
    )
    return dist.PrefixStore(f"vitrain/attempt_{restart}", store)


def device_for(place: Dist, device: torch.device) -> torch.device:
    """On CUDA, the GPU of this process's local rank; otherwise ``device``."""
    if place.active and device.type == "cuda":
        return torch.device("cuda", place.local_rank)
    return device


def shutdown() -> None:
    """Leave the process group, if one was joined."""
    if dist.is_initialized():
        dist.destroy_process_group()


def all_sum(tensor: torch.Tensor, place: Dist) -> torch.Tensor:
    """The sum of ``tensor`` over all ranks (the tensor itself when alone)."""
    if place.active:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def any_rank(flag: bool, place: Dist, device: torch.device) -> bool:
    """True on every rank when ``flag`` is true on at least one (for decisions all ranks must share)."""
    return any_ranks([flag], place, device)[0]


def any_ranks(flags: list[bool], place: Dist, device: torch.device) -> list[bool]:
    """Each of ``flags`` made true on every rank where it is true on at least one (one collective)."""
    if not place.active:
        return list(flags)
    value = torch.tensor([1.0 if f else 0.0 for f in flags], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return [bool(v) for v in value.tolist()]


def gather_objects(obj: Any, place: Dist) -> list:
    """Every rank's ``obj`` (picklable, CPU tensors), in rank order, on every rank; ``[obj]`` when alone."""
    if not place.active:
        return [obj]
    values: list = [None] * place.world
    dist.all_gather_object(values, obj)
    return values


def broadcast(obj: Any, place: Dist) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not place.active:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def ranks_differing(value: Any, place: Dist) -> list[int]:
    """The ranks whose ``value`` differs from rank 0's (every rank gets the same list; empty when alone)."""
    values = gather_objects(value, place)
    return [rank for rank, v in enumerate(values) if v != values[0]]


def gather_in_order(values: list, place: Dist) -> list:
    """Per-sample ``values`` of the shard ``rank::world`` from every rank, interleaved back into dataset order."""
    if not place.active:
        return values
    shards: list[list] = [None] * place.world  # type: ignore[list-item]
    dist.all_gather_object(shards, values)
    merged: list = [None] * sum(len(s) for s in shards)
    for rank, shard in enumerate(shards):
        merged[rank :: place.world] = shard
    return merged


def gather_rows(part: torch.Tensor, total: int, place: Dist, device: torch.device) -> torch.Tensor:
    """Rows ``rank::world`` of a ``total``-row tensor from every rank, interleaved back into order.

    Each rank holds its own rows in ``part``; every rank gets the whole tensor, on ``device``
    (its GPU under NCCL). Ranks whose share is one row short pad it for the collective.
    """
    if not place.active:
        return part
    rows = -(-total // place.world)
    padded = torch.zeros((rows, *part.shape[1:]), dtype=part.dtype, device=device)
    padded[: len(part)] = part.to(device)
    parts = [torch.empty_like(padded) for _ in range(place.world)]
    dist.all_gather(parts, padded)
    whole = torch.empty((total, *part.shape[1:]), dtype=part.dtype, device=device)
    for rank, shard in enumerate(parts):
        whole[rank :: place.world] = shard[: len(range(rank, total, place.world))]
    return whole


def barrier(place: Dist) -> None:
    if place.active:
        dist.barrier()


class ShardSampler(Sampler[int]):
    """The indices ``rank, rank + world, ...`` of a dataset: disjoint, unpadded evaluation shards."""

    def __init__(self, dataset: Dataset, place: Dist) -> None:
        self.n, self.place = len(dataset), place

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.place.rank, self.n, self.place.world))

    def __len__(self) -> int:
        return len(range(self.place.rank, self.n, self.place.world))
