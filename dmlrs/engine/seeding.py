"""Seeding: one seed drives Python, NumPy, torch and the DataLoader workers.

Each epoch is re-seeded from ``(seed, epoch)`` so that an epoch's shuffling and augmentation do
not depend on what ran before it in the same process: a run resumed at an epoch boundary
replays exactly the epochs an uninterrupted run would have.
"""
from __future__ import annotations

import os
import random

import numpy as np
import torch


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


def set_deterministic(enabled: bool) -> None:
    """``--deterministic``: deterministic kernels (slower on GPU; errors on ops that have none)."""
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(enabled, warn_only=False)
    torch.backends.cudnn.benchmark = not enabled


def worker_init_fn(worker_id: int) -> None:
    """Give each DataLoader worker's Python/NumPy RNGs the seed torch already derived for it."""
    worker_seed = torch.initial_seed() % 2**32
    random.seed(worker_seed)
    np.random.seed(worker_seed)
