"""SRL (Zhao et al., "Similarity Retention Loss (SRL) Based on Deep Metric Learning for Remote
Sensing Image Retrieval", ISPRS Int. J. Geo-Inf. 2020).

Batches hold C classes x K images (``--classes-per-batch``, ``--images-per-class``); the loss
ranks each query's batch by Euclidean distance, mines hard positives/negatives and weights them
(see ``dmlrs/losses/srl.py``). The paper's best backbone is ResNet50.
"""
from __future__ import annotations

import torch

from dmlrs.data.samplers import ClassBalancedBatchSampler
from dmlrs.losses import build_loss
from dmlrs.methods.base import Method
from dmlrs.models import EmbeddingModel


class SRL(Method):
    name = "SRL"

    def __init__(self, model: EmbeddingModel, *, classes_per_batch: int = 8, images_per_class: int = 4,
                 alpha: float = 1.2, margin: float = 0.4, temperature: float = 10.0,
                 lambda_: float = 1.0):
        super().__init__()
        self.model = model
        self.classes_per_batch = classes_per_batch
        self.images_per_class = images_per_class
        self.srl = build_loss("srl", alpha=alpha, margin=margin, temperature=temperature,
                              lambda_=lambda_)

    def training_step(self, batch: dict) -> dict[str, torch.Tensor]:
        embeddings = self.model(batch["image"])["embedding"]
        loss = self.srl(embeddings, batch["label"])
        return {"loss": loss, **self.srl.last_logs}

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.embed(images)

    def batch_sampler(self, labels: torch.Tensor, batch_size: int, seed: int):
        return ClassBalancedBatchSampler(labels, self.classes_per_batch, self.images_per_class,
                                         seed=seed)
