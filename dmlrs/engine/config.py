"""Training settings as plain data (the CLI fills it; the engine never sees argparse)."""
from __future__ import annotations

from dataclasses import dataclass

SELECT_METRICS = ("knn_acc", "mAP")


@dataclass
class TrainConfig:
    """Defaults are the papers' protocol (SGD, lr 0.1, nesterov, StepLR 30 x 0.5, 130 epochs)."""

    epochs: int = 130
    batch_size: int = 256
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 1e-4
    lr_step: int = 30
    lr_gamma: float = 0.5
    device: str = "auto"
    amp: bool = False
    channels_last: bool = False
    seed: int = 42
    deterministic: bool = False
    num_workers: int = 4
    eval_every: int = 1
    select_metric: str = "knn_acc"
    knn_k: int = 10
    eval_batch_size: int | None = None
    steps_per_epoch: int | None = None
    progress: bool = True
