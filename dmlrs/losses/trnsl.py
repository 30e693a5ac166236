"""Robust normalized softmax loss (RNSL) and its truncated form (t-RNSL) for noisy labels.

Papers
    Kang et al., "Robust Normalized Softmax Loss for Deep Metric Learning-Based Characterization
    of Remote Sensing Images With Label Noise", IEEE TGRS 2021 (RNSL, t-RNSL).
    Zhang & Sabuncu, "Generalized Cross Entropy Loss for Training Deep Neural Networks with Noisy
    Labels", NeurIPS 2018 (the negative Box-Cox loss L_q and its truncation).

Equation (plain text), for embeddings x_i with (possibly noisy) labels y_i, C prototypes w_c:
    z_ic    = <x_i/|x_i|, w_c/|w_c|> / T                                  (B, C)
    p_i     = softmax(z_i)_y_i                                             (B,)
    L_q(p)  = (1 - p^q) / q      (q -> 0: -log p, cross-entropy; q = 1: 1 - p, MAE-like)
    RNSL    = mean_i L_q(p_i)
    t-RNSL  = mean_i w_{n_i} * (L_q(p_i) - L_q(k))
where n_i is sample i's index in the training set and w (N,) is a 0/1 weight per training
sample, all 1 at the start and refreshed by ``update_weights`` (the method calls it every few
epochs, under no_grad): w_n = 1[p_n > k] = 1[L_q(p_n) < L_q(k)]. Samples whose label the model
finds unlikely (p <= k) are pruned until the next refresh. Since L_q(k) is a constant this is
Zhang & Sabuncu's truncated loss (L_q(p) if p > k else L_q(k)) with its alternating optimisation.

Shapes: embeddings (B, D), labels (B,) in [0, C), indices (B,) in [0, N), prototypes (C, D),
weights buffer (N,) -> scalar.

Defaults (Kang et al. 2021, following Zhang & Sabuncu): T = 0.05, q = 0.7, k = 0.5.
Prototypes are initialised like ``NormSoftmaxLoss`` (uniform(-1/sqrt(D), 1/sqrt(D))).

Numerics: fp32 (fp64 stays fp64) with autocast disabled; p^q = exp(q * log_softmax(z)_y) and
1 - p^q = -expm1(q * log p), so small q does not cancel and 1/T = 20 never overflows.

Host syncs: none per training step. ``last_logs = {"rnsl", "kept_fraction"}`` are detached device
tensors (the untruncated mean L_q and the kept fraction of the whole training set). The label and
index range checks read their min/max on the host in one transfer, only while ``validate`` is
True (see ``CosinePrototypeLoss``); ``update_weights`` always checks.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from dmlrs.errors import DmlrsError
from dmlrs.losses.norm_softmax import CosinePrototypeLoss, read_ranges


def box_cox_loss(log_p: Tensor, q: float) -> Tensor:
    """Negative Box-Cox L_q(p) = (1 - p^q) / q from log p, elementwise."""
    return -torch.expm1(q * log_p) / q


class RobustNormSoftmaxLoss(CosinePrototypeLoss):
    """RNSL (``truncated=False``) or t-RNSL (``truncated=True``, needs ``indices``)."""

    def __init__(
        self,
        num_classes: int,
        dim: int,
        num_samples: int,
        temperature: float = 0.05,
        q: float = 0.7,
        k: float = 0.5,
        truncated: bool = True,
    ) -> None:
        super().__init__(num_classes, dim, temperature)
        if not 0.0 < q <= 1.0:
            raise DmlrsError(f"q must lie in (0, 1] (got {q}); the t-RNSL paper uses 0.7.")
        if not 0.0 < k < 1.0:
            raise DmlrsError(f"k (pruning threshold on p_y) must lie in (0, 1) (got {k}); the paper uses 0.5.")
        if int(num_samples) < 1:
            raise DmlrsError(f"num_samples must be >= 1 (got {num_samples}); it is the training-set size.")
        self.q = float(q)
        self.k = float(k)
        self.truncated = bool(truncated)
        self.num_samples = int(num_samples)
        self.register_buffer("weights", torch.ones(self.num_samples))  # (N,) 0/1 per training sample

    @property
    def loss_at_threshold(self) -> float:
        """L_q(k), the truncation level."""
        return -math.expm1(self.q * math.log(self.k)) / self.q

    @property
    def kept_fraction(self) -> float:
        """Fraction of training samples currently kept (weight 1)."""
        return float(self.weights.float().mean())

    def _label_log_probs(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        """log softmax(cos/T)_y per sample: (B, D), (B,) -> (B,)."""
        log_probs = F.log_softmax(self.logits(embeddings), dim=1)  # (B, C)
        return log_probs.gather(1, labels.unsqueeze(1)).squeeze(1)  # (B,)

    def _check_indices(self, indices: Tensor | None, batch_size: int, *, check_range: bool | None = None) -> Tensor:
        """Shape always; the value range when ``check_range`` (default: ``self.validate``)."""
        indices = self._check_index_shape(indices, batch_size)
        if self.validate if check_range is None else check_range:
            self._check_index_range(*read_ranges(indices)[0])
        return indices

    def _check_index_shape(self, indices: Tensor | None, batch_size: int) -> Tensor:
        if indices is None:
            raise DmlrsError(
                "truncated RobustNormSoftmaxLoss needs the training-set `indices` of the batch; "
                "pass indices=... or build the loss with truncated=False."
            )
        if indices.dim() != 1 or indices.shape[0] != batch_size:
            raise ValueError(f"indices must have shape ({batch_size},), got {tuple(indices.shape)}")
        return indices.to(self.weights.device)

    def _check_index_range(self, low: int, high: int) -> None:
        if low < 0 or high >= self.num_samples:
            raise DmlrsError(
                f"sample indices must lie in [0, {self.num_samples}) but range over [{low}, {high}]; "
                "num_samples must be the size of the training set the indices come from."
            )

    def forward(self, embeddings: Tensor, labels: Tensor, *, indices: Tensor | None = None) -> Tensor:
        """(B, D), (B,), indices (B,) -> scalar. ``indices`` is required when truncated."""
        self._check_label_shape(embeddings, labels)
        if self.truncated:
            indices = self._check_index_shape(indices, embeddings.shape[0])
        if self.validate:  # labels and indices read together: one host sync
            (low, high), *index_range = read_ranges(labels, *([indices] if self.truncated else []))
            self._check_label_range(low, high)
            if index_range:
                self._check_index_range(*index_range[0])
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            per_sample = box_cox_loss(self._label_log_probs(embeddings, labels), self.q)  # (B,)
            if self.truncated:
                kept = self.weights[indices].to(per_sample.dtype)  # (B,)
                loss = (kept * (per_sample - self.loss_at_threshold)).mean()
            else:
                loss = per_sample.mean()
        self.last_logs = {"rnsl": per_sample.detach().mean(), "kept_fraction": self.weights.float().mean()}
        return loss

    @torch.no_grad()
    def update_weights(self, embeddings: Tensor, labels: Tensor, indices: Tensor) -> None:
        """Refresh w at ``indices``: w_n = 1[p_y,n > k]. Other samples keep their weight.

        Call it (e.g. each pruning epoch) with embeddings of the training samples from the
        current model; chunks are fine, each call only touches the given indices. Inputs may
        live on another device (e.g. CPU features from an extraction pass): they are moved to
        the prototypes' device.
        """
        device = self.prototypes.device
        embeddings, labels = embeddings.to(device), labels.to(device)
        self._check_labels(embeddings, labels, check_range=True)
        indices = self._check_indices(indices, embeddings.shape[0], check_range=True)
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            log_p = self._label_log_probs(embeddings, labels)  # (B,)
        keep = log_p > math.log(self.k)  # p > k, compared in log space
        self.weights[indices] = keep.to(device=self.weights.device, dtype=self.weights.dtype)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, num_samples={self.num_samples}, q={self.q}, k={self.k}, "
            f"truncated={self.truncated}"
        )
