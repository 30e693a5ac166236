"""Similarity retention loss (SRL).

Paper: H. Zhao, L. Yuan, H. Zhao, "Similarity Retention Loss (SRL) Based on Deep Metric Learning
for Remote Sensing Image Retrieval", ISPRS Int. J. Geo-Inf. 9(2):61, 2020. It builds on the
Ranked List Loss (RLL): X. Wang, Y. Hua, E. Kodirov, G. Hu, R. Garnier, N. Robertson, "Ranked List
Loss for Deep Metric Learning", CVPR 2019.

Setting. A batch holds C classes x K images. Embeddings are L2-normalised and every image i is a
query against the rest of the batch, ranked by Euclidean distance d_ij = ||f_i - f_j||_2 (computed
from the Gram matrix: d_ij^2 = 2 - 2 <f_i, f_j>, never from a B x B x D difference tensor).

Mining (per query i):
    P*_i = { j : y_j = y_i, j != i, d_ij > alpha - m }      hard positives
    E_i  = { j : y_j = y_i, j != i, d_ij <= alpha - m }     easy positives
    N*_i = { j : y_j != y_i, d_ij < alpha }                 hard negatives

Negative part (RLL's weighting, both papers):
    w_ij  = exp(T (alpha - d_ij)) / sum_{k in N*_i} exp(T (alpha - d_ik))      (j in N*_i)
    L_N(i) = sum_{j in N*_i} w_ij (alpha - d_ij)
The weights are differentiated through (the exact gradient of this expression, as in
pytorch-metric-learning's RankedListLoss). ``weight_negatives=False`` sets T = 0 (uniform
weights 1/|N*_i|).

Positive part with the dynamic class weight:
    L_P(i) = omega_{y_i} * (1/|P*_i|) sum_{j in P*_i} (d_ij - (alpha - m))
    omega_c = 1 + E_c / H_c       where, over all queries of class c in the batch,
                                   E_c = sum_i |E_i| (easy positive pairs),
                                   H_c = sum_i |P*_i| (hard positive pairs)
``dynamic_positive_weights=False`` sets omega_c = 1, which is exactly RLL.

Our reading of the "dynamic weights" (the paper's outline only says that "the ratio of easy
samples to hard samples in the class is used to assign dynamic weights to the hard samples"):
  * the ratio is counted per CLASS (the abstract says "in the class"), over ordered positive pairs
    of the batch, so every query of a class shares one weight;
  * the weight is 1 + E_c/H_c = (E_c + H_c) / H_c rather than the bare ratio E_c/H_c, because the
    bare ratio is 0 whenever every positive pair is hard -- the normal state at initialisation
    (random unit vectors sit at distance ~sqrt(2) > alpha - m), which would switch the positive
    part off exactly when it is needed. With 1 + E/H the loss equals RLL while a class is
    scattered (all pairs hard), and as the class gathers inside the alpha - m ball the few
    remaining hard positives are pulled in harder (weight grows up to |pairs of the class|),
    keeping the class's structure from being ignored once most pairs are easy;
  * omega_c is a ratio of counts: piecewise constant in the embeddings, so it carries no gradient.

Total:
    L = (1/B) sum_i [ L_P(i) + lambda L_N(i) ]
A query with no hard positives has L_P(i) = 0, one with no hard negatives has L_N(i) = 0, and it
still counts in the 1/B average (RLL averages over all queries of the batch); a batch with no
hard pairs at all gives loss 0 with zero (finite) gradients.

Shapes: embeddings (B, D) any float dtype, labels (B,) integer; returns a 0-dim tensor.
Computed in float32 (float64 if given float64) with autocast disabled, so bf16/fp16 training
stays finite.

Defaults (RLL's, which SRL inherits; the SRL outline gives no other values): alpha = 1.2,
m = 0.4, T = 10, lambda = 1.

``last_logs``: srl_pos = mean_i L_P(i); srl_neg = mean_i L_N(i) (before lambda);
hard_pos_frac = hard / all positive pairs; hard_neg_frac = hard / all negative pairs (0 when there
are no such pairs). All are detached device tensors (the fractions in float64, exact ratios of the
pair counts): computing them needs no host sync.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dmlrs.errors import DmlrsError

_SQ_DIST_EPS = 1e-12  # floor under squared distances: sqrt stays differentiable at self-pairs


def pairwise_euclidean(x: torch.Tensor) -> torch.Tensor:
    """Euclidean distances between rows of L2-normalised ``x`` (B, D) -> (B, B), via the Gram matrix.

    Squared distances are clamped at a tiny positive floor before the sqrt, so self-pairs and
    duplicates (distance 0) get a zero gradient instead of NaN/inf.
    """
    gram = x @ x.t()  # (B, B)
    squared = (2.0 - 2.0 * gram).clamp_min(_SQ_DIST_EPS)
    return squared.sqrt()


class SimilarityRetentionLoss(nn.Module):
    """SRL (Zhao et al. 2020); equals Ranked List Loss with ``dynamic_positive_weights=False``."""

    def __init__(
        self,
        alpha: float = 1.2,
        margin: float = 0.4,
        temperature: float = 10.0,
        lambda_: float = 1.0,
        weight_negatives: bool = True,
        dynamic_positive_weights: bool = True,
    ) -> None:
        super().__init__()
        if not 0.0 < alpha <= 2.0:
            raise DmlrsError(
                f"SRL alpha (negative distance boundary, --alpha) must be in (0, 2] for unit-norm "
                f"embeddings, got {alpha}; the paper uses 1.2."
            )
        if not 0.0 <= margin < alpha:
            raise DmlrsError(
                f"SRL margin (--margin) must be in [0, alpha={alpha}), got {margin}; the paper uses 0.4."
            )
        if temperature < 0.0:
            raise DmlrsError(f"SRL temperature (--temperature) must be >= 0, got {temperature}; the paper uses 10.")
        if lambda_ < 0.0:
            raise DmlrsError(f"SRL lambda (--lambda_) must be >= 0, got {lambda_}; the paper uses 1.")
        self.alpha = float(alpha)
        self.margin = float(margin)
        self.temperature = float(temperature)
        self.lambda_ = float(lambda_)
        self.weight_negatives = bool(weight_negatives)
        self.dynamic_positive_weights = bool(dynamic_positive_weights)
        self.last_logs: dict[str, torch.Tensor] = {}

    def extra_repr(self) -> str:
        return (
            f"alpha={self.alpha}, margin={self.margin}, temperature={self.temperature}, "
            f"lambda_={self.lambda_}, weight_negatives={self.weight_negatives}, "
            f"dynamic_positive_weights={self.dynamic_positive_weights}"
        )

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor, *, indices=None) -> torch.Tensor:
        """Loss for ``embeddings`` (B, D) with class ``labels`` (B,); ``indices`` is unused."""
        if embeddings.dim() != 2 or labels.shape != embeddings.shape[:1]:
            raise ValueError(
                f"expected embeddings (B, D) and labels (B,), got {tuple(embeddings.shape)} and {tuple(labels.shape)}"
            )
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            # At least float32 (float64 stays float64, for gradcheck).
            x = F.normalize(embeddings.to(torch.promote_types(embeddings.dtype, torch.float32)), dim=1)  # (B, D)
            dist = pairwise_euclidean(x)  # (B, B)
            positive_part, negative_part = self._parts(dist, labels)  # (B,), (B,)
            loss = (positive_part + self.lambda_ * negative_part).mean()
        self.last_logs["srl_pos"] = positive_part.detach().mean()
        self.last_logs["srl_neg"] = negative_part.detach().mean()
        return loss

    def _parts(self, dist: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-query positive part omega * L_P and negative part L_N, both (B,)."""
        n = dist.shape[0]
        same = labels[:, None] == labels[None, :]  # (B, B)
        eye = torch.eye(n, dtype=torch.bool, device=dist.device)
        positive = same & ~eye
        negative = ~same
        hard_pos = positive & (dist > self.alpha - self.margin)
        hard_neg = negative & (dist < self.alpha)
        self._log_fractions(positive, negative, hard_pos, hard_neg)

        # Positive part: mean hinge over hard positives, times the class's dynamic weight.
        zeros = torch.zeros_like(dist)
        pos_hinge = torch.where(hard_pos, dist - (self.alpha - self.margin), zeros)  # (B, B)
        n_hard_pos = hard_pos.sum(dim=1).to(dist.dtype)  # (B,)
        positive_part = pos_hinge.sum(dim=1) / n_hard_pos.clamp_min(1.0)
        if self.dynamic_positive_weights:
            positive_part = positive_part * self._class_weights(same, positive, hard_pos).to(dist.dtype)

        # Negative part: softmax weights exp(T (alpha - d)) over each query's hard negatives.
        temperature = self.temperature if self.weight_negatives else 0.0
        has_neg = hard_neg.any(dim=1, keepdim=True)  # (B, 1)
        logits = torch.where(hard_neg, temperature * (self.alpha - dist), torch.full_like(dist, float("-inf")))
        # Rows without hard negatives get finite dummy logits so logsumexp/backward stay NaN-free.
        logits = torch.where(has_neg, logits, zeros)
        weights = torch.where(hard_neg, torch.softmax(logits, dim=1), zeros)  # (B, B)
        negative_part = (weights * torch.where(hard_neg, self.alpha - dist, zeros)).sum(dim=1)
        return positive_part, negative_part

    @staticmethod
    def _class_weights(same: torch.Tensor, positive: torch.Tensor, hard_pos: torch.Tensor) -> torch.Tensor:
        """omega_{y_i} = 1 + E_c / H_c per query (B,), counts over every query of the class."""
        hard_per_query = hard_pos.sum(dim=1).double()  # (B,)
        easy_per_query = (positive & ~hard_pos).sum(dim=1).double()  # (B,)
        same_f = same.double()  # (B, B): row i sums over the queries of class y_i
        hard_in_class = same_f @ hard_per_query  # (B,)
        easy_in_class = same_f @ easy_per_query  # (B,)
        omega = 1.0 + easy_in_class / hard_in_class.clamp_min(1.0)
        # A class without hard positives has no positive term to weigh; keep 1 for clarity.
        omega = torch.where(hard_in_class > 0, omega, torch.ones_like(omega))
        return omega

    def _log_fractions(self, positive, negative, hard_pos, hard_neg) -> None:
        """hard / all pairs on the device (0 without pairs: hard is 0 then), no host sync."""
        def fraction(hard, every):
            return hard.sum().double() / every.sum().double().clamp_min(1.0)

        self.last_logs = {"hard_pos_frac": fraction(hard_pos, positive), "hard_neg_frac": fraction(hard_neg, negative)}
