"""t-RNSL (Kang et al., "Robust Normalized Softmax Loss for Deep Metric Learning-based
Characterization of Remote Sensing Images with Label Noise", TGRS 2021).

    L = mean_i w_i * (L_q(p_y,i) - L_q(k)),   L_q(p) = (1 - p^q) / q

The per-sample weights ``w_i = 1[p_y,i > k]`` (noisy labels y) are refreshed at the start of
every epoch whose 1-based number ``n`` satisfies ``n >= start_prune`` and ``n % prune_every ==
0``, exactly as the original loop: with the defaults (40, 10) and 130 epochs that is epochs 40,
50, ..., 130 counted from 1 (0-based 39, 49, ..., 129), ten refreshes, the last one for the final
epoch. Samples the model disagrees with (likely noisy labels) stop pulling prototypes until the
next refresh, which recomputes every weight.

The refresh embeds the training images with the model in eval mode (the engine's extraction):
by default the augmented images (``refresh_images="augmented"``), as the original, which ran it
over its training loader; ``"plain"`` uses the un-augmented ones. It uses the *current* model
and prototypes; the original reloaded its best checkpoint for the refresh (chosen with clean
validation labels and a clean-label kNN gallery) and then kept that checkpoint's prototypes,
which lets clean labels steer the pruning (see docs/fidelity.md).
Paper defaults: q = 0.7, k = 0.5, T = 0.05, start_prune = 40, every 10 epochs.

Logged each epoch (``scalars``): ``kept_fraction`` (training samples with weight 1) and, when the
method is told which training labels are clean (``clean_mask``, from the injected noise),
``kept_clean_fraction``: of the kept samples, the fraction whose training label is the true one
(left out while no sample is kept). The run's ``pictures/trnsl_pruning.png`` plots both per
pruning round.
"""
from __future__ import annotations

import torch

from dmlrs.losses import build_loss
from dmlrs.methods.base import EpochContext, Method
from dmlrs.models import EmbeddingModel


class TRNSL(Method):
    name = "tRNSL"

    def __init__(self, model: EmbeddingModel, num_classes: int, refresh_dataset, *,
                 temperature: float = 0.05, q: float = 0.7, k: float = 0.5, start_prune: int = 40,
                 prune_every: int = 10, truncated: bool = True, clean_mask: torch.Tensor | None = None):
        """``clean_mask``: (N,) bool, True where the training label of sample n (the refresh
        dataset's index) is its true label; by default taken from the refresh dataset's
        ``labels`` and ``clean_labels`` when it has both (label noise injected), else unknown."""
        super().__init__()
        self.model = model
        self.refresh_dataset = refresh_dataset  # the training images the refresh embeds
        self.start_prune = start_prune
        self.prune_every = prune_every
        self.rnsl = build_loss("trnsl", num_classes=num_classes, dim=model.dim,
                               num_samples=len(refresh_dataset), temperature=temperature, q=q, k=k,
                               truncated=truncated)
        if clean_mask is None:
            clean_mask = _clean_mask_of(refresh_dataset)
        if clean_mask is not None:
            clean_mask = torch.as_tensor(clean_mask, dtype=torch.bool).flatten()
            if clean_mask.numel() != len(refresh_dataset):
                raise ValueError(f"clean_mask has {clean_mask.numel()} entries for {len(refresh_dataset)} "
                                 "training samples")
            # derived from the data, not training state: moved with .to(device), kept out of checkpoints
            self.register_buffer("clean_mask", clean_mask, persistent=False)
        else:
            self.clean_mask = None

    def training_step(self, batch: dict) -> dict[str, torch.Tensor]:
        embeddings = self.model(batch["image"])["embedding"]
        loss = self.rnsl(embeddings, batch["label"], indices=batch["index"])
        return {"loss": loss, "rnsl": loss.detach()}

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.embed(images)

    def is_prune_epoch(self, epoch: int) -> bool:
        """Whether the weights are refreshed before training 0-based ``epoch``."""
        number = epoch + 1  # the original counts epochs from 1 here
        return number >= self.start_prune and number % self.prune_every == 0

    def on_epoch_start(self, context: EpochContext) -> None:
        if self.rnsl.truncated and self.is_prune_epoch(context.epoch):
            embeddings, labels, indices = context.extract(self.refresh_dataset)
            self.rnsl.update_weights(embeddings, labels, indices)

    def scalars(self) -> dict[str, float]:
        values = {"kept_fraction": float(self.rnsl.kept_fraction)}
        if self.clean_mask is not None:
            kept = self.rnsl.weights > 0  # (N,)
            num_kept = int(kept.sum())
            if num_kept:
                values["kept_clean_fraction"] = int((kept & self.clean_mask).sum()) / num_kept
        return values


def _clean_mask_of(dataset) -> torch.Tensor | None:
    """(N,) bool: training label == true label, from a dataset that keeps both (label noise on)."""
    labels, clean = getattr(dataset, "labels", None), getattr(dataset, "clean_labels", None)
    if labels is None or clean is None:
        return None
    return torch.tensor(labels) == torch.tensor(clean)
