"""DataLoaders whose batch order is a pure function of (seed, epoch).

The training order is drawn from a generator seeded per epoch, so an interrupted epoch can be
replayed up to the step where it stopped (``skip_batches``) and a resumed run sees the same
batches as an uninterrupted one.
"""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from dmlrs.engine.seeding import worker_init_fn


class ShuffledBatches(Sampler[list[int]]):
    """Shuffled mini-batches of a dataset; the last short batch is dropped when the dataset has
    more than one batch (a batch of one breaks batch norm)."""

    def __init__(self, size: int, batch_size: int, generator: torch.Generator):
        self.size, self.batch_size, self.generator = size, batch_size, generator
        self.drop_last = size > batch_size

    def __iter__(self):
        order = torch.randperm(self.size, generator=self.generator).tolist()
        stop = len(self) * self.batch_size if self.drop_last else self.size
        for start in range(0, stop, self.batch_size):
            yield order[start:start + self.batch_size]

    def __len__(self) -> int:
        return self.size // self.batch_size if self.drop_last else -(-self.size // self.batch_size)


class SkipFirst(Sampler[list[int]]):
    """A batch sampler without its first ``skip`` batches (resuming inside an epoch)."""

    def __init__(self, batches: Sampler[list[int]], skip: int):
        self.batches, self.skip = batches, skip

    def __iter__(self):
        for position, batch in enumerate(self.batches):
            if position >= self.skip:
                yield batch

    def __len__(self) -> int:
        return max(len(self.batches) - self.skip, 0)


def train_loader(dataset: Dataset, batch_size: int, *, seed: int, num_workers: int,
                 batch_sampler: Sampler | None = None, skip_batches: int = 0,
                 pin_memory: bool = False) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    batches = batch_sampler if batch_sampler is not None else ShuffledBatches(len(dataset), batch_size, generator)
    if skip_batches:
        batches = SkipFirst(batches, skip_batches)
    return DataLoader(dataset, batch_sampler=batches, num_workers=num_workers, generator=generator,
                      worker_init_fn=worker_init_fn, pin_memory=pin_memory,
                      persistent_workers=False)


def eval_loader(dataset: Dataset, batch_size: int, *, num_workers: int, pin_memory: bool = False) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                      worker_init_fn=worker_init_fn, pin_memory=pin_memory)


def cycle(loader: DataLoader):
    """Endless iteration over a loader (the unlabelled pool is drawn alongside labelled batches)."""
    while True:
        yield from loader
