"""CDNE hashing objective: SNCA on relaxed codes + class cross-entropy + quantization.

Paper: Kang, Fernandez-Beltran, Hong, Chanussot, Plaza, "Deep Hashing Based on
Class-Discriminated Neighborhood Embedding", IEEE JSTARS 2020 (CDNE).

Equation (plain text), for un-normalised relaxed codes h_i (B x bits, e.g. tanh outputs of
the hash head), class-head logits z_i (B x C), labels y_i and dataset indices idx_i:

    loss = L_snca(normalize(h), y, idx)                        (see dmlrs.losses.snca; the
                                                                memory holds normalised codes)
         + ce_weight    * (1/B) sum_i -log softmax(z_i)[y_i]   (class discrimination)
         + quant_weight * (1/(B*bits)) sum_i,k (|h_ik| - 1)^2  (pushes codes to +-1)

Binary codes at retrieval time are sign(h). The SNCA part is an ``SNCALoss`` (composed, not
copied); its temperature and margin follow the SNCA defaults (T = 0.05, margin = 0).
Defaults ce_weight = 1.0 and quant_weight = 0.1: the paper's exact weights could not be
recovered from the material available when this was written, so these are the project's
defaults; pass the paper's values through the entry script's flags when known.

All parts are computed in float32 with autocast disabled (T = 0.05 overflows in fp16).
Shapes: codes (B, bits), labels (B,), indices (B,), logits (B, C).
``last_logs = {"snca", "ce", "quant", "cdne"}`` (unweighted parts and the weighted total).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dmlrs.errors import DmlrsError
from dmlrs.losses.snca import SNCALoss
from dmlrs.memory import MemoryBank


class CDNELoss(nn.Module):
    """SNCA(normalize(codes)) + ce_weight * CE(logits) + quant_weight * mean((|codes| - 1)^2)."""

    def __init__(self, memory: MemoryBank, memory_labels: torch.Tensor, temperature: float = 0.05,
                 margin: float = 0.0, ce_weight: float = 1.0, quant_weight: float = 0.1):
        super().__init__()
        if ce_weight < 0 or quant_weight < 0:
            raise DmlrsError(
                f"CDNE weights must be >= 0, got ce_weight={ce_weight}, quant_weight={quant_weight}"
            )
        self.snca = SNCALoss(memory, memory_labels, temperature=temperature, margin=margin)
        self.ce_weight = float(ce_weight)
        self.quant_weight = float(quant_weight)
        self.last_logs: dict[str, float] = {}

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
            loss = snca + self.ce_weight * ce + self.quant_weight * quant
        self.last_logs = {"snca": float(snca.detach()), "ce": float(ce.detach()),
                          "quant": float(quant.detach()), "cdne": float(loss.detach())}
        return loss

    def extra_repr(self) -> str:
        return f"ce_weight={self.ce_weight}, quant_weight={self.quant_weight}"
