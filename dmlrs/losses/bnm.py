"""Batch nuclear-norm maximisation (BNM) on unlabelled predictions.

Paper
    Cui et al., "Towards Discriminability and Diversity: Batch Nuclear-norm Maximization under
    Label Insufficient Situations", CVPR 2020. Used by HR-S2DML (Kang et al., Remote Sensing
    2020) on the unlabelled images.

Equation (plain text), for a batch of B logit rows z_i over C classes:
    A     = softmax(z, dim=1)                   (B, C) prediction matrix
    loss  = -||A||_* / n = -(sum of the min(B, C) singular values of A) / n
    n     = min(B, C)  (normalizer="min_dim": -mean of the singular values, as the original
                        HR-S2DML and BNM code compute it; the default)
          = B          (normalizer="batch": the equation of Cui et al.)
Minimising the loss maximises the nuclear norm, which rewards confident (discriminable) and
varied (diverse: high-rank A, many classes predicted) predictions.

Which logits: that is the method's business. HR-S2DML's original code feeds the plain cosines
to the prototypes (no 1/T: values in [-1, 1], so A is close to uniform); see
``dmlrs.methods.mnce_bnm`` for both forms.

Shapes: logits (B, C) -> scalar. Default: normalizer="min_dim".

Signature on purpose: ``forward(logits)`` takes NO labels and no keyword arguments, unlike the
other losses. BNM is unsupervised; the original HR-S2DML code computed its BNM logits with the
ArcFace margin at the *true* class of the unlabelled (= test) images, which leaks the test
labels into training. With this signature passing labels is a ``TypeError``.

Numerics: softmax and SVD run in fp32 (fp64 stays fp64) with autocast disabled; the nuclear norm is
``torch.linalg.svdvals(A).sum()``, whose gradient is U V^T (defined when the singular values are
non-zero; PyTorch does not need them distinct for svdvals).

Host syncs: ``last_logs = {"bnm": loss}`` is a detached device tensor (no ``.item()``). On CUDA,
``torch.linalg.svdvals`` itself synchronises once per call (cuSOLVER's convergence flag is checked
on the host, see the PyTorch docs of ``torch.linalg.svd``): the one sync a BNM step cannot avoid
without approximating the nuclear norm.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from dmlrs.losses.norm_softmax import compute_dtype

BNM_NORMALIZERS = ("min_dim", "batch")


class BNMLoss(nn.Module):
    """-||softmax(logits)||_* / n, n = min(B, C) or B. Call as ``bnm(logits)``; no labels."""

    def __init__(self, normalizer: str = "min_dim") -> None:
        super().__init__()
        if normalizer not in BNM_NORMALIZERS:
            raise ValueError(f"BNM normalizer must be one of {BNM_NORMALIZERS}, got {normalizer!r}")
        self.normalizer = normalizer
        #: per-part values of the last call for logging: detached device tensors (no host sync)
        self.last_logs: dict[str, Tensor] = {}

    def forward(self, logits: Tensor) -> Tensor:
        """(B, C) unlabelled logits -> scalar."""
        if logits.dim() != 2 or logits.shape[0] == 0 or logits.shape[1] == 0:
            raise ValueError(f"BNM needs logits of shape (B, C) with B, C >= 1, got {tuple(logits.shape)}")
        with torch.autocast(device_type=logits.device.type, enabled=False):
            probs = torch.softmax(logits.to(compute_dtype(logits)), dim=1)  # (B, C)
            singular_values = torch.linalg.svdvals(probs)  # (min(B, C),)
            divisor = singular_values.numel() if self.normalizer == "min_dim" else logits.shape[0]
            loss = -singular_values.sum() / divisor
        self.last_logs = {"bnm": loss.detach()}
        return loss

    def extra_repr(self) -> str:
        return f"normalizer={self.normalizer!r}"
