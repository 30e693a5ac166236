"""Class-balanced C x K batch sampler for ranking losses (RLL, SRL) that need several images per class.

Each batch holds ``classes_per_batch`` (C) distinct classes with ``images_per_class`` (K) images
each, laid out class by class: batch[c*K:(c+1)*K] share one label. Use it as
``DataLoader(dataset, batch_sampler=ClassBalancedBatchSampler(labels, C, K))``.

How a pass is built (one "round"):
  * every class's images are shuffled and cut into chunks of K. A last partial chunk is topped up
    with other images of the same class (no image twice in a chunk); a class with FEWER than K
    images gives one chunk holding all its images plus draws WITH replacement from the class, so
    such a batch repeats some of that class's images;
  * chunks are ordered by stratified random keys (chunk j of a class with k chunks gets key
    (j + u) / k, u ~ U(0, 1)), which spreads every class evenly over the round;
  * batches take the next C chunks of distinct classes in that order (a chunk whose class is
    already in the batch waits for the next batch); when the round runs short of distinct
    classes, the next round is appended.
The default ``num_batches`` is the number of batches one round needs, ceil(sum_c ceil(n_c / K) / C),
about len(labels) // (C*K). With classes of equal size every labelled image is shown at least once
per epoch; with unequal sizes nearly all are (a few chunks can slip past the round boundary, and
a class with more chunks than there are batches cannot fit, since a batch holds one chunk per class).

Determinism: batches depend only on (labels, C, K, num_batches, seed, epoch); call
``set_epoch(epoch)`` before each epoch so a resumed run reproduces the same batches.
Unlabelled entries (label < 0, e.g. -1) are never sampled.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

from dmlrs.errors import DmlrsError


class ClassBalancedBatchSampler(Sampler[list[int]]):
    """Yields ``num_batches`` lists of C*K dataset indices: C distinct classes x K images each."""

    def __init__(
        self,
        labels: Sequence[int],
        classes_per_batch: int,
        images_per_class: int,
        *,
        num_batches: int | None = None,
        seed: int = 0,
    ) -> None:
        labels_arr = np.asarray(labels).astype(np.int64).reshape(-1)
        if classes_per_batch < 1:
            raise DmlrsError(f"--classes-per-batch must be at least 1, got {classes_per_batch}.")
        if images_per_class < 1:
            raise DmlrsError(f"--images-per-class must be at least 1, got {images_per_class}.")
        if seed < 0:
            raise DmlrsError(f"--seed must be a non-negative integer, got {seed}.")
        classes = np.unique(labels_arr[labels_arr >= 0])
        if len(classes) == 0:
            raise DmlrsError("the training split has no labelled images (all labels are -1); check the dataset split.")
        if classes_per_batch > len(classes):
            raise DmlrsError(
                f"--classes-per-batch {classes_per_batch} is larger than the {len(classes)} classes in the "
                f"training split; lower --classes-per-batch to at most {len(classes)}."
            )
        self.classes_per_batch = int(classes_per_batch)
        self.images_per_class = int(images_per_class)
        self.seed = int(seed)
        self.epoch = 0
        self._members = [np.flatnonzero(labels_arr == c) for c in classes]  # per class: dataset indices
        chunks_per_round = sum(-(-len(m) // self.images_per_class) for m in self._members)
        default = -(-chunks_per_round // self.classes_per_batch)
        if num_batches is not None and num_batches < 1:
            raise DmlrsError(f"the number of batches per epoch must be at least 1, got {num_batches}.")
        self.num_batches = int(num_batches) if num_batches is not None else default

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose batches the next iteration yields (call before every epoch)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        pending: list[tuple[int, np.ndarray]] = []  # (class position, K indices), in round order
        for _ in range(self.num_batches):
            batch = self._take_distinct(pending)
            while batch is None:
                pending.extend(self._round(rng))
                batch = self._take_distinct(pending)
            yield [int(i) for _, chunk in batch for i in chunk]

    def _take_distinct(self, pending: list[tuple[int, np.ndarray]]) -> list[tuple[int, np.ndarray]] | None:
        """Remove and return the first C chunks of distinct classes, or None (pending untouched)."""
        picked: list[int] = []
        seen: set[int] = set()
        for pos, (cls, _) in enumerate(pending):
            if cls not in seen:
                seen.add(cls)
                picked.append(pos)
                if len(picked) == self.classes_per_batch:
                    batch = [pending[p] for p in picked]
                    for p in reversed(picked):
                        del pending[p]
                    return batch
        return None

    def _round(self, rng: np.random.Generator) -> list[tuple[int, np.ndarray]]:
        """One pass over every class: its K-chunks, ordered by stratified random keys."""
        keyed: list[tuple[float, int, np.ndarray]] = []
        for cls, members in enumerate(self._members):
            chunks = self._chunks(members, rng)  # (k, K)
            offsets = rng.random(len(chunks))
            keyed.extend(((j + offsets[j]) / len(chunks), cls, chunk) for j, chunk in enumerate(chunks))
        keyed.sort(key=lambda item: item[0])
        return [(cls, chunk) for _, cls, chunk in keyed]

    def _chunks(self, members: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Shuffle one class and cut it into (ceil(n / K), K) index chunks (see module docstring)."""
        k = self.images_per_class
        order = rng.permutation(members)
        if len(order) < k:  # small class: all images, then draws with replacement
            return np.concatenate([order, rng.choice(members, k - len(order), replace=True)])[None, :]
        short = -len(order) % k
        if short:  # top up the last chunk with images not already in it
            tail = len(order) % k
            order = np.concatenate([order, rng.choice(order[: len(order) - tail], short, replace=False)])
        return order.reshape(-1, k)  # (n_chunks, K)
