"""t-RNSL (Kang et al., "Robust Normalized Softmax Loss for Deep Metric Learning-based
Characterization of Remote Sensing Images with Label Noise", TGRS 2021).

    L = mean_i w_i * (L_q(p_y,i) - L_q(k)),   L_q(p) = (1 - p^q) / q

The per-sample weights ``w_i = 1[p_y,i > k]`` are refreshed every ``prune_every`` epochs from
``start_prune`` on, with the model in eval mode on un-augmented training images (the engine's
extraction), so samples the model disagrees with (likely noisy labels) stop pulling prototypes.
Paper defaults: q = 0.7, k = 0.5, T = 0.05, pruning from epoch 40 every 10 epochs.
"""
from __future__ import annotations

import torch

from dmlrs.losses import build_loss
from dmlrs.methods.base import EpochContext, Method
from dmlrs.models import EmbeddingModel


class TRNSL(Method):
    name = "tRNSL"

    def __init__(self, model: EmbeddingModel, num_classes: int, train_dataset, *,
                 temperature: float = 0.05, q: float = 0.7, k: float = 0.5, start_prune: int = 40,
                 prune_every: int = 10, truncated: bool = True):
        super().__init__()
        self.model = model
        self.train_dataset = train_dataset  # un-augmented training images, for the refresh
        self.start_prune = start_prune
        self.prune_every = prune_every
        self.rnsl = build_loss("trnsl", num_classes=num_classes, dim=model.dim,
                               num_samples=len(train_dataset), temperature=temperature, q=q, k=k,
                               truncated=truncated)

    def training_step(self, batch: dict) -> dict[str, torch.Tensor]:
        embeddings = self.model(batch["image"])["embedding"]
        loss = self.rnsl(embeddings, batch["label"], indices=batch["index"])
        return {"loss": loss, "rnsl": loss.detach()}

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.embed(images)

    def is_prune_epoch(self, epoch: int) -> bool:
        return epoch >= self.start_prune and (epoch - self.start_prune) % self.prune_every == 0

    def on_epoch_start(self, context: EpochContext) -> None:
        if self.rnsl.truncated and self.is_prune_epoch(context.epoch):
            embeddings, labels, indices = context.extract(self.train_dataset)
            self.rnsl.update_weights(embeddings, labels, indices)

    def scalars(self) -> dict[str, float]:
        return {"kept_fraction": float(self.rnsl.kept_fraction)}
