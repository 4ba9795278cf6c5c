"""Shuffled minibatches sliced from tensors already in memory."""

from __future__ import annotations

import math

import torch


class TensorLoader:
    """Shuffled index batches over in-memory tensors; each pass is one epoch.

    `min_batches` stretches an epoch over several passes when the data set is a handful of labels,
    so epoch-level overhead (validation, checkpointing) is not paid after every single step.
    `steps_per_batch` > 0 groups that many minibatches into one Lightning batch (a list of
    (x, y) pairs, one optimizer step each): Lightning's per-batch hooks and bookkeeping, which cost
    more than a small model's step, are then paid once per group while the optimisation itself is
    unchanged (same minibatches, same order, one update per minibatch).
    `rank` of `world` > 1 processes (Lightning DDP): every process draws the same order and takes every
    world-th row of each minibatch from its rank on, so together they hold the single-process minibatch
    and the mean of their gradients is its gradient (a minibatch smaller than `world` goes whole to each).
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        min_batches: int = 1,
        steps_per_batch: int = 0,
        rank: int = 0,
        world: int = 1,
    ) -> None:
        self.x, self.y = x, y
        self.batch_size = min(int(batch_size), len(x)) if shuffle else int(batch_size)
        self.shuffle = shuffle
        self.per_pass = math.ceil(len(x) / self.batch_size)
        self.passes = max(1, math.ceil(min_batches / self.per_pass)) if shuffle else 1
        self.group = int(steps_per_batch)
        self.gen = torch.Generator().manual_seed(seed)
        self.rank, self.world = int(rank), int(world)

    def steps(self) -> int:
        return self.per_pass * self.passes

    def __len__(self) -> int:
        return math.ceil(self.steps() / self.group) if self.group > 0 else self.steps()

    def minibatches(self):
        n, bs = len(self.x), self.batch_size
        for _ in range(self.passes):
            order = torch.randperm(n, generator=self.gen) if self.shuffle else torch.arange(n)
            for start in range(0, n, bs):
                idx = order[start : start + bs]
                if self.world > 1 and len(idx) >= self.world:
                    idx = idx[self.rank :: self.world]
                yield self.x[idx], self.y[idx]

    def __iter__(self):
        if self.group <= 0:
            yield from self.minibatches()
            return
        group = []
        for pair in self.minibatches():
            group.append(pair)
            if len(group) == self.group:
                yield group
                group = []
        if group:
            yield group
