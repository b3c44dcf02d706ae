"""Samplers whose order is a pure function of (seed, epoch, rank): what exact resume needs.

``TrainSampler`` follows ``torch.utils.data.DistributedSampler`` (same padding rule:
the permutation is extended by its own head so every rank gets ``ceil(N / world)``
indices, or truncated with ``drop_last``) and adds ``skip``: the number of leading
indices of this rank's shard to leave out, so an iteration-based run resumed in the
middle of an epoch sees exactly the batches it had not seen yet.

``InferenceSampler`` splits the dataset into contiguous, unpadded shards: each index
is on exactly one rank, and concatenating the ranks' outputs in rank order gives
dataset order back.
"""
from __future__ import annotations

import math
from typing import Iterator

import torch
from torch.utils.data import Sampler

from .seeding import mix_seed


class TrainSampler(Sampler[int]):
    def __init__(self, size: int, shuffle: bool = True, seed: int = 0, rank: int = 0,
                 world_size: int = 1, drop_last: bool = False):
        if size <= 0:
            raise ValueError("TrainSampler: the dataset is empty")
        if not 0 <= rank < world_size:
            raise ValueError(f"TrainSampler: rank {rank} outside world of {world_size}")
        self.size, self.shuffle, self.seed = size, shuffle, seed
        self.rank, self.world_size, self.drop_last = rank, world_size, drop_last
        if drop_last and size % world_size:
            self.num_samples = size // world_size
        else:
            self.num_samples = math.ceil(size / world_size)
        self.total_size = self.num_samples * world_size
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Select the epoch's permutation; ``skip`` leading indices of this shard are dropped."""
        if not 0 <= skip <= self.num_samples:
            raise ValueError(f"TrainSampler: cannot skip {skip} of {self.num_samples} samples")
        self.epoch, self.skip = epoch, skip

    def shard(self, epoch: int) -> list[int]:
        """This rank's full index list for ``epoch`` (before ``skip``)."""
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(mix_seed(self.seed, epoch))
            order = torch.randperm(self.size, generator=g).tolist()
        else:
            order = list(range(self.size))
        if self.total_size > len(order):          # pad with the head, repeated as needed
            pad = self.total_size - len(order)
            order += (order * math.ceil(pad / len(order)))[:pad]
        else:
            order = order[: self.total_size]
        return order[self.rank: self.total_size: self.world_size]

    def __iter__(self) -> Iterator[int]:
        return iter(self.shard(self.epoch)[self.skip:])

    def __len__(self) -> int:
        return self.num_samples - self.skip


class InferenceSampler(Sampler[int]):
    """Contiguous shard ``[rank * ceil(N/W), (rank+1) * ceil(N/W))`` clipped to N; no padding."""

    def __init__(self, size: int, rank: int = 0, world_size: int = 1):
        per = math.ceil(size / world_size) if size else 0
        self.start = min(rank * per, size)
        self.stop = min(self.start + per, size)

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.start, self.stop))

    def __len__(self) -> int:
        return self.stop - self.start
