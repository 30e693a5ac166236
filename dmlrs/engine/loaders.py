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
* Distributed training (``dmlrs.engine.distributed``): every rank draws the same global batches
  and seeds and keeps its slice of each (``shard`` of :func:`train_loader`, :class:`RankSlices`);
  an evaluation pass gives each rank every W-th batch (``shard`` of :func:`eval_loader`).
* Loader processes are **persistent**: with ``num_workers > 0`` the loader of a dataset (one per
  dataset, kind -- training stream or evaluation pass -- and settings) is made once and reused by
  later calls, which only swap its batches (:class:`_CurrentBatches`), so workers are not
  re-created every epoch and every validation. A worker keeps the copy of the dataset it got
  when it started: everything a dataset reads must be fixed when its loader first runs (true of
  ``SceneDataset``: items, labels -- noisy ones included -- and transforms are set at
  construction; per-epoch state such as t-RNSL's sample weights lives in the method, in the main
  process; the draw seeds travel with each index). A loader lives as long as its dataset (it
  holds it weakly) and at most :data:`MAX_PERSISTENT_LOADERS` are kept.
* With the cached input pipeline a batch holds uint8 images (plus, for training streams, their
  augmentation parameters ``"augment"``); the engine finishes it on the training device with
  :func:`dmlrs.data.gpu_augment.finish_images`. The loaders plan that work in the main process
  (:func:`dmlrs.data.gpu_augment.attach_params`: the plan rides on the image tensor, so the image
  tensor alone -- e.g. the unlabelled stream's ``batch["image"]`` -- says how to finish it, and
  finishing needs no host-device sync). Where the training device is the CPU itself -- workers
  and no pinned memory (pinning is asked for CUDA only) -- each worker finishes its own batch
  instead (:func:`finish_in_worker`), one thread per worker, in parallel as the PIL transforms
  ran: the main process's cores are the model's. The values are the same either way.
"""
from __future__ import annotations

import threading
import weakref
from collections import OrderedDict

import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, Sampler, SequentialSampler, default_collate

from dmlrs.data.gpu_augment import PARAMS_KEY, attach_params, augment_batch, eval_images
from dmlrs.engine.seeding import (REFRESH_STREAM, TRAIN_STREAM, draw_seed, isolated_rng, pass_seed,
                                  worker_init_fn)

#: persistent loaders kept at once: those a run uses every epoch (train + unlabelled or the t-RNSL
#: refresh, train_eval, val); the test pass at the end replaces the least recently used one
MAX_PERSISTENT_LOADERS = 4


class ShuffledBatches(Sampler[list[int]]):
    """Shuffled mini-batches of a dataset. The last short batch is kept, as the original scripts'
    loaders (no ``drop_last``), except a last batch of fewer than ``min_last`` images when there
    are other batches: batch norm cannot train on one image (the original crashed there), and
    under W processes each needs 2 (``min_last = 2 W``; :class:`RankSlices`)."""

    #: the flag that sets the batch size (named by the distributed batch-split check)
    batch_flag = "--batch-size"

    def __init__(self, size: int, batch_size: int, generator: torch.Generator, min_last: int = 2):
        self.size, self.batch_size, self.generator = size, batch_size, generator
        self.drop_last = size > batch_size and 0 < size % batch_size < min_last

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
    Yields the batches of steps ``start_step .. start_step + num_steps - 1``. ``min_last``: as
    :class:`ShuffledBatches` (a pass's last batch of fewer images is left out).
    """

    def __init__(self, size: int, batch_size: int, *, seed: int, start_step: int, num_steps: int,
                 min_last: int = 2):
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.start_step, self.num_steps, self.min_last = start_step, num_steps, min_last
        self.batches_per_pass = len(ShuffledBatches(size, batch_size, torch.Generator(), min_last))

    def pass_batches(self, pass_index: int) -> list[list[int]]:
        generator = torch.Generator().manual_seed(pass_seed(self.seed, pass_index))
        return list(ShuffledBatches(self.size, self.batch_size, generator, self.min_last))

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


