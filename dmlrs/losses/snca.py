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
our ``margin / T`` (ours is in cosine units). As in the original code, y_i is the memory's
label of slot idx_i; the batch labels are only checked against it (see ``validate``).

Samples with no same-class slot besides their own (P_i empty) contribute 0 and the sum is
still divided by B, as in the original code (which masked out p_i = 0 but divided by B): a
singleton class neither yields NaN/inf nor re-weights the rest of the batch.

Numerics: log p_i = -softplus(lse_Q - lse_P + margin / T), where lse_P / lse_Q are the
log-sum-exp of the logits over P_i / Q_i, each set shifted by its OWN maximum, so every
non-empty sum is >= 1: nothing overflows, and no same-class mass underflows to log(0), for any
finite logits (+-1/T and far beyond, un-normalised inputs, T << 0.05). There is no
data-dependent branch and no host sync (see ``validate`` for the one optional check). Neither
sum is obtained by subtraction (no ``total - same``). The maths runs in float32 (float64 if
given float64) with autocast disabled.

How (B x N passes counted; memory O(B x N), never B x N x d): the slots of each class are
tabulated once from ``memory_labels`` (a (C, K + 1) table, K = the largest class size), so a
batch's same-class slots are a (B, K + 1) index and no (B, N) class mask is ever built. The
logits live in a (B, N + padding) buffer whose padding columns hold -inf (the table's filler
index N points there; the aligned rows also speed up the matmul). Each set's log-sum-exp and
softmax come from ONE fused softmax over its logits plus a sentinel column set to the set's
max M: the sentinel's share d = 1 / (S + 1), S = sum exp(s - M), gives lse = M + log((1 - d) / d)
and the set's softmax is the fused one divided by 1 - d (>= 1/2), a per-row factor folded into
the scatter and the backward scale (see ``_sentinel_softmax``). Per call, over B x N: the
logits matmul, one row max, one fused softmax. Over B x (K + 1): a gather of the same-class
logits, a scatter of -inf over them (own slot included), their max and fused softmax, one
scale, and a scatter of -softmax_P into the other-class softmax. The backward is one matmul
with a per-row scale, written by hand (no autograd graph over the logits):

    d loss / d s_ij = (1 - p_i) / B * (softmax_Q(s_i)_j - softmax_P(s_i)_j)

Shapes: embeddings (B, d) unit-norm, labels (B,) long, indices (B,) long into the memory,
memory slots (N, d), memory_labels (N,) long. ``last_logs["snca"]`` is a detached 0-dim
tensor on the loss's device (reading it with ``float()`` is the caller's sync, not ours).

