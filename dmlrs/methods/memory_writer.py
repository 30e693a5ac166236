"""How a memory bank is filled: momentum averaging (MB) or a momentum encoder (MU).

SNCA-CE and CDNE both come in the two variants of Kang et al. (TGRS 2020, JSTARS 2020):

- ``bank`` (MB): after the optimizer step, each sample's slot moves towards the feature computed
  in that step: ``m_i <- normalize(mu * m_i + (1 - mu) * f_i)``.
- ``momentum`` (MU): an EMA copy of the model (decay 0.999, as MoCo) encodes the batch before the
  step, and its features replace the slots after the step: ``m_i <- normalize(f_ema_i)``. The
  EMA step happens before encoding, which is the original's order seen from the next step (it
  updates the copy right after ``optimizer.step()``). ``ema_bn`` picks the copy's batch norm
  (see ``dmlrs.memory.MomentumEncoder``; default ``"train"``, the original's).

The original code writes the memory inside the autograd backward of its memory layer; dmlrs
writes it after ``optimizer.step()``. The values are the same (both are this step's features).

Distributed training: :meth:`MemoryWriter.write` gathers the queued indices and values of every
rank (their slices of the global batch, in rank order) and applies the global batch's update on
every rank, so the banks stay identical and equal to a single process's. The EMA copy is
advanced from the DDP-synchronised model, so it is the same on every rank too.
"""
from __future__ import annotations

import torch
from torch import nn

from dmlrs.engine.distributed import gather_batch
from dmlrs.memory import MemoryBank, MomentumEncoder

MEMORY_MODES = ("bank", "momentum")


class MemoryWriter(nn.Module):
    def __init__(self, memory: MemoryBank, mode: str, model: nn.Module | None = None,
                 ema_decay: float = 0.999, feature_key: str = "embedding", ema_bn: str = "train"):
        super().__init__()
        if mode not in MEMORY_MODES:
            raise ValueError(f"memory mode must be one of {MEMORY_MODES}, got {mode!r}")
        self.memory = memory
        self.mode = mode
        self.feature_key = feature_key
        self.ema = MomentumEncoder(model, decay=ema_decay, bn_mode=ema_bn) if mode == "momentum" else None
        self._pending: tuple[torch.Tensor, torch.Tensor] | None = None

    @torch.no_grad()
    def prepare(self, model: nn.Module, images: torch.Tensor) -> None:
        """Before the forward pass: advance the EMA encoder and encode the batch (MU only)."""
        if self.ema is not None:
            self.ema.update(model)
            self._keys = self.ema(images)[self.feature_key].float()

    def remember(self, indices: torch.Tensor, features: torch.Tensor) -> None:
        """Queue this step's slot values; written by :meth:`write` after the optimizer step."""
        values = self._keys if self.ema is not None else features
        self._pending = (indices, nn.functional.normalize(values.detach().float(), dim=1))

    @torch.no_grad()
    def write(self) -> None:
        """Apply the queued update (after the optimizer step); under DDP with every rank's slice."""
        if self._pending is None:
            return
        indices, values = (gather_batch(tensor) for tensor in self._pending)
        if self.mode == "bank":
            self.memory.update(indices, values)
        else:
            self.memory.replace(indices, values)
        self._pending = None