class RankSlices(Sampler):
    """This rank's part of each global batch (distributed training): the global batch of ``n``
    images is cut to ``n - n mod W`` (a short last batch loses at most W - 1 images) and rank
    ``r`` gets the contiguous slice ``[r n / W, (r + 1) n / W)``, so all ranks run equal shapes
    and the slices gathered in rank order are the global batch. Apply it after
    :class:`SeededBatches`: every image keeps the draw seed of its place in the global stream,
    i.e. the augmentation a single process gives it."""

    def __init__(self, batches: Sampler, rank: int, world: int):
        self.batches, self.rank, self.world = batches, int(rank), int(world)

    def __iter__(self):
        for batch in self.batches:
            size = len(batch) // self.world
            if size < 2:  # the samplers leave such batches out (min_last); never train on one image
                raise RuntimeError(f"a global batch of {len(batch)} images cannot feed {self.world} processes")
            yield batch[self.rank * size:(self.rank + 1) * size]

    def __len__(self) -> int:
        return len(self.batches)


class EveryNth(Sampler):
    """Batches ``start, start + step, ...`` of ``batches`` (a rank's share of an evaluation pass)."""

    def __init__(self, batches: Sampler, start: int, step: int):
        self.batches, self.start, self.step = batches, int(start), int(step)

    def __iter__(self):
        for position, batch in enumerate(self.batches):
            if position % self.step == self.start:
                yield batch

    def __len__(self) -> int:
        return len(range(self.start, len(self.batches), self.step))


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
    (worker or main) seeded from ``seed`` and restored afterwards. ``seed`` None: plain
    ``dataset[index]`` (an un-augmented evaluation pass)."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int | None]):
        index, seed = key
        if seed is None:
            return self.dataset[index]
        with isolated_rng(seed):
            return self.dataset[index]


class _WeakSeededDataset(SeededDataset):
    """A :class:`SeededDataset` that holds its dataset weakly in the process that made it, so a
    persistent loader does not keep its dataset alive. Worker processes get the dataset itself
    (forked memory, or pickled strongly)."""

    def __init__(self, dataset: Dataset):
        self._ref = weakref.ref(dataset)

    @property
    def dataset(self) -> Dataset:
        dataset = self._ref()
        if dataset is None:
            raise RuntimeError("the dataset of this persistent loader no longer exists")
        return dataset

    def __reduce__(self):
        return SeededDataset, (self.dataset,)


class _CurrentBatches(Sampler):
    """The batch sampler of a persistent loader: iterates whatever batches were set last."""

    def __init__(self):
        self.batches = ()

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class _UnseededBatches(Sampler):
    """``(index, None)`` pairs of plain batches (no augmentation seeds)."""

    def __init__(self, batches):
        self.batches = batches

    def __iter__(self):
        for batch in self.batches:
            yield [(int(index), None) for index in batch]

    def __len__(self) -> int:
        return len(self.batches)


def finish_in_worker(samples):
    """``collate_fn`` of loaders whose workers finish cached batches (CPU training): uint8 images
    become augmented (``"augment"`` present) or normalised float images, written straight into
    the shared-memory batch from each sample's cached pixels (no uint8 batch is stacked first)."""
    first = samples[0] if samples else None
    if not (isinstance(first, dict) and torch.is_tensor(first.get("image")) and first["image"].dtype == torch.uint8):
        return default_collate(samples)
    images = [sample["image"] for sample in samples]
    batch = default_collate([{k: v for k, v in sample.items() if k != "image"} for sample in samples])
    params = batch.pop(PARAMS_KEY, None)
    batch["image"] = eval_images(images) if params is None else augment_batch(images, params)
    return batch


class LoaderRun:
    """One pass of a (possibly persistent) loader over the batches given: iterate it like a
    ``DataLoader``. Batches still holding augmentation parameters get their finishing plan
    attached to the image tensor (module doc)."""

    def __init__(self, loader: DataLoader, batches: Sampler, current: _CurrentBatches | None = None):
        self.loader, self.batches, self._current = loader, batches, current

    def __iter__(self):
        if self._current is not None:
            self._current.batches = self.batches
        pin = bool(self.loader.pin_memory)
        for batch in self.loader:
            yield attach_params(batch, pin_memory=pin)

    def __len__(self) -> int:
        return len(self.batches)


_PERSISTENT: "OrderedDict[tuple, tuple[weakref.ref, DataLoader, _CurrentBatches]]" = OrderedDict()
_LOCK = threading.Lock()


