"""Where this process sits among the processes of a run (below data/, which shards by it).

The process group itself is set up by :mod:`vitrain.engine.distributed`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Dist:
    """Where this process sits: its rank, the number of processes and its rank on its node (and how
    long it waits for the others in a collective, ``--dist-timeout``)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    timeout: float = 600.0

    @property
    def main(self) -> bool:
        """Whether this process writes files and logs."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1
