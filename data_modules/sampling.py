"""`SeededSampler`: a training order and per-sample random seeds that are functions of
(seed, epoch, position) alone, so a resumed run sees exactly the data of an uninterrupted one.

Every item it yields is `(index, sample_seed)`; the datasets seed their augmentation and frame
selection from `sample_seed`, so a sample does not depend on which process or DataLoader worker
draws it, nor on what that process drew before. Under DDP it also shards the order across ranks
(as `DistributedSampler` does: padded by repetition to a multiple of the world size), so Lightning's
own distributed sampler is switched off (`use_distributed_sampler=False`). Validation and test
orders are not padded (`pad=False`): each case is scored once, on one rank, whatever the world size.

Mid-epoch resume: `skip(n, epoch)` drops the first n items of that epoch (the batches the
interrupted run had already trained on); the data module sets it from the checkpoint.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Sampler


def _world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class SeededSampler(Sampler):
    """Indices 0..n-1, shuffled per epoch when `shuffle`, each paired with its sample seed."""

    def __init__(self, n: int, seed: int, shuffle: bool = True, rank: int | None = None,
                 world_size: int | None = None, pad: bool = True):
        super().__init__()
        rank_world = _world()
        self.n, self.seed, self.shuffle, self.pad = n, seed, shuffle, pad
        self.rank = rank_world[0] if rank is None else rank
        self.world_size = rank_world[1] if world_size is None else world_size
        self.epoch = 0
        self._skip: tuple[int, int] | None = None  # (epoch, items)

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning at the start of every epoch."""
        self.epoch = epoch

    def skip(self, n_items: int, epoch: int) -> None:
        """Leave out the first `n_items` of epoch `epoch`'s iteration (once)."""
        self._skip = (epoch, n_items)

    def __len__(self) -> int:
        if not self.pad:  # the first n % world_size ranks hold one item more
            return self.n // self.world_size + (self.rank < self.n % self.world_size)
        return math.ceil(self.n / self.world_size)

    def order(self) -> list[tuple[int, int]]:
        """This rank's (index, sample_seed) items of the current epoch."""
        ss = np.random.SeedSequence([self.seed, self.epoch])
        order_seed, sample_root = ss.spawn(2)
        idx = np.arange(self.n)
        if self.shuffle:
            idx = np.random.default_rng(order_seed).permutation(self.n)
        total = math.ceil(self.n / self.world_size) * self.world_size if self.pad else self.n
        idx = np.resize(idx, total)  # pad by repeating the start, as DistributedSampler does
        seeds = np.random.default_rng(sample_root).integers(0, 2**31 - 1, size=total)
        mine = slice(self.rank, total, self.world_size)
        return list(zip(idx[mine].tolist(), seeds[mine].tolist()))

    def __iter__(self) -> Iterator[tuple[int, int]]:
        items, skip = self.order(), 0
        if self._skip is not None and self._skip[0] == self.epoch:
            skip, self._skip = self._skip[1], None
        return iter(items[skip:])
