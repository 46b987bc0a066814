"""The order of a training epoch for the file pipeline: seeded batches that can start mid-epoch.

Each epoch is one permutation of the training set drawn from the loader's generator (which
the training loop re-seeds from the run's seed every epoch). Under torchrun every rank draws
the same permutation, and each global batch of ``batch_size x world`` images is cut into
one slice per rank, so the ranks together take the batch one process would take.

Every sample comes with the seed of its own augmentation, derived from the epoch and its
place in the permutation (see :class:`~vitrain.data.transforms.TransformedDataset`). The
augmentation of an image therefore depends neither on which DataLoader worker decodes it
nor on how many there are, and an epoch resumed at batch ``k`` (:attr:`SeededBatches.start`)
repeats batches ``k, k+1, ...`` of the uninterrupted epoch exactly.
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import Sampler

from ..place import Dist


class SeededBatches(Sampler[list[tuple[int, int]]]):
    """This process's training batches of ``(index, seed)`` keys, from batch :attr:`start` on.

    ``drop_last`` drops an incomplete last batch (always dropped under torchrun, so that
    every rank makes the same number of steps). :attr:`start` applies to the next epoch
    only, and is reset once that epoch has begun.
    """

    def __init__(
        self, n: int, batch_size: int, generator: torch.Generator, place: Dist | None = None, drop_last: bool = False
    ) -> None:
        self.n, self.batch_size, self.generator = n, batch_size, generator
        self.place = place or Dist()
        self.drop_last = drop_last or self.place.active
        self.start = 0  # the batch the next epoch starts at (a resumed epoch's)

    def __len__(self) -> int:
        size = self.batch_size * self.place.world
        return self.n // size if self.drop_last else -(-self.n // size)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        order = torch.randperm(self.n, generator=self.generator).tolist()
        base = int(torch.randint(0, 2**62, (1,), generator=self.generator))  # the epoch's augmentation seeds
        size = self.batch_size * self.place.world
        first, self.start = self.start, 0
        for step in range(first, len(self)):
            start = step * size + self.place.rank * self.batch_size
            positions = range(start, min(start + self.batch_size, self.n))
            yield [(order[p], base + p) for p in positions]
