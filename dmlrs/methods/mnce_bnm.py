"""HR-S2DML (Kang et al., "High-Rankness Regularized Semi-supervised Deep Metric Learning for
Remote Sensing Imagery", Remote Sensing 2020).

    L = MNCE(f_l, y_l) + beta * BNM(cos(f_u, W) / T)

MNCE is the normalized softmax with an additive angular margin (m = 0.5 rad, T = 0.05) on the
labelled batch; BNM maximises the nuclear norm of the softmax predictions of an unlabelled batch,
computed from plain ``cos / T`` logits with no margin and **no labels** (the original code read
the unlabelled images' labels here). Labelled and unlabelled images share one forward pass.
"""
from __future__ import annotations

import torch

from dmlrs.losses import build_loss
from dmlrs.methods.base import Method
from dmlrs.models import EmbeddingModel


class MNCEBNM(Method):
    name = "MNCE_BNM"

    def __init__(self, model: EmbeddingModel, num_classes: int, *, temperature: float = 0.05,
                 margin: float = 0.5, bnm_weight: float = 1.0):
        super().__init__()
        self.model = model
        self.bnm_weight = bnm_weight
        self.mnce = build_loss("norm_softmax", num_classes=num_classes, dim=model.dim,
                               temperature=temperature, margin=margin)
        self.bnm = build_loss("bnm")

    def training_step(self, batch: dict) -> dict[str, torch.Tensor]:
        labelled = batch["image"]
        unlabelled = batch.get("unlabelled")
        images = labelled if unlabelled is None else torch.cat([labelled, unlabelled])
        embeddings = self.model(images)["embedding"]
        # embeddings: (B_l + B_u, dim) -> labelled rows first
        mnce = self.mnce(embeddings[: len(labelled)], batch["label"])
        losses = {"mnce": mnce.detach()}
        total = mnce
        if unlabelled is not None:
            bnm = self.bnm(self.mnce.logits(embeddings[len(labelled):]))
            total = total + self.bnm_weight * bnm
            losses["bnm"] = bnm.detach()
        return {"loss": total, **losses}

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.embed(images)
