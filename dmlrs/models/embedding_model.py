"""The image -> embedding network every method trains: backbone, head, optional class head.

``forward(images)`` with ``images: (B, 3, H, W)`` returns a dict:

* ``"features"``  ``(B, dim)`` - un-normalised head output ``f`` (the relaxed codes of
  a hashing method: raw for CDNE as the original, ``tanh(.)`` with ``head="hash"``; the Hamming
  metrics binarise them).
* ``"embedding"`` ``(B, dim)`` - ``f / max(||f||_2, eps)``, unit norm, always float32 (the
  norm is taken in float32 so fp16/bf16 autocast cannot overflow the squared sum); this is
  what retrieval and the temperature-scaled losses use.
* ``"logits"``    ``(B, num_classes)`` - class head on ``f``; present only when
  ``num_classes`` is set.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dmlrs.models.heads import HEADS, ClassHead

NORM_EPS = 1e-12


class EmbeddingModel(nn.Module):
    """Backbone trunk + embedding/hash head (+ class head). Build it with ``build_model``.

    State-dict layout: ``backbone.*`` (torchvision keys), ``projection.fc.*``,
    ``classifier.fc.*`` (only with ``num_classes``).
    """

    def __init__(self, backbone: nn.Module, *, backbone_name: str, feature_dim: int, dim: int,
                 head: str = "embedding", num_classes: int | None = None,
                 channels_last: bool = False, standardize: bool = False) -> None:
        super().__init__()
        self.backbone_name = backbone_name
        self.feature_dim = feature_dim
        self.dim = dim
        self.head = head
        self.num_classes = num_classes
        self.channels_last = channels_last
        self.backbone = backbone
        self.standardize = standardize
        self.projection = HEADS[head](feature_dim, dim, standardize=standardize)
        self.classifier = ClassHead(dim, num_classes) if num_classes is not None else None

    def _head_output(self, images: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.projection(self.backbone(images))  # (B, feature_dim) -> (B, dim)

    @staticmethod
    def _normalise(features: torch.Tensor) -> torch.Tensor:
        return F.normalize(features.float(), p=2.0, dim=1, eps=NORM_EPS)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self._head_output(images)
        outputs = {"features": features, "embedding": self._normalise(features)}
        if self.classifier is not None:
            outputs["logits"] = self.classifier(features)
        return outputs

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Unit-norm embeddings ``(B, dim)`` (float32), skipping the class head."""
        return self._normalise(self._head_output(images))

    def build_kwargs(self) -> dict:
        """The ``build_model`` arguments that rebuild this architecture (checkpoints store them,
        so ``python -m dmlrs.retrieve`` can rebuild the model from a checkpoint alone)."""
        return {"backbone": self.backbone_name, "dim": self.dim, "head": self.head,
                "num_classes": self.num_classes, "standardize": self.standardize}

    def extra_repr(self) -> str:
        return (f"backbone_name={self.backbone_name!r}, feature_dim={self.feature_dim}, "
                f"dim={self.dim}, head={self.head!r}, num_classes={self.num_classes}, "
                f"standardize={self.standardize}")
