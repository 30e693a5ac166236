"""Batch nuclear-norm maximisation (BNM) on unlabelled predictions.

Paper
    Cui et al., "Towards Discriminability and Diversity: Batch Nuclear-norm Maximization under
    Label Insufficient Situations", CVPR 2020. Used by HR-S2DML on the unlabelled images.

Equation (plain text), for a batch of B logit rows z_i over C classes:
    A     = softmax(z, dim=1)                   (B, C) prediction matrix
    loss  = -||A||_* / B = -(sum of singular values of A) / B
Minimising the loss maximises the nuclear norm, which rewards confident (discriminable) and
varied (diverse: high-rank A, many classes predicted) predictions.

Shapes: logits (B, C) -> scalar. Defaults: no hyperparameter (the paper weights it by lambda in
the total loss, which is the method's business).

Signature on purpose: ``forward(logits)`` takes NO labels and no keyword arguments, unlike the
other losses. BNM is unsupervised; the original HR-S2DML code fed it the labels of the test
images, which leaks the test split into training. With this signature passing labels is a
``TypeError``.

Numerics: softmax and SVD run in fp32 (fp64 stays fp64) with autocast disabled; the nuclear norm is
``torch.linalg.svdvals(A).sum()``, whose gradient is U V^T (defined when the singular values are
non-zero; PyTorch does not need them distinct for svdvals).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from dmlrs.losses.norm_softmax import compute_dtype


class BNMLoss(nn.Module):
    """-||softmax(logits)||_* / B. Call as ``bnm(logits)``; labels cannot be passed."""

    def __init__(self) -> None:
        super().__init__()
        self.last_logs: dict[str, float] = {}

    def forward(self, logits: Tensor) -> Tensor:
        """(B, C) unlabelled logits -> scalar."""
        if logits.dim() != 2 or logits.shape[0] == 0 or logits.shape[1] == 0:
            raise ValueError(f"BNM needs logits of shape (B, C) with B, C >= 1, got {tuple(logits.shape)}")
        with torch.autocast(device_type=logits.device.type, enabled=False):
            probs = torch.softmax(logits.to(compute_dtype(logits)), dim=1)  # (B, C)
            nuclear_norm = torch.linalg.svdvals(probs).sum()
            loss = -nuclear_norm / logits.shape[0]
        self.last_logs = {"bnm": loss.item()}
        return loss
