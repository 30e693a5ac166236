"""DataLoaders whose batch order is a pure function of (seed, epoch).

The training order is drawn from a generator seeded per epoch, so an interrupted epoch can be
replayed up to the step where it stopped (``skip_batches``) and a resumed run sees the same
batches as an uninterrupted one.
"""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from dmlrs.engine.seeding import pass_seed, worker_init_fn


class ShuffledBatches(Sampler[list[int]]):
    """Shuffled mini-batches of a dataset. The last short batch is kept, as the original scripts'
    loaders (no ``drop_last``), except a last batch of ONE image when there are other batches:
    batch norm cannot train on one image (the original crashed there)."""

    def __init__(self, size: int, batch_size: int, generator: torch.Generator):
        self.size, self.batch_size, self.generator = size, batch_size, generator
        self.drop_last = size > batch_size and size % batch_size == 1

    def __iter__(self):
        order = torch.randperm(self.size, generator=self.generator).tolist()
        stop = len(self) * self.batch_size if self.drop_last else self.size
        for start in range(0, stop, self.batch_size):
            yield order[start:start + self.batch_size]

    def __len__(self) -> int:
        return self.size // self.batch_size if self.drop_last else -(-self.size // self.batch_size)


class ContinuingPasses(Sampler[list[int]]):
    """Batches of a pool drawn alongside the training batches, as one stream across epochs.

    Global step ``t`` (counted over the whole run) takes batch ``t mod U`` of pass ``t // U``,
    where a pass is a fresh shuffle of the pool cut like :class:`ShuffledBatches` (``U`` batches)
    and pass ``p`` is shuffled by a generator seeded from ``(seed, p)``. This is how the original
    HR-S2DML draws its unlabelled batches (one iterator that restarts whenever the global step is
    a multiple of ``U``), made a pure function of the step so that resuming replays it.
    Yields the batches of steps ``start_step .. start_step + num_steps - 1``.
    """

    def __init__(self, size: int, batch_size: int, *, seed: int, start_step: int, num_steps: int):
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.start_step, self.num_steps = start_step, num_steps
        self.batches_per_pass = len(ShuffledBatches(size, batch_size, torch.Generator()))

    def pass_batches(self, pass_index: int) -> list[list[int]]:
        generator = torch.Generator().manual_seed(pass_seed(self.seed, pass_index))
        return list(ShuffledBatches(self.size, self.batch_size, generator))

    def __iter__(self):
        current, batches = None, []
        for step in range(self.start_step, self.start_step + self.num_steps):
            pass_index, position = divmod(step, self.batches_per_pass)
            if pass_index != current:
                current, batches = pass_index, self.pass_batches(pass_index)
            yield batches[position]

    def __len__(self) -> int:
        return self.num_steps


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

