"""DataLoaders whose batches AND augmentations are a pure function of (seed, epoch, position).

* Batch order: drawn from a generator seeded per epoch (:class:`ShuffledBatches`, or the
  method's own batch sampler such as SRL's C x K sampler, or :class:`ContinuingPasses` for the
  unlabelled stream), so an interrupted epoch can be replayed up to the step where it stopped
  (``skip_batches``).
* Augmentation: :class:`SeededBatches` turns each index of a batch into ``(index, draw_seed)``,
  the seed of draw ``p`` of the epoch's stream (``p`` counted over the whole epoch, *before*
  skipping the batches of a resumed run; see :func:`dmlrs.engine.seeding.draw_seed`), and
  :class:`SeededDataset` loads ``dataset[index]`` under that seed in whichever process reads
  it. The images a step sees are thus the same whatever ``num_workers`` is and wherever the run
  was resumed.
* Nothing here consumes the main process's global RNGs (loaders get their own generators).
"""
from __future__ import annotations

import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, Sampler, SequentialSampler

from dmlrs.engine.seeding import (REFRESH_STREAM, TRAIN_STREAM, draw_seed, isolated_rng, pass_seed,
                                  worker_init_fn)


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


class SkipFirst(Sampler):
    """A batch sampler without its first ``skip`` batches (resuming inside an epoch)."""

    def __init__(self, batches: Sampler, skip: int):
        self.batches, self.skip = batches, skip

    def __iter__(self):
        for position, batch in enumerate(self.batches):
            if position >= self.skip:
                yield batch

    def __len__(self) -> int:
        return max(len(self.batches) - self.skip, 0)


class SeededBatches(Sampler[list[tuple[int, int]]]):
    """``batches`` with each index paired with the seed of its draw: the ``p``-th index yielded
    (counted from the first batch, whatever is skipped later) gets
    ``draw_seed(seed, stream, p)``. Read them with :class:`SeededDataset`."""

    def __init__(self, batches, seed: int, stream: int):
        self.batches, self.seed, self.stream = batches, int(seed), int(stream)

    def __iter__(self):
        position = 0
        for batch in self.batches:
            yield [(int(index), draw_seed(self.seed, self.stream, position + offset))
                   for offset, index in enumerate(batch)]
            position += len(batch)

    def __len__(self) -> int:
        return len(self.batches)


class SeededDataset(Dataset):
    """``dataset[(index, seed)]`` = ``dataset[index]`` loaded with the RNGs of the current process
    (worker or main) seeded from ``seed`` and restored afterwards."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        index, seed = key
        with isolated_rng(seed):
            return self.dataset[index]


def train_loader(dataset: Dataset, batch_size: int, *, seed: int, num_workers: int,
                 batch_sampler: Sampler | None = None, skip_batches: int = 0,
                 pin_memory: bool = False, stream: int = TRAIN_STREAM) -> DataLoader:
    """Batches of ``batch_sampler`` (default: :class:`ShuffledBatches` seeded with ``seed``)
    without the first ``skip_batches``, each image augmented under its draw seed of
    ``(seed, stream, position in the epoch)``."""
    if batch_sampler is None:
        batch_sampler = ShuffledBatches(len(dataset), batch_size, torch.Generator().manual_seed(seed))
    batches = SeededBatches(batch_sampler, seed, stream)
    if skip_batches:
        batches = SkipFirst(batches, skip_batches)
    return DataLoader(SeededDataset(dataset), batch_sampler=batches, num_workers=num_workers,
                      generator=torch.Generator().manual_seed(seed), worker_init_fn=worker_init_fn,
                      pin_memory=pin_memory, persistent_workers=False)


def eval_loader(dataset: Dataset, batch_size: int, *, num_workers: int, pin_memory: bool = False,
                seed: int | None = None, stream: int = REFRESH_STREAM) -> DataLoader:
    """The dataset in order. With ``seed`` each image is loaded under its draw seed of
    ``(seed, stream, index)`` (a refresh pass over augmented training images)."""
    generator = torch.Generator().manual_seed(0)  # keeps the global RNG out of DataLoader's worker seeds
    if seed is None:
        return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                          worker_init_fn=worker_init_fn, pin_memory=pin_memory, generator=generator)
    batches = SeededBatches(BatchSampler(SequentialSampler(dataset), batch_size, drop_last=False), seed, stream)
    return DataLoader(SeededDataset(dataset), batch_sampler=batches, num_workers=num_workers,
                      worker_init_fn=worker_init_fn, pin_memory=pin_memory, generator=generator)
