"""Seeding: one seed drives Python, NumPy, torch and every augmentation draw.

* Each epoch is re-seeded from ``(seed, epoch)`` (:func:`epoch_seed`) when it *starts*, so an
  epoch's shuffling does not depend on what ran before it in the same process. A run resumed
  inside an epoch is not re-seeded: it continues from the RNG state saved in the checkpoint.
* Each image draw of an epoch (one ``dataset[i]`` of the training stream, the unlabelled stream
  or the t-RNSL refresh) runs under its own seed, :func:`draw_seed` of (epoch seed, stream,
  position of the draw in the epoch's stream), in whatever process loads it (DataLoader worker
  or main process), with the process's RNG states restored afterwards (:func:`isolated_rng`).
  Augmentation is therefore a pure function of (seed, epoch, stream, position): independent of
  the number of workers, of which worker loads an image, and of where a run was resumed.
"""
from __future__ import annotations

import contextlib
import os
import random

import numpy as np
import torch

#: the draw streams of an epoch; draws of different streams never share a seed within an epoch
TRAIN_STREAM, UNLABELLED_STREAM, REFRESH_STREAM = 0, 1, 2
_POSITION_BITS = 28  # up to 2**28 draws per stream and epoch keep seeds distinct
_MASK32 = 0xFFFFFFFF


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int) -> int:
    """A distinct, reproducible seed for one epoch of one run."""
    return (seed * 1_000_003 + epoch * 7919) % 2**31


def pass_seed(seed: int, pass_index: int) -> int:
    """The seed of one pass over a pool that is drawn across epochs (see ``ContinuingPasses``)."""
    return (epoch_seed(seed, pass_index) + 104_729) % 2**31


def _mix32(value: int) -> int:
    """MurmurHash3's 32-bit finaliser: a bijection of [0, 2**32) that scatters nearby inputs."""
    value &= _MASK32
    value ^= value >> 16
    value = (value * 0x85EBCA6B) & _MASK32
    value ^= value >> 13
    value = (value * 0xC2B2AE35) & _MASK32
    value ^= value >> 16
    return value


def draw_seed(seed: int, stream: int, position: int) -> int:
    """The 32-bit seed of draw number ``position`` (0-based, counted over the whole epoch) of
    ``stream`` in the epoch seeded with ``seed``.

    ``mix(mix(seed) + stream * 2**28 + position)`` with a bijective ``mix``: for one epoch, two
    different (stream, position) pairs (position < 2**28, stream < 16) always get different
    seeds, so the labelled, unlabelled and refresh streams never share one.
    """
    if not 0 <= position < 2**_POSITION_BITS or not 0 <= stream < 2**(32 - _POSITION_BITS):
        raise ValueError(f"draw position {position} / stream {stream} out of range")
    return _mix32(_mix32(seed) + (stream << _POSITION_BITS) + position)


@contextlib.contextmanager
def isolated_rng(seed: int):
    """Run the body with Python, NumPy and torch (CPU) RNGs seeded from ``seed``; restore their
    previous states afterwards, so the caller's random streams are untouched (this matters in
    the main process, where ``num_workers=0`` loads images)."""
    python_state, numpy_state, torch_state = random.getstate(), np.random.get_state(), torch.get_rng_state()
    random.seed(seed)
    np.random.seed(seed & _MASK32)
    torch.default_generator.manual_seed(seed)
    try:
        yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
        torch.set_rng_state(torch_state)


def set_deterministic(enabled: bool) -> None:
    """``--deterministic``: deterministic kernels (slower on GPU; errors on ops that have none)."""
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(enabled, warn_only=False)
    torch.backends.cudnn.benchmark = not enabled


def worker_init_fn(worker_id: int) -> None:
    """Give each DataLoader worker's Python/NumPy RNGs the seed torch already derived for it
    (a fallback for datasets read without per-draw seeds, e.g. the un-augmented eval splits)."""
    worker_seed = torch.initial_seed() % 2**32
    random.seed(worker_seed)
    np.random.seed(worker_seed)
