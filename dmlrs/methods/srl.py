"""SRL (Zhao et al., "Similarity Retention Loss (SRL) Based on Deep Metric Learning for Remote
Sensing Image Retrieval", ISPRS Int. J. Geo-Inf. 2020).

Batches hold C classes x K images (``--classes-per-batch``, ``--images-per-class``); the loss
ranks each query's batch by Euclidean distance, mines hard positives/negatives and weights them
(see ``dmlrs/losses/srl.py``). The paper's best backbone is ResNet50.

``loss`` (a :class:`~dmlrs.losses.LossChoice`, ``--loss``) trains another loss of (embeddings,
labels) on the same C x K batches instead: the papers' baselines (Triplet, N-pair-mc, Proxy-NCA,
Lifted Structure) from pytorch-metric-learning. It may name in its constructor what this method
gives (``LOSS_CONTEXT``: the class count and the embedding size).
"""
from __future__ import annotations

import torch

from dmlrs.data.samplers import ClassBalancedBatchSampler
from dmlrs.engine.distributed import gather_batch, gather_with_grad
from dmlrs.losses import LossChoice
from dmlrs.methods.base import Method, ReplaceableMetricTerm
from dmlrs.models import EmbeddingModel


class SRL(ReplaceableMetricTerm, Method):
    name = "SRL"
    #: what a loss replacing SRL may name in its constructor (dmlrs/losses/choice.py)
    LOSS_CONTEXT = ("num_classes", "dim", "embedding_size")
    #: the paper's R@k: k = 25/40/50/100 on UCMD, 100/130/160/180 on PatternNet (50, 100 are defaults)
    report_ks = (25, 40, 100, 130, 160, 180)

    def __init__(self, model: EmbeddingModel, *, classes_per_batch: int = 8, images_per_class: int = 4,
                 alpha: float = 1.2, margin: float = 0.4, temperature: float = 10.0,
                 lambda_: float = 1.0, loss: LossChoice | None = None, num_classes: int | None = None):
        super().__init__()
        self.model = model
        self.classes_per_batch = classes_per_batch
        self.images_per_class = images_per_class
        loss = loss or LossChoice("srl", {"alpha": alpha, "margin": margin, "temperature": temperature,
                                          "lambda_": lambda_})
        context = {"dim": model.dim, "embedding_size": model.dim}
        if num_classes is not None:
            context["num_classes"] = num_classes
        self.set_metric_term(loss, context, paper_term="srl")  # SRL logs its own parts

    def training_step(self, batch: dict) -> dict[str, torch.Tensor]:
        # the loss couples the whole C x K batch: under torchrun it sees the gathered global batch
        # (the single-process batch and gradient); one process: the gathers are no-ops
        embeddings = gather_with_grad(self.model(batch["image"])["embedding"])
        labels, indices = gather_batch(batch["label"]), batch.get("index")
        loss_module = self.metric_term
        loss = loss_module(embeddings, labels, indices=None if indices is None else gather_batch(indices))
        named = {} if self.term == "srl" else {self.term: loss.detach()}
        logs = {key: value for key, value in getattr(loss_module, "last_logs", {}).items() if key != "loss"}
        return {"loss": loss, **named, **logs}

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.embed(images)

    def batch_sampler(self, labels: torch.Tensor, batch_size: int, seed: int):
        return ClassBalancedBatchSampler(labels, self.classes_per_batch, self.images_per_class,
                                         seed=seed)
