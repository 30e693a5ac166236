"""HR-S2DML (Kang et al., "High-Rankness Regularized Semi-supervised Deep Metric Learning for
Remote Sensing Imagery", Remote Sensing 2020).

    L = MNCE(f_l, y_l) + beta * BNM(z_u)

MNCE is the normalized softmax with an additive angular margin (m = 0.5 rad, T = 0.05) on the
labelled batch. BNM maximises the nuclear norm of the softmax predictions of an unlabelled batch
(see ``dmlrs/losses/bnm.py``), in one of two forms (``bnm_form``):

* ``"original"`` (default, the authors' code): z_u = cos(f_u, W), the plain cosines to the
  prototypes with **no** 1/T, and BNM = -mean of the singular values (divides by min(B, C)).
* ``"paper"``: z_u = cos(f_u, W) / T and BNM = -||A||_* / B (Cui et al.'s equation). Its
  gradient is ~24x stronger at random initialisation (B = 128, C = 30) and ~2e4x weaker once
  embeddings sit near their prototypes: a different method, offered for comparison.

Either way BNM sees **no labels**: the original code passed the true labels of the unlabelled
(= test) images to the margin loss to build z_u, which leaks test labels; dmlrs uses the
label-free cosines (documented in docs/fidelity.md). Labelled and unlabelled batches go through
the model in two forward passes, as in the original, so batch norm normalises each on its own.
"""
from __future__ import annotations

import torch

from dmlrs.engine.distributed import gather_with_grad
from dmlrs.losses import build_loss
from dmlrs.methods.base import Method
from dmlrs.models import EmbeddingModel

BNM_FORMS = {"original": "min_dim", "paper": "batch"}  # form -> BNM normalizer


class MNCEBNM(Method):
    name = "MNCE_BNM"

    def __init__(self, model: EmbeddingModel, num_classes: int, *, temperature: float = 0.05,
                 margin: float = 0.5, bnm_weight: float = 1.0, bnm_form: str = "original"):
        super().__init__()
        if bnm_form not in BNM_FORMS:
            raise ValueError(f"bnm_form must be one of {sorted(BNM_FORMS)}, got {bnm_form!r}")
        self.model = model
        self.bnm_weight = bnm_weight
        self.bnm_form = bnm_form
        self.mnce = build_loss("norm_softmax", num_classes=num_classes, dim=model.dim,
                               temperature=temperature, margin=margin)
        self.bnm = build_loss("bnm", normalizer=BNM_FORMS[bnm_form])

    def bnm_logits(self, embeddings: torch.Tensor) -> torch.Tensor:
        """(B_u, dim) unlabelled embeddings -> (B_u, C) label-free logits of the chosen form."""
        if self.bnm_form == "original":
            return self.mnce.cosines(embeddings)
        return self.mnce.logits(embeddings)

    def training_step(self, batch: dict) -> dict[str, torch.Tensor]:
        mnce = self.mnce(self.model(batch["image"])["embedding"], batch["label"])
        losses = {"mnce": mnce.detach()}
        total = mnce
        unlabelled = batch.get("unlabelled")
        if unlabelled is not None:
            # BNM couples the batch: under torchrun it sees the gathered global unlabelled batch
            bnm = self.bnm(self.bnm_logits(gather_with_grad(self.model(unlabelled)["embedding"])))
            total = total + self.bnm_weight * bnm
            losses["bnm"] = bnm.detach()
        return {"loss": total, **losses}

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.embed(images)
