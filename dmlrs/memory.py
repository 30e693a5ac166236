"""Per-sample memory bank and momentum (EMA) encoder.

``MemoryBank`` is the non-parametric memory of Wu et al. (CVPR 2018, "Unsupervised feature
learning via non-parametric instance discrimination") reused by Scalable NCA (Wu et al., ECCV
2018) and SNCA-CE / CDNE (Kang et al., TGRS 2020 / JSTARS 2020): one L2-normalised slot
``m_i`` (dim,) per training image, refreshed after each optimiser step with the image's new
normalised embedding ``f_i``::

    m_i <- normalize(mu * m_i + (1 - mu) * f_i)          (update, "momentum" variant)
    m_i <- normalize(f_i)                                 (replace, "MU" variant)

The papers use ``mu = 0.5``, raised to 0.8 at epoch 80 and 0.9 at epoch 120
(``schedule={80: 0.8, 120: 0.9}``, 0-based epochs as in the original code).

``MomentumEncoder`` is the exponential moving average copy of a model used as the key encoder
in MoCo (He et al., CVPR 2020)::

    theta_ema <- decay * theta_ema + (1 - decay) * theta

Both are updated explicitly by the engine after ``optimizer.step()``; neither is ever updated
inside an autograd backward. Their state lives in registered buffers / sub-modules, so
``state_dict()`` and ``.to(device)`` carry it.
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from dmlrs.errors import DmlrsError


def _check_momentum(value: float, name: str) -> float:
    value = float(value)
    if not 0.0 <= value < 1.0:
        raise DmlrsError(f"{name} must lie in [0, 1), got {value}: pick a memory momentum such as 0.5")
    return value


class MemoryBank(nn.Module):
    """One slot per training image (L2-normalised from its first update on).

    Args:
        num_samples: N, the number of training images (slot i belongs to dataset index i).
        dim: d, the embedding size.
        momentum: mu of the update rule before any schedule milestone (paper: 0.5).
        schedule: ``{epoch: momentum}`` milestones; from ``epoch`` on, ``momentum`` takes that
            value (paper: ``{80: 0.8, 120: 0.9}``). Epochs are 0-based, as passed to ``set_epoch``.
        generator: optional ``torch.Generator`` for the initial slots (else the global RNG).

    Buffers: ``slots`` (N, d) float32, ``momentum_value`` () float64 (the current mu; kept in
    the state_dict so a checkpoint restores it even without calling ``set_epoch``).

    Initialisation as the papers' code (Wu et al.'s ``LinearAverage``): uniform in
    ``[-1/sqrt(d/3), 1/sqrt(d/3)]``, each coordinate of variance 1/d, so rows have norm ~1
    (not exactly: they are not normalised until their first update).

    Duplicate indices in one ``update`` call: the features of the duplicates are averaged and
    the slot gets ONE momentum step with that mean (order-independent and deterministic,
    unlike the original ``index_copy_`` whose winner is undefined).
    """

    def __init__(
        self,
        num_samples: int,
        dim: int,
        momentum: float = 0.5,
        schedule: dict[int, float] | None = None,
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        if num_samples < 1 or dim < 1:
            raise DmlrsError(
                f"MemoryBank needs num_samples >= 1 and dim >= 1, got {num_samples} x {dim}: "
                "check the training split size and --dim"
            )
        self.base_momentum = _check_momentum(momentum, "memory momentum")
        self.schedule = {int(epoch): _check_momentum(m, f"memory momentum at epoch {epoch}")
                         for epoch, m in sorted((schedule or {}).items())}
        bound = 1.0 / math.sqrt(dim / 3.0)
        init = torch.rand(num_samples, dim, generator=generator) * (2 * bound) - bound
        self.register_buffer("slots", init)
        self.register_buffer("momentum_value", torch.tensor(self.base_momentum, dtype=torch.float64))

    @property
    def num_samples(self) -> int:
        return self.slots.shape[0]

    @property
    def dim(self) -> int:
        return self.slots.shape[1]

    @property
    def momentum(self) -> float:
        return float(self.momentum_value)

    def momentum_at(self, epoch: int) -> float:
        """mu for ``epoch``: the value of the last milestone <= epoch, else the base momentum."""
        value = self.base_momentum
        for milestone, milestone_value in self.schedule.items():  # sorted by epoch
            if epoch >= milestone:
                value = milestone_value
        return value

    def set_epoch(self, epoch: int) -> None:
        """Set ``momentum`` from the schedule; derived from ``epoch`` alone, so resume-safe."""
        self.momentum_value.fill_(self.momentum_at(epoch))

    def _check_batch(self, indices: torch.Tensor, features: torch.Tensor) -> None:
        if features.dim() != 2 or features.shape[1] != self.dim or features.shape[0] != indices.numel():
            raise DmlrsError(
                f"MemoryBank got features of shape {tuple(features.shape)} for {indices.numel()} "
                f"indices; expected ({indices.numel()}, {self.dim}): the embedding size must match the memory"
            )

    @torch.no_grad()
    def update(self, indices: torch.Tensor, features: torch.Tensor) -> None:
        """``m_i <- normalize(mu * m_i + (1 - mu) * f_i)`` for each i in ``indices``.

        indices: (B,) long; features: (B, d) normalised embeddings (cast to the slots' dtype).
        Slots not in ``indices`` are untouched; duplicates are averaged first (see class doc).
        """
        self._blend(indices, features, self.momentum_value.to(self.slots.dtype))

    @torch.no_grad()
    def replace(self, indices: torch.Tensor, features: torch.Tensor) -> None:
        """``m_i <- normalize(f_i)`` (memory "MU" variant): ``update`` with momentum 0."""
        self._blend(indices, features, 0.0)

    def _blend(self, indices: torch.Tensor, features: torch.Tensor, mu) -> None:
        indices = indices.reshape(-1).to(self.slots.device)
        self._check_batch(indices, features)
        features = features.detach().to(self.slots.dtype)
        # mean feature over each index's duplicates in the batch, without a host sync (no
        # torch.unique) and without slot-sized buffers: same = (B, B) duplicate matrix
        same = (indices[:, None] == indices[None, :]).to(self.slots.dtype)
        mean = (same @ features) / same.sum(dim=1, keepdim=True)  # (B, d)
        mixed = mu * self.slots[indices] + (1 - mu) * mean
        self.slots[indices] = F.normalize(mixed, dim=1)  # duplicates write the same row

    def extra_repr(self) -> str:
        return f"num_samples={self.num_samples}, dim={self.dim}, momentum={self.momentum}, schedule={self.schedule}"


EMA_BN_MODES = ("train", "eval")


class MomentumEncoder(nn.Module):
    """EMA copy of a model, used as a key/target encoder (MoCo, He et al., CVPR 2020).

    ``update(model)``: ``theta_ema <- decay * theta_ema + (1 - decay) * theta`` for every
    parameter.

    Batch norm of the copy (``bn_mode``):

    * ``"train"`` (default, the SNCA-CE / CDNE original code): the copy is in eval mode except its
      BatchNorm layers, which stay in train mode, so keys are normalised with the statistics of
      the key batch (the original's "shuffle BN" is a no-op on one device) and the copy's
      running statistics come from its own forwards. Buffers are not averaged or copied.
    * ``"eval"``: BatchNorm uses running statistics, which ``update`` COPIES from the online
      model (they already are running averages of its activations). Each key then depends on
      its own image only, not on its batch-mates (the leak MoCo's shuffle BN avoids).

    ``train()`` never changes this scheme. ``forward`` runs under ``torch.no_grad()``; the
    copy's parameters have ``requires_grad=False``.

    The model's forward must return a dict with "features" (B, d) and "embedding" (B, d).
    """

    def __init__(self, model: nn.Module, decay: float = 0.999, bn_mode: str = "train"):
        super().__init__()
        decay = float(decay)
        if not 0.0 <= decay <= 1.0:
            raise DmlrsError(f"EMA decay must lie in [0, 1], got {decay}: use e.g. --ema 0.999")
        if bn_mode not in EMA_BN_MODES:
            raise DmlrsError(f"--ema-bn must be one of {', '.join(EMA_BN_MODES)}, got {bn_mode!r}")
        self.decay = decay
        self.bn_mode = bn_mode
        self.module = copy.deepcopy(model)
        self.module.requires_grad_(False)
        self.train(self.training)

    def train(self, mode: bool = True) -> "MomentumEncoder":
        super().train(mode)
        self.module.eval()
        if self.bn_mode == "train":
            for layer in self.module.modules():
                if isinstance(layer, nn.modules.batchnorm._BatchNorm):
                    layer.train()
        return self

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One EMA step towards ``model`` (same architecture as the copy)."""
        ema_params = list(self.module.parameters())
        params = list(model.parameters())
        ema_buffers = list(self.module.buffers())
        buffers = list(model.buffers())
        if len(ema_params) != len(params) or len(ema_buffers) != len(buffers):
            raise DmlrsError("MomentumEncoder.update got a model with a different architecture than its copy")
        for ema_p, p in zip(ema_params, params):
            ema_p.lerp_(p.detach().to(ema_p.dtype), 1.0 - self.decay)
        if self.bn_mode == "eval":
            for ema_b, b in zip(ema_buffers, buffers):
                ema_b.copy_(b)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.module(images)
