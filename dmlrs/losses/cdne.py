"""CDNE hashing objective: SNCA on relaxed codes + class cross-entropy + quantization.

Paper: Kang, Fernandez-Beltran, Ye, Tong, Plaza, "Deep Hashing Based on Class-Discriminated
Neighborhood Embedding", IEEE JSTARS 2020 (CDNE), DOI 10.1109/JSTARS.2020.3027954.

Equation (plain text), for relaxed codes h_i (B x bits: the raw linear output of the hash
layer in the original code, no activation), class-head logits z_i = V h_i + c (B x C),
labels y_i and dataset indices idx_i:

    loss = snca_weight  * L_snca(normalize(h), y, idx)          (see dmlrs.losses.snca; the
                                                                memory holds normalised codes)
         + ce_weight    * (1/B) sum_i -log softmax(z_i)[y_i]   (class discrimination)
         + quant_weight * (1/(B*bits)) sum_i,k (|h_ik| - 1)^2  (pushes codes to +-1)

Binary codes at retrieval time are 1[h > 0]. The SNCA part is an ``SNCALoss`` (composed, not
copied); its temperature and margin follow the SNCA defaults (T = 0.05, margin = 0).

Defaults, as the authors' code (jiankang1991/CDNE): all three weights 1. Its CDNE (MB) script
calls the SNCA weight ``--lambda_`` (default 1); CE and quantization are unweighted in both
the MB and MU scripts.

All parts are computed in float32 with autocast disabled (T = 0.05 overflows in fp16).
Shapes: codes (B, bits), labels (B,), indices (B,), logits (B, C).
``last_logs = {"snca", "ce", "quant", "cdne"}`` (unweighted parts and the weighted total), detached
device tensors: logging them costs no host sync (the engine reads them once per log interval).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dmlrs.errors import DmlrsError
from dmlrs.losses.snca import SNCALoss
from dmlrs.memory import MemoryBank


class CDNELoss(nn.Module):
    """snca_weight * SNCA(normalize(codes)) + ce_weight * CE(logits)
    + quant_weight * mean((|codes| - 1)^2)."""

    def __init__(self, memory: MemoryBank, memory_labels: torch.Tensor, temperature: float = 0.05,
                 margin: float = 0.0, snca_weight: float = 1.0, ce_weight: float = 1.0,
                 quant_weight: float = 1.0):
        super().__init__()
        if min(snca_weight, ce_weight, quant_weight) < 0:
            raise DmlrsError(
                f"CDNE weights must be >= 0, got --lambda_ {snca_weight}, --ce-weight {ce_weight}, "
                f"--quant-weight {quant_weight}"
            )
        self.snca = SNCALoss(memory, memory_labels, temperature=temperature, margin=margin)
        self.snca_weight = float(snca_weight)
        self.ce_weight = float(ce_weight)
        self.quant_weight = float(quant_weight)
        self.last_logs: dict[str, torch.Tensor] = {}

    def forward(self, codes: torch.Tensor, labels: torch.Tensor, *, indices: torch.Tensor | None = None,
                logits: torch.Tensor | None = None) -> torch.Tensor:
        if logits is None:
            raise DmlrsError(
                "CDNELoss needs the class head's logits (logits=...): build the CDNE model with a class head"
            )
        dtype = torch.float64 if codes.dtype == torch.float64 else torch.float32
        with torch.autocast(device_type=codes.device.type, enabled=False):
            codes = codes.to(dtype)
            snca = self.snca(F.normalize(codes, dim=1), labels, indices=indices)
            ce = F.cross_entropy(logits.to(dtype), labels.reshape(-1).to(logits.device))
            quant = (codes.abs() - 1).pow(2).mean()
            loss = self.snca_weight * snca + self.ce_weight * ce + self.quant_weight * quant
        self.last_logs = {"snca": snca.detach(), "ce": ce.detach(), "quant": quant.detach(), "cdne": loss.detach()}
        return loss

    def extra_repr(self) -> str:
        return f"snca_weight={self.snca_weight}, ce_weight={self.ce_weight}, quant_weight={self.quant_weight}"
