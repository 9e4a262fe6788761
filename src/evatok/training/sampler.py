"""A resumable batch sampler that shards each shuffled epoch across processes."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class ShardedBatchSampler(Sampler[list[int]]):
    """Yield this process's index batches of one epoch, starting at a given global batch.

    Every epoch is a permutation seeded by (seed, epoch), cut into global batches of
    `batch_size * num_processes` samples; process r takes the r-th slice of each. The tail that
    does not fill a global batch is left out of that epoch (a different tail each epoch), so every
    process runs the same number of steps (no rank waits for another in a collective) and no sample
    is counted twice within an epoch.
    """

    def __init__(
        self,
        dataset_size: int,
        *,
        batch_size: int,
        num_processes: int,
        process_index: int,
        seed: int,
        epoch: int,
        start_batch: int = 0,
        shuffle: bool = True,
    ) -> None:
        global_batch = batch_size * num_processes
        if dataset_size < global_batch:
            raise ValueError(
                f"dataset has {dataset_size} samples, fewer than one global batch of {global_batch} "
                f"({batch_size} per process x {num_processes} processes): add data or lower "
                "train.batch_size (router_train.train.batch_size for the router, "
                "final.train.batch_size for the final tokenizer)"
            )
        self.dataset_size = dataset_size
        self.batch_size = batch_size
        self.num_processes = num_processes
        self.process_index = process_index
        self.seed = seed
        self.epoch = epoch
        self.start_batch = start_batch
        self.shuffle = shuffle
        self.batches_per_epoch = dataset_size // global_batch

    def __len__(self) -> int:
        return max(0, self.batches_per_epoch - self.start_batch)

    def __iter__(self) -> Iterator[list[int]]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.dataset_size, generator=generator).tolist()
        else:
            order = list(range(self.dataset_size))
        global_batch = self.batch_size * self.num_processes
        for batch in range(self.start_batch, self.batches_per_epoch):
            start = batch * global_batch + self.process_index * self.batch_size
            yield order[start : start + self.batch_size]
