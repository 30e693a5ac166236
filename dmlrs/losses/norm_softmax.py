"""Normalized softmax loss, optionally with the ArcFace additive angular margin (MNCE).

Papers
    Zhai & Wu, "Classification is a Strong Baseline for Deep Metric Learning", BMVC 2019
    (arXiv 2018): normalized softmax (NSL).
    Deng et al., "ArcFace: Additive Angular Margin Loss for Deep Face Recognition", CVPR 2019:
    the margin ``cos(theta + m)`` on the target class.
    Kang et al., "Deep Metric Learning Based on Scalable Neighborhood Components for Remote
    Sensing Scene Characterization" / HR-S2DML (Remote Sensing 2020): MNCE = NSL + ArcFace margin.

Equation (plain text), for a batch of B embeddings x_i with labels y_i and C class prototypes w_c:
    cos_ic   = <x_i / |x_i|, w_c / |w_c|>                                   (B, C)
    target   = cos(theta_iy + m) = cos_iy * cos(m) - sqrt(1 - cos_iy^2) * sin(m)
               if cos_iy > cos(pi - m), else cos_iy - m * sin(m)  (fallback keeping the
               target logit monotone in theta once theta + m would pass pi)
    z_ic     = cos_ic / T for c != y_i,   z_iy = target / T
    loss     = mean_i [ -log softmax(z_i)_y_i ]  (cross-entropy)
With m = 0 this is exactly cross-entropy on cos / T (plain normalized softmax).

Shapes: embeddings (B, D), labels (B,) int64 in [0, C), prototypes (C, D) -> scalar.

Defaults: T = 0.05 (Zhai & Wu; HR-S2DML), m = 0.0 for NSL and m = 0.5 rad for MNCE (ArcFace).
Prototypes are initialised as in Zhai & Wu's reference code (the nn.Linear rule):
uniform(-1/sqrt(D), 1/sqrt(D)); only their direction matters since they are normalised.

Numerics: 1/T = 20 makes logits up to +-20, whose exp overflows fp16, so everything is computed
in fp32 (or fp64 when the inputs are fp64) with autocast disabled, and the cross-entropy uses
log-softmax. sqrt(1 - cos^2) is computed on a clamped argument so its gradient stays finite at
cos = +-1 (acos is never used).

Host syncs: none per call in training. ``last_logs = {"norm_softmax": loss}`` holds a detached
device tensor (reading it is the caller's choice). The label range check needs the labels' min
and max on the host (one device sync on CUDA, both read together); it runs while
``validate`` is True (the default, so a loss called on its own checks every call). The
engine turns it on for the first step of each epoch only (``Method.set_input_checks``); the
other steps rely on the dataset's labels, which do not change within a run.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dmlrs.errors import DmlrsError

# Lower clamp of 1 - cos^2 inside sqrt: keeps d sqrt / d cos finite at cos = +-1.
_SIN_SQ_EPS = 1e-7


def read_ranges(*tensors: Tensor) -> list[tuple[int, int]]:
    """(min, max) of each non-empty integer tensor, read to the host in one transfer (one
    device sync on CUDA, however many tensors)."""
    bounds = torch.stack([bound for t in tensors for bound in (t.min(), t.max())]).to(torch.int64)
    values = bounds.tolist()
    return [(values[i], values[i + 1]) for i in range(0, len(values), 2)]


def compute_dtype(*tensors: Tensor) -> torch.dtype:
    """At least fp32: fp16/bf16 inputs are promoted, fp64 inputs (gradcheck) stay fp64."""
    dtype = torch.float32
    for tensor in tensors:
        dtype = torch.promote_types(dtype, tensor.dtype)
    return dtype


class CosinePrototypeLoss(nn.Module):
    """Shared base: normalised class prototypes (an ``nn.Parameter`` owned by the loss) and
    temperature-scaled cosine logits. Subclasses define ``forward``.

    ``validate`` (default True): check that labels (and indices) lie in range, which reads
    them on the host (a device sync on CUDA); the engine switches it off after the first step of
    each epoch. Shape checks always run (they need no sync)."""

    def __init__(self, num_classes: int, dim: int, temperature: float = 0.05) -> None:
        super().__init__()
        if int(num_classes) < 1:
            raise DmlrsError(f"num_classes must be >= 1 (got {num_classes}); check the dataset's class count.")
        if int(dim) < 1:
            raise DmlrsError(f"embedding dim must be >= 1 (got {dim}); check --dim.")
        if not temperature > 0:
            raise DmlrsError(f"temperature must be > 0 (got {temperature}); the papers use 0.05.")
        self.num_classes = int(num_classes)
        self.dim = int(dim)
        self.temperature = float(temperature)
        bound = 1.0 / math.sqrt(self.dim)
        self.prototypes = nn.Parameter(torch.empty(self.num_classes, self.dim).uniform_(-bound, bound))  # (C, D)
        self.validate = True
        #: per-part values of the last call for logging: detached device tensors (no host sync)
        self.last_logs: dict[str, Tensor] = {}

    def cosines(self, embeddings: Tensor) -> Tensor:
        """Cosine similarity of every embedding to every prototype: (B, D) -> (B, C), fp32+."""
        if embeddings.dim() != 2 or embeddings.shape[1] != self.dim:
            raise ValueError(f"embeddings must have shape (B, {self.dim}), got {tuple(embeddings.shape)}")
        dtype = compute_dtype(embeddings, self.prototypes)
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            x = F.normalize(embeddings.to(dtype), dim=1)  # (B, D)
            w = F.normalize(self.prototypes.to(dtype), dim=1)  # (C, D)
            return x @ w.t()  # (B, C)

    def logits(self, embeddings: Tensor) -> Tensor:
        """Plain ``cos / T`` without margin, (B, D) -> (B, C): for prediction and BNM."""
        return self.cosines(embeddings) / self.temperature

    def _check_labels(self, embeddings: Tensor, labels: Tensor, *, check_range: bool | None = None) -> None:
        """Shapes always; the value range when ``check_range`` (default: ``self.validate``)."""
        self._check_label_shape(embeddings, labels)
        if self.validate if check_range is None else check_range:
            self._check_label_range(*read_ranges(labels)[0])

    def _check_label_shape(self, embeddings: Tensor, labels: Tensor) -> None:
        if labels.dim() != 1 or labels.shape[0] != embeddings.shape[0]:
            raise ValueError(f"labels must have shape ({embeddings.shape[0]},), got {tuple(labels.shape)}")
        if labels.numel() == 0:
            raise ValueError("empty batch: the loss needs at least one sample")

    def _check_label_range(self, low: int, high: int) -> None:
        if low < 0 or high >= self.num_classes:
            raise DmlrsError(
                f"labels must lie in [0, {self.num_classes}) but range over [{low}, {high}]; "
                "the loss was built with the wrong num_classes for this dataset."
            )

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, dim={self.dim}, temperature={self.temperature}"


class NormSoftmaxLoss(CosinePrototypeLoss):
    """Normalized softmax (margin = 0) or MNCE / ArcFace-margin softmax (margin > 0)."""

    def __init__(self, num_classes: int, dim: int, temperature: float = 0.05, margin: float = 0.0) -> None:
        super().__init__(num_classes, dim, temperature)
        if not 0.0 <= margin < math.pi / 2:
            raise DmlrsError(f"margin must lie in [0, pi/2) radians (got {margin}); ArcFace uses 0.5.")
        self.margin = float(margin)

    def _target_with_margin(self, cos_target: Tensor) -> Tensor:
        """cos(theta + m) for the target-class cosines (B,), with the theta + m > pi fallback."""
        cos_m, sin_m = math.cos(self.margin), math.sin(self.margin)
        sin_theta = torch.sqrt(torch.clamp(1.0 - cos_target * cos_target, min=_SIN_SQ_EPS))
        shifted = cos_target * cos_m - sin_theta * sin_m
        fallback = cos_target - self.margin * sin_m
        return torch.where(cos_target > math.cos(math.pi - self.margin), shifted, fallback)

    def forward(self, embeddings: Tensor, labels: Tensor, *, indices: Tensor | None = None) -> Tensor:
        """(B, D), (B,) -> scalar. ``indices`` is accepted for the common signature and unused."""
        self._check_labels(embeddings, labels)
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            cos = self.cosines(embeddings)  # (B, C)
            if self.margin > 0:
                rows = torch.arange(cos.shape[0], device=cos.device)
                target = self._target_with_margin(cos[rows, labels])  # (B,)
                is_target = F.one_hot(labels, self.num_classes).bool()  # (B, C)
                cos = torch.where(is_target, target.unsqueeze(1), cos)  # (B, C)
            loss = F.cross_entropy(cos / self.temperature, labels)
        self.last_logs = {"norm_softmax": loss.detach()}
        return loss

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, margin={self.margin}"