Paper defaults: T = 0.05, margin = 0 (memory momentum 0.5 -> 0.8 at epoch 80 -> 0.9 at 120,
see ``dmlrs.memory.MemoryBank``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dmlrs.errors import DmlrsError
from dmlrs.memory import MemoryBank


def _finite_or_zero(values):
    return torch.where(torch.isfinite(values), values, 0.0)


def padded_columns(num_slots: int) -> int:
    """Row length of the logits buffer: N + >= 2 padding columns, rows 64-byte aligned.

    Column N stays -inf (the class table's filler), column N + 1 is the softmax sentinel. The
    aligned row stride also speeds up the matmul (MKL fp32, N = 22,050: 26 -> 17 ms).
    """
    return (num_slots + 2 + 15) // 16 * 16


def _sentinel_softmax(logits, sentinel: int):
    """Softmax and log-sum-exp of each row of ``logits`` (B, W) in one fused pass.

    Column ``sentinel`` (-inf on entry) is set to the row max M (0 for an all -inf row), so the
    softmax over the row plus sentinel gives sigma_j = exp(x_j - M) / (S + 1) and, at the
    sentinel, d = 1 / (S + 1) with S = sum_j exp(x_j - M) (>= 1 unless the row is empty). Hence
    lse = M + log(S) = M + log1p(-d) - log(d) (-inf for an empty row, where d = 1) and the
    row's softmax is sigma / (1 - d) (1 - d >= 1/2 for a non-empty row: no cancellation).
    Returns sigma (B, W) (the sentinel column holds d), lse (B,) and 1 - d (B,).
    """
    row_max = _finite_or_zero(logits.amax(dim=1))  # (B,)
    logits.select(1, sentinel).copy_(row_max)
    sigma = torch.softmax(logits, dim=1)
    at_sentinel = sigma[:, sentinel]
    # xlogy(1, d) = log(d); torch.log would open an OpenMP region for these B values on the CPU
    # (its vectorised-math path), a costly barrier when the cores are shared
    log_at_sentinel = torch.special.xlogy(1.0, at_sentinel)
    return sigma, row_max + torch.log1p(-at_sentinel) - log_at_sentinel, 1.0 - at_sentinel


class _SNCAFunction(torch.autograd.Function):
    """Mean SNCA loss of a batch; gradient w.r.t. the embeddings only (the memory is a buffer).

    ``same_index`` (B, K + 1): the slots of each row's class (own slot included), padded with
    N, the index of a padding column of the logits buffer that always holds -inf (the last
    column is always N: it becomes the same-class sentinel).
    """

    @staticmethod
    def forward(ctx, embeddings, slots, same_index, indices, inv_temperature: float, margin_logit: float):
        batch, num_slots = embeddings.shape[0], slots.shape[0]
        neg_inf = float("-inf")
        buffer = embeddings.new_empty(batch, padded_columns(num_slots))  # (B, N + padding)
        buffer[:, num_slots:] = neg_inf
        torch.mm(embeddings * inv_temperature, slots.t(), out=buffer[:, :num_slots])  # logits s_ij
        buffer.scatter_(1, indices[:, None], neg_inf)  # own slot: never a neighbour
        pos_logits = buffer.gather(1, same_index)  # (B, K + 1): P_i's logits, -inf elsewhere
        buffer.scatter_(1, same_index, neg_inf)  # (B, N + padding): Q_i's logits, -inf elsewhere
        # each set shifted by its own max: neither sum overflows nor underflows to log(0)
        neg_sigma, lse_neg, neg_norm = _sentinel_softmax(buffer, num_slots + 1)  # Q_i is never empty here
        pos_sigma, lse_pos, pos_norm = _sentinel_softmax(pos_logits, same_index.shape[1] - 1)
        has_positive = torch.isfinite(lse_pos)
        z = lse_neg - lse_pos + margin_logit  # -log p_i = softplus(z)
        per_sample = torch.where(has_positive, F.softplus(z), 0.0)
        one_minus_p = torch.where(has_positive, torch.sigmoid(z), 0.0)  # d softplus(z) / dz
        # d z_i / d s_ij = softmax_Q(s_i)_j - softmax_P(s_i)_j
        #                = (neg_sigma_ij - pos_sigma_ij * neg_norm_i / pos_norm_i) / neg_norm_i:
        # the P_i entries are written into neg_sigma (the own slot gets 0; the padding column N,
        # left out of the backward, gets the rest), 1 / neg_norm_i goes into the backward's scale
        pos_scale = -torch.where(has_positive, neg_norm / pos_norm, 0.0)
        neg_sigma.scatter_(1, same_index, pos_sigma.mul_(pos_scale[:, None]))
        ctx.save_for_backward(neg_sigma, slots, one_minus_p / neg_norm)
        ctx.inv_temperature = inv_temperature
        return per_sample.sum() / batch

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss):
        direction, slots, row_factor = ctx.saved_tensors
        row_scale = grad_loss * row_factor * (ctx.inv_temperature / direction.shape[0])  # (B,)
        grad_embeddings = torch.mm(direction[:, :slots.shape[0]], slots).mul_(row_scale[:, None])  # (B, d)
        return grad_embeddings, None, None, None, None, None


