"""Training settings as plain data (the CLI fills it; the engine never sees argparse)."""
from __future__ import annotations

from dataclasses import dataclass

from dmlrs.errors import DmlrsError

#: CDNE's selection score: Hamming precision@20 of the binarised validation codes against the
#: train split (see ``dmlrs.metrics.hamming.hamming_precision_at``); hashing methods only.
HAMMING_SELECT_METRIC = "hamming_P@20"
HAMMING_SELECT_K = 20
#: the scores ``--select-metric`` may pick best.pt by (all "higher is better", strict >)
SELECT_METRICS = ("knn_acc", "mAP", HAMMING_SELECT_METRIC)
#: the scores that only hashing methods (``Method.hashing``, i.e. CDNE) have
HASHING_SELECT_METRICS = (HAMMING_SELECT_METRIC,)


def check_select_metric(metric: str, hashing: bool, method: str | None = None) -> str:
    """Return ``metric`` if the method can be selected by it, else raise a ``DmlrsError`` that
    names ``--select-metric``.  ``hashing``: the method's ``hashing`` flag; ``method``: its name
    (for the message)."""
    if metric not in SELECT_METRICS:
        raise DmlrsError(f"--select-metric {metric!r} is not a validation score; choose one of "
                         f"{', '.join(SELECT_METRICS)}")
    if metric in HASHING_SELECT_METRICS and not hashing:
        who = f"{method} is not a hashing method" if method else "the method is not a hashing method"
        plain = ", ".join(m for m in SELECT_METRICS if m not in HASHING_SELECT_METRICS)
        raise DmlrsError(f"--select-metric {metric} only applies to hashing methods (CDNE): it scores "
                         f"binarised hash codes and {who}; use --select-metric {plain.replace(', ', ' or ')}")
    return metric


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
