"""Scalable Neighbourhood Component Analysis (SNCA) loss over a per-sample memory bank.

Papers: Wu, Efros, Yu, "Improving Generalization via Scalable Neighborhood Component
Analysis", ECCV 2018; Kang, Fernandez-Beltran, Ye, Tong, Ghamisi, Plaza, "Deep Metric
Learning Based on Scalable Neighborhood Components for Remote Sensing Scene
Characterization", IEEE TGRS 2020 (SNCA-CE).

Equation (plain text), for a batch of B normalised embeddings f_i with dataset indices
idx_i and labels y_i, against all N memory slots m_j with labels c_j:

    s_ij  = f_i . m_j / T                                       (logits, B x N)
    P_i   = { j : c_j = y_i, j != idx_i }                       (same class, own slot excluded)
    Q_i   = { j : c_j != y_i }                                  (other classes)
    p_i   = (sum_{j in P_i} exp(s_ij) / exp(margin / T))
            / (sum_{k in Q_i} exp(s_ik) + sum_{j in P_i} exp(s_ij) / exp(margin / T))
    loss  = -(1 / B) * sum_{i : P_i non-empty} log p_i

With margin = 0, p_i is the probability that f_i picks a same-class neighbour under the
softmax over all other slots. The margin divides the same-class mass in the numerator AND
in the denominator, exactly as the original code (``Z = Z_exclude + p / exp(margin)``); the
original code applies its margin to logits already divided by T, so its ``margin`` equals
our ``margin / T`` (ours is in cosine units).

Samples with no same-class slot besides their own (P_i empty) contribute 0 and the sum is
still divided by B, as in the original code (which masked out p_i = 0 but divided by B): a
singleton class neither yields NaN/inf nor re-weights the rest of the batch.

Numerics: log p_i = -softplus(lse_Q - lse_P + margin / T), where lse_P / lse_Q are the
log-sum-exp of the logits over P_i / Q_i. Each row is shifted by its maximum before exp, so
nothing overflows for any finite logits; if a same-class mass underflows against that shift
(logits spanning more than ~60, e.g. un-normalised inputs or T << 0.05), the batch is
recomputed with each set shifted by its own maximum, so log(0) never happens. That check is
one host sync per call. The maths runs in float32 (float64 if given float64) with autocast
disabled. The backward pass is written by hand (one fused B x N expression, no autograd
graph over the B x N logits):

    d loss / d s_ij = (1 - p_i) / B * (softmax_Q(s_i)_j - softmax_P(s_i)_j)

Shapes: embeddings (B, d) unit-norm, labels (B,) long, indices (B,) long into the memory,
memory slots (N, d), memory_labels (N,) long. Memory use O(B x N), never B x N x d.

Paper defaults: T = 0.05, margin = 0 (memory momentum 0.5 -> 0.8 at epoch 80 -> 0.9 at 120,
see ``dmlrs.memory.MemoryBank``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dmlrs.errors import DmlrsError
from dmlrs.memory import MemoryBank


# a same-class mass below this (relative to the shift) is recomputed with its own shift: the
# terms of a sum >= 1e-26 over <= 1e6 slots that matter are normal fp32 numbers (> 1.2e-38)
_UNDERFLOW_GUARD = 1e-26


def _masked_sums(logits, same_class, pos_shift, neg_shift):
    """exp(s_ij - shift) (B, N) and its same-class / other-class row sums (B,).

    The shift is pos_shift[i] for same-class slots and neg_shift[i] for the others; the own
    slot holds -inf, so its weight is 0.
    """
    if pos_shift is neg_shift:
        weights = (logits - pos_shift[:, None]).exp_()
    else:
        weights = (logits - torch.where(same_class, pos_shift[:, None], neg_shift[:, None])).exp_()
    pos_sum = torch.where(same_class, weights, 0.0).sum(dim=1)
    neg_sum = torch.where(same_class, 0.0, weights).sum(dim=1)
    return weights, pos_sum, neg_sum


def _finite_or_zero(values):
    return torch.where(torch.isfinite(values), values, 0.0)


class _SNCAFunction(torch.autograd.Function):
    """Mean SNCA loss of a batch; gradient w.r.t. the embeddings only (the memory is a buffer)."""

    @staticmethod
    def forward(ctx, embeddings, slots, same_class, indices, has_positive, inv_temperature: float,
                margin_logit: float):
        batch = embeddings.shape[0]
        logits = torch.mm(embeddings * inv_temperature, slots.t())  # (B, N)
        logits.scatter_(1, indices[:, None], float("-inf"))  # own slot: never a neighbour
        # fast path: one shift per row (its max), exact unless the same-class mass underflows,
        # i.e. the logits span more than ~60 (never for unit vectors with T >= 0.02)
        row_max = _finite_or_zero(logits.amax(dim=1))  # (B,)
        pos_shift = neg_shift = row_max
        weights, pos_sum, neg_sum = _masked_sums(logits, same_class, pos_shift, neg_shift)
        if bool((has_positive & (pos_sum < _UNDERFLOW_GUARD)).any()):
            # slow path: shift each set by its own max, so each non-empty sum is >= 1
            pos_shift = _finite_or_zero(torch.where(same_class, logits, float("-inf")).amax(dim=1))
            neg_shift = _finite_or_zero(torch.where(same_class, float("-inf"), logits).amax(dim=1))
            weights, pos_sum, neg_sum = _masked_sums(logits, same_class, pos_shift, neg_shift)
        lse_pos = pos_shift + pos_sum.log()  # (B,), -inf without same-class slots
        lse_neg = neg_shift + neg_sum.log()  # (B,), -inf without other-class slots
        z = lse_neg - lse_pos + margin_logit  # -log p_i = softplus(z)
        per_sample = torch.where(has_positive, F.softplus(z), 0.0)
        one_minus_p = torch.where(has_positive, torch.sigmoid(z), 0.0)  # d softplus(z) / dz
        ctx.save_for_backward(weights, same_class, slots, pos_sum, neg_sum, one_minus_p)
        ctx.inv_temperature = inv_temperature
        return per_sample.sum() / batch

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss):
        weights, same_class, slots, pos_sum, neg_sum, one_minus_p = ctx.saved_tensors
        coef = grad_loss * one_minus_p / weights.shape[0]  # (B,)
        # an empty (or fully underflowed) set has all weights 0: any finite divisor gives 0
        pos_scale = -coef / torch.where(pos_sum > 0, pos_sum, 1.0)
        neg_scale = coef / torch.where(neg_sum > 0, neg_sum, 1.0)
        grad_logits = weights * torch.where(same_class, pos_scale[:, None], neg_scale[:, None])  # (B, N)
        grad_embeddings = torch.mm(grad_logits, slots).mul_(ctx.inv_temperature)  # (B, d)
        return grad_embeddings, None, None, None, None, None, None


class SNCALoss(nn.Module):
    """SNCA over all memory slots; see the module docstring for the equation.

    Args:
        memory: the ``MemoryBank`` holding one slot per training image (updated by the engine).
        memory_labels: (N,) class of every slot (registered as a buffer).
        temperature: T (paper: 0.05).
        margin: in cosine units, divides the same-class mass by exp(margin / T) (paper: 0).

    ``forward(embeddings, labels, *, indices)`` -> scalar; ``last_logs = {"snca": value}``.
    """

    def __init__(self, memory: MemoryBank, memory_labels: torch.Tensor, temperature: float = 0.05,
                 margin: float = 0.0):
        super().__init__()
        if temperature <= 0:
            raise DmlrsError(f"SNCA temperature must be > 0, got {temperature}: the paper uses 0.05")
        memory_labels = torch.as_tensor(memory_labels, dtype=torch.long).reshape(-1)
        if memory_labels.numel() != memory.num_samples:
            raise DmlrsError(
                f"SNCA got {memory_labels.numel()} memory labels for a memory of {memory.num_samples} slots: "
                "build the memory with one slot per training image"
            )
        self.memory = memory
        self.temperature = float(temperature)
        self.margin = float(margin)
        self.register_buffer("memory_labels", memory_labels.clone())
        # slots per class: a sample has a same-class neighbour iff its class has > 1 slot
        self.register_buffer("class_sizes", torch.bincount(memory_labels), persistent=False)
        self.last_logs: dict[str, float] = {}

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor, *,
                indices: torch.Tensor | None = None) -> torch.Tensor:
        if indices is None:
            raise DmlrsError(
                "SNCALoss needs the dataset indices of the batch (indices=...) to find each image's "
                "memory slot: use a training dataset that returns sample indices"
            )
        indices = indices.reshape(-1).to(device=embeddings.device, dtype=torch.long)
        labels = labels.reshape(-1).to(embeddings.device)
        if not (embeddings.dim() == 2 and embeddings.shape[0] == labels.numel() == indices.numel()
                and embeddings.shape[1] == self.memory.dim):
            raise DmlrsError(
                f"SNCALoss got embeddings {tuple(embeddings.shape)}, {labels.numel()} labels, "
                f"{indices.numel()} indices; expected (B, {self.memory.dim}), B labels, B indices"
            )
        if not torch.equal(labels, self.memory_labels[indices]):
            raise DmlrsError(
                "SNCALoss: batch labels differ from the memory labels at the batch indices: the dataset "
                "indices must be positions in the training split the memory was built from"
            )
        dtype = torch.float64 if embeddings.dtype == torch.float64 else torch.float32
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            same_class = labels[:, None] == self.memory_labels[None, :]  # (B, N)
            has_positive = self.class_sizes[labels] > 1  # (B,)
            loss = _SNCAFunction.apply(
                embeddings.to(dtype), self.memory.slots.to(dtype), same_class, indices, has_positive,
                1.0 / self.temperature, self.margin / self.temperature,
            )
        self.last_logs = {"snca": float(loss.detach())}
        return loss

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, margin={self.margin}"