class SNCALoss(nn.Module):
    """SNCA over all memory slots; see the module docstring for the equation.

    Args:
        memory: the ``MemoryBank`` holding one slot per training image (updated by the engine).
        memory_labels: (N,) class of every slot (registered as a buffer).
        temperature: T (paper: 0.05).
        margin: in cosine units, divides the same-class mass by exp(margin / T) (paper: 0).

    ``forward(embeddings, labels, *, indices)`` -> scalar; ``last_logs = {"snca": detached
    0-dim tensor}``.

    ``validate`` (default True): check that the batch labels equal the memory labels at the
    batch indices (else the dataset indices are not positions in the split the memory was built
    from) and raise ``DmlrsError`` if not. On an accelerator that is one device-to-host sync, so
    it runs only while ``validate`` is True: the engine switches it on for the first step of
    each epoch (``Method.set_input_checks``). On the CPU it costs no sync and runs every call.
    The loss itself never depends on the batch labels (it uses the memory's, as the original).
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
        if memory_labels.numel() and int(memory_labels.min()) < 0:
            raise DmlrsError("SNCA memory labels must be >= 0: map the class names to 0..C-1")
        self.memory = memory
        self.temperature = float(temperature)
        self.margin = float(margin)
        self.validate = True
        self.register_buffer("memory_labels", memory_labels.clone())
        self._index_classes()
        self.last_logs: dict[str, torch.Tensor] = {}

    #: the (C, K) table of the slots of each class is kept while C * K <= TABLE_SIZE_LIMIT * N
    #: (C * K ~ N for balanced classes); for very unbalanced classes the (B, K) index is built
    #: per batch from the class-sorted slot list instead (a few more (B, K) ops, no table)
    TABLE_SIZE_LIMIT = 4

    def _index_classes(self) -> None:
        """Slots grouped by class (derived from ``memory_labels``; not saved in checkpoints)."""
        labels = self.memory_labels
        num_slots = labels.numel()
        class_sizes = torch.bincount(labels)  # (C,)
        max_size, num_classes = int(class_sizes.max()), int((class_sizes > 0).sum())
        self.single_class = num_classes == 1  # Q_i empty for every sample: loss 0
        slots_by_class = torch.argsort(labels, stable=True)  # (N,)
        class_starts = torch.cumsum(class_sizes, 0) - class_sizes  # (C,)
        offsets = torch.arange(max_size + 1, device=labels.device)  # (K + 1,): the last is always filler
        for name, value in (("class_sizes", class_sizes), ("class_starts", class_starts),
                            ("slots_by_class", slots_by_class), ("class_offsets", offsets)):
            self.register_buffer(name, value, persistent=False)
        table = None
        if class_sizes.numel() * max_size <= self.TABLE_SIZE_LIMIT * max(num_slots, 1024):
            table = self._class_slots(torch.arange(class_sizes.numel(), device=labels.device))  # (C, K + 1)
        self.register_buffer("class_slots", table, persistent=False)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._index_classes()  # the loaded memory_labels may differ from the constructor's

    def _class_slots(self, classes: torch.Tensor) -> torch.Tensor:
        """(len(classes), K + 1): the slots of each class in ``classes``, padded with N."""
        num_slots = self.slots_by_class.numel()
        position = (self.class_starts[classes][:, None] + self.class_offsets).clamp_(max=num_slots - 1)
        in_class = self.class_offsets < self.class_sizes[classes][:, None]
        return torch.where(in_class, self.slots_by_class[position], num_slots)

    def _same_class_index(self, classes: torch.Tensor) -> torch.Tensor:
        """(B, K + 1): the slots of each sample's class (own slot included), padded with N."""
        return self._class_slots(classes) if self.class_slots is None else self.class_slots[classes]

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
        classes = self.memory_labels[indices]  # (B,), the original's labels of the batch
        if (self.validate or classes.device.type == "cpu") and not torch.equal(labels, classes):
            # torch.equal is a host sync on an accelerator: see ``validate``
            raise DmlrsError(
                "SNCALoss: batch labels differ from the memory labels at the batch indices: the dataset "
                "indices must be positions in the training split the memory was built from"
            )
        dtype = torch.float64 if embeddings.dtype == torch.float64 else torch.float32
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            embeddings = embeddings.to(dtype)
            if self.single_class:  # no other-class slot: p_i = 1, loss 0, gradient 0
                loss = embeddings.sum() * 0.0
            else:
                loss = _SNCAFunction.apply(
                    embeddings, self.memory.slots.to(dtype), self._same_class_index(classes), indices,
                    1.0 / self.temperature, self.margin / self.temperature,
                )
        self.last_logs = {"snca": loss.detach()}
        return loss

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, margin={self.margin}"
