"""SNCA-CE (Kang et al., "Deep Metric Learning based on Scalable Neighborhood Components for
Remote Sensing Scene Characterization", TGRS 2020).

    L = lambda * L_SNCA(f, memory) + w_ce * CE(W f_raw, y)

``f`` is the L2-normalised embedding, ``f_raw`` the un-normalised FC output that feeds the class
head. The memory holds one slot per training image and is filled either by momentum averaging
(SNCA-CE (MB), ``train_SNCA_CE``) or by a momentum encoder (SNCA-CE (MU), ``train_SNCA_CE_MC``).
``lambda`` weights the SNCA term, as ``--lambda_`` in the original SNCA-CE (MB) script (its MU
script has no such flag: lambda = 1); ``lambda = 0`` is the plain softmax (CE) baseline; ``w_ce`` (``--ce-weight``, the original: 1,
no flag) = 0 is SNCA alone, the paper's SNCA (MB)/(MU) baseline.
Paper defaults: T = 0.05, lambda = 1, memory momentum 0.5 -> 0.8 at epoch 80 -> 0.9 at epoch
120, EMA 0.999 with batch-statistics batch norm.

``loss`` (a :class:`~dmlrs.losses.LossChoice`, ``--loss``) replaces L_SNCA by another loss of
(embeddings, labels): ``L = lambda * L_loss(f) + CE``, the memory, its updates and the rest
unchanged. The loss may name in its constructor what this method gives (``LOSS_CONTEXT``: the
memory bank and its slot labels, the training-set size, the class count, the embedding size).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from dmlrs.engine.distributed import gather_batch, gather_with_grad
from dmlrs.losses import LossChoice
from dmlrs.memory import MemoryBank
from dmlrs.methods.base import EpochContext, Method, ReplaceableMetricTerm
from dmlrs.methods.memory_writer import MemoryWriter
from dmlrs.models import EmbeddingModel

MOMENTUM_SCHEDULE = {80: 0.8, 120: 0.9}


class SNCACE(ReplaceableMetricTerm, Method):
    name = "SNCA_CE"
    #: what a loss replacing the SNCA term may name in its constructor (dmlrs/losses/choice.py)
    LOSS_CONTEXT = ("memory", "memory_labels", "num_samples", "num_classes", "dim", "embedding_size")

    def __init__(self, model: EmbeddingModel, train_labels: torch.Tensor, *, memory_mode: str = "bank",
                 temperature: float = 0.05, margin: float = 0.0, lambda_: float = 1.0,
                 memory_momentum: float = 0.5, ema_decay: float = 0.999, ema_bn: str = "train",
                 ce_weight: float = 1.0, loss: LossChoice | None = None, num_classes: int | None = None):
        super().__init__()
        self.model = model
        self.lambda_ = lambda_
        self.ce_weight = ce_weight
        memory = MemoryBank(len(train_labels), model.dim, momentum=memory_momentum,
                            schedule=MOMENTUM_SCHEDULE)
        self.writer = MemoryWriter(memory, memory_mode, model, ema_decay, ema_bn=ema_bn)
        self.name = "SNCA_CE" if memory_mode == "bank" else "SNCA_CE_MC"
        loss = loss or LossChoice("snca", {"temperature": temperature, "margin": margin})
        context = {"memory": memory, "memory_labels": train_labels, "num_samples": len(train_labels),
                   "num_classes": num_classes or int(torch.as_tensor(train_labels).max()) + 1,
                   "dim": model.dim, "embedding_size": model.dim}
        self.set_metric_term(loss, context, paper_term="snca")

    def training_step(self, batch: dict) -> dict[str, torch.Tensor]:
        images, labels, indices = batch["image"], batch["label"], batch["index"]
        self.writer.prepare(self.model, images)
        out = self.model(images)
        loss = self.metric_term
        inputs = (out["embedding"], labels, indices)
        if self.term != "snca":  # a replacement may couple the batch (triplets, miners): under torchrun
            inputs = (gather_with_grad(inputs[0]), gather_batch(labels), gather_batch(indices))  # global batch
        term = loss(inputs[0], inputs[1], indices=inputs[2])
        ce = F.cross_entropy(out["logits"].float(), labels)
        self.writer.remember(indices, out["embedding"])
        logs = getattr(loss, "last_logs", {})  # a replacement's own parts (e.g. PML's mined_tuples)
        extra = {key: value for key, value in logs.items() if key not in ("loss", "ce", self.term)}
        return {"loss": self.lambda_ * term + self.ce_weight * ce, self.term: term.detach(), "ce": ce.detach(), **extra}

    def after_optimizer_step(self) -> None:
        self.writer.write()

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.embed(images)

    def on_epoch_start(self, context: EpochContext) -> None:
        self.writer.memory.set_epoch(context.epoch)

    def scalars(self) -> dict[str, float]:
        return {"memory_momentum": float(self.writer.memory.momentum)}
