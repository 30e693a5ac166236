"""CDNE (Kang, Fernandez-Beltran, Ye, Tong, Plaza, "Deep Hashing based on Class-Discriminated
Neighborhood Embedding", JSTARS 2020).

    L = lambda * L_SNCA(h / ||h||, memory) + w_ce * CE(W h, y) + w_q * mean((|h| - 1)^2)

``h`` are the relaxed codes (``--dim`` bits, default 128): the raw linear output of the hash
layer, as the original (``tanh`` with the model's ``head="hash"``); retrieval binarises them as
``1[h > 0]``. Defaults as the original: lambda = w_ce = w_q = 1. The memory is filled by
momentum averaging (CDNE (MB)) or a momentum encoder (CDNE (MU)), chosen with
``--memory bank|momentum``.
"""
from __future__ import annotations

import torch

from dmlrs.losses import build_loss
from dmlrs.memory import MemoryBank
from dmlrs.methods.base import EpochContext, Method
from dmlrs.methods.memory_writer import MemoryWriter
from dmlrs.methods.snca_ce import MOMENTUM_SCHEDULE
from dmlrs.models import EmbeddingModel


class CDNE(Method):
    name = "CDNE"
    hashing = True

    def __init__(self, model: EmbeddingModel, train_labels: torch.Tensor, *, memory_mode: str = "bank",
                 temperature: float = 0.05, margin: float = 0.0, lambda_: float | None = None,
                 ce_weight: float | None = None, quant_weight: float | None = None,
                 memory_momentum: float = 0.5, ema_decay: float = 0.999, ema_bn: str = "train"):
        super().__init__()
        self.model = model
        memory = MemoryBank(len(train_labels), model.dim, momentum=memory_momentum,
                            schedule=MOMENTUM_SCHEDULE)
        self.writer = MemoryWriter(memory, memory_mode, model, ema_decay, feature_key="features",
                                   ema_bn=ema_bn)
        self.cdne = build_loss("cdne", memory=memory, memory_labels=train_labels,
                               temperature=temperature, margin=margin, snca_weight=lambda_,
                               ce_weight=ce_weight, quant_weight=quant_weight)

    def training_step(self, batch: dict) -> dict[str, torch.Tensor]:
        images, labels, indices = batch["image"], batch["label"], batch["index"]
        self.writer.prepare(self.model, images)
        out = self.model(images)
        total = self.cdne(out["features"], labels, indices=indices, logits=out["logits"])
        self.writer.remember(indices, out["features"])
        return {"loss": total, **self.cdne.last_logs}

    def after_optimizer_step(self) -> None:
        self.writer.write()

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.embed(images)

    def codes(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)["features"]

    def on_epoch_start(self, context: EpochContext) -> None:
        self.writer.memory.set_epoch(context.epoch)

    def scalars(self) -> dict[str, float]:
        return {"memory_momentum": float(self.writer.memory.momentum)}
