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
#: ``--save-every-steps`` default: a mid-epoch ``last.pt`` every 200 optimizer steps. Measured on
#: an NVIDIA H200 (ResNet18 SNCA-CE, batch 256, 256 px, 7,000-slot memory): one training step
#: takes 66 ms (fp32; 60 ms bf16), one atomic save of the run state (94 MB) 171 ms (153 ms), so
#: every 200 steps costs 1.3% of step time at worst (2% would be every 130 steps); on the
#: 2-core development CPU a save takes 0.29 s against 19 s per step (batch 32), so there even
#: N = 1 costs 1.5%. Epoch ends always save, so on the RS datasets (28-104 steps per epoch at
#: batch 256) a kill loses at most one epoch; pass a small N to lose at most N steps.
DEFAULT_SAVE_EVERY_STEPS = 200
#: ``--log-every`` default: the progress bar's loss means and img/s are refreshed every 10 optimizer
#: steps (several times per epoch on the RS datasets: 28-104 steps at batch 256). The values travel
#: to the host inside the step's one device sync (the non-finite check), so a smaller N costs no
#: extra sync, only host time for formatting; metrics.jsonl (epoch means) does not depend on it.
DEFAULT_LOG_EVERY = 10


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
    #: write last.pt every N optimizer steps inside an epoch too (0: at epoch ends only)
    save_every_steps: int = DEFAULT_SAVE_EVERY_STEPS
    #: optimizer steps with a non-finite loss or gradient that may be skipped over the run
    skip_nonfinite: int = 0
    #: refresh the progress bar's loss means and img/s every N optimizer steps
    log_every: int = DEFAULT_LOG_EVERY
    #: under torchrun: batch norm over the global batch (``--sync-bn``); no effect in one process
    sync_bn: bool = False

    def __post_init__(self):
        for flag, value in (("--save-every-steps", self.save_every_steps), ("--skip-nonfinite", self.skip_nonfinite)):
            if int(value) < 0:
                raise DmlrsError(f"{flag} must be 0 or a positive number of steps, got {value}")
        if int(self.log_every) < 1:
            raise DmlrsError(f"--log-every must be a positive number of steps, got {self.log_every}")
