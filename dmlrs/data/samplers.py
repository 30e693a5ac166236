"""Class-balanced C x K batch sampler for ranking losses (RLL, SRL) that need several images per class.

Each batch holds ``classes_per_batch`` (C) distinct classes with ``images_per_class`` (K) images
each, laid out class by class: batch[c*K:(c+1)*K] share one label. Use it as
``DataLoader(dataset, batch_sampler=ClassBalancedBatchSampler(labels, C, K))``.

How batches are built:
  * a "pass" over a class shuffles its images and cuts them into chunks of K. A last partial chunk
    is topped up with other images of the same class (no image twice in a chunk); a class with
    FEWER than K images gives one chunk holding all its images plus draws WITH replacement from
    the class, so such a batch repeats some of that class's images;
  * chunk j of a class's p-th pass (k chunks) gets the stratified random key p + (j + u) / k,
    u ~ U(0, 1), which spreads every class evenly over a pass and puts later passes after it;
  * each batch takes the next chunk of the C classes whose next chunks have the smallest keys
    (so C distinct classes, in a random order that mixes which classes meet); when fewer than C
    classes have chunks left, every exhausted class starts a new pass. The cost per batch is
    O(C log #classes) however unbalanced the classes are.
The default ``num_batches`` is the number of batches one pass over every class needs, ceil(sum_c ceil(n_c / K) / C),
about len(labels) // (C*K). With classes of equal size every labelled image is shown at least once
per epoch (passes are consumed stratum by stratum, so per-class counts never drift apart by more
than one chunk); with unequal sizes it holds whenever every class has well fewer chunks than there are batches
(true of the RS datasets at the usual C and K); a class with about as many chunks as batches
can miss a few images, and one with more chunks than batches cannot fit (one chunk per class
per batch).
Determinism: batches depend only on (labels, C, K, num_batches, seed, epoch); call
``set_epoch(epoch)`` before each epoch so a resumed run reproduces the same batches.
Unlabelled entries (label < 0, e.g. -1) are never sampled.
Distributed training: every rank builds the same batches (same seed and epoch) and trains on its
slice of each (``dmlrs.engine.loaders.RankSlices``): C x K must be a multiple of the number of
processes, each slice holding whole or partial classes in the batch's class-by-class layout.
"""

from __future__ import annotations

import heapq
from collections import deque
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
        chunks_per_pass = sum(-(-len(m) // self.images_per_class) for m in self._members)
        default = -(-chunks_per_pass // self.classes_per_batch)
        if num_batches is not None and num_batches < 1:
            raise DmlrsError(f"the number of batches per epoch must be at least 1, got {num_batches}.")
        self.num_batches = int(num_batches) if num_batches is not None else default

    #: the flags that set the batch size (named by the distributed batch-split check)
    batch_flag = "--classes-per-batch x --images-per-class ="

    @property
    def batch_size(self) -> int:
        """Images per batch: C x K."""
        return self.classes_per_batch * self.images_per_class

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose batches the next iteration yields (call before every epoch)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        queues: list[deque[tuple[float, np.ndarray]]] = [deque() for _ in self._members]  # (key, K indices)
        passes = [0] * len(self._members)  # passes started per class
        heads: list[tuple[float, int]] = []  # heap of (key of the class's next chunk, class position)
        for _ in range(self.num_batches):
            if len(heads) < self.classes_per_batch:
                for cls, queue in enumerate(queues):  # too few classes left: new pass for the empty ones
                    if not queue:
                        queue.extend(self._keyed_chunks(cls, passes[cls], rng))
                        passes[cls] += 1
                        heapq.heappush(heads, (queue[0][0], cls))
            chosen = [heapq.heappop(heads)[1] for _ in range(self.classes_per_batch)]  # C distinct classes
            batch = [int(i) for cls in chosen for i in queues[cls].popleft()[1]]
            for cls in chosen:  # re-queue after the batch is complete, so no class appears twice
                if queues[cls]:
                    heapq.heappush(heads, (queues[cls][0][0], cls))
            yield batch

    def _keyed_chunks(self, cls: int, pass_index: int, rng: np.random.Generator) -> list[tuple[float, np.ndarray]]:
        """One pass over class ``cls``: its K-chunks with stratified keys pass + (j + u_j) / k."""
        chunks = self._chunks(self._members[cls], rng)  # (k, K)
        offsets = rng.random(len(chunks))
        return [(pass_index + (j + offsets[j]) / len(chunks), chunk) for j, chunk in enumerate(chunks)]

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