def _loader(dataset: Dataset, batches: Sampler, *, kind: str, num_workers: int, pin_memory: bool,
            generator_seed: int) -> LoaderRun:
    """A loader over ``batches`` of ``(index, seed)`` pairs, with persistent workers when there are
    workers (one loader per dataset, kind and settings, reused by later calls)."""
    finish_here = num_workers > 0 and not pin_memory  # the CPU is the training device (module doc)

    def make(wrapped, batch_sampler, persistent):
        return DataLoader(wrapped, batch_sampler=batch_sampler, num_workers=num_workers,
                          generator=torch.Generator().manual_seed(generator_seed), worker_init_fn=worker_init_fn,
                          pin_memory=pin_memory, persistent_workers=persistent,
                          collate_fn=finish_in_worker if finish_here else default_collate)

    if num_workers <= 0:
        return LoaderRun(make(SeededDataset(dataset), batches, False), batches)
    try:
        ref = weakref.ref(dataset)
    except TypeError:  # not weakly referable: a loader per call
        return LoaderRun(make(SeededDataset(dataset), batches, False), batches)
    key = (id(dataset), kind, num_workers, bool(pin_memory))
    with _LOCK:
        for stale in [k for k, (r, _, _) in _PERSISTENT.items() if r() is None]:
            del _PERSISTENT[stale]  # its dataset is gone: the loader and its workers go too
        entry = _PERSISTENT.get(key)
        if entry is None or entry[0]() is not dataset:
            current = _CurrentBatches()
            entry = (ref, make(_WeakSeededDataset(dataset), current, True), current)
            _PERSISTENT[key] = entry
            while len(_PERSISTENT) > MAX_PERSISTENT_LOADERS:
                _PERSISTENT.popitem(last=False)
        _PERSISTENT.move_to_end(key)
    return LoaderRun(entry[1], batches, entry[2])


def release_loaders() -> None:
    """Drop every persistent loader (their worker processes exit)."""
    with _LOCK:
        _PERSISTENT.clear()


def train_loader(dataset: Dataset, batch_size: int, *, seed: int, num_workers: int,
                 batch_sampler: Sampler | None = None, skip_batches: int = 0,
                 pin_memory: bool = False, stream: int = TRAIN_STREAM,
                 shard: tuple[int, int] | None = None) -> LoaderRun:
    """Batches of ``batch_sampler`` (default: :class:`ShuffledBatches` seeded with ``seed``)
    without the first ``skip_batches``, each image augmented under its draw seed of
    ``(seed, stream, position in the epoch)``. ``shard=(rank, world)``: this rank's slice of each
    (global) batch (:class:`RankSlices`). Workers persist across calls (module doc)."""
    if batch_sampler is None:
        batch_sampler = ShuffledBatches(len(dataset), batch_size, torch.Generator().manual_seed(seed))
    batches = SeededBatches(batch_sampler, seed, stream)
    if skip_batches:
        batches = SkipFirst(batches, skip_batches)
    if shard is not None:
        batches = RankSlices(batches, *shard)
    return _loader(dataset, batches, kind=f"train-{stream}", num_workers=num_workers, pin_memory=pin_memory,
                   generator_seed=seed)


def eval_loader(dataset: Dataset, batch_size: int, *, num_workers: int, pin_memory: bool = False,
                seed: int | None = None, stream: int = REFRESH_STREAM,
                shard: tuple[int, int] | None = None) -> LoaderRun:
    """The dataset in order. With ``seed`` each image is loaded under its draw seed of
    ``(seed, stream, index)`` (a refresh pass over augmented training images). ``shard=(rank,
    world)``: only batches ``rank, rank + world, ...`` of that pass (:class:`EveryNth`; the
    batches and draw seeds are those of the whole pass). Workers persist across calls (module doc)."""
    in_order = BatchSampler(SequentialSampler(range(len(dataset))), batch_size, drop_last=False)
    if seed is None:
        batches = _UnseededBatches(in_order)
    else:
        batches = SeededBatches(in_order, seed, stream)
    if shard is not None:
        batches = EveryNth(batches, *shard)
    return _loader(dataset, batches, kind="eval" if seed is None else f"eval-{stream}", num_workers=num_workers,
                   pin_memory=pin_memory, generator_seed=0)
