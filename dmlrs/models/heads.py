"""Heads that turn backbone features into embeddings, hash codes and class logits.

* ``EmbeddingHead`` (``head="embedding"``): ``f = W x + b``, ``W: (dim, feature_dim)``. The
  model L2-normalises ``f`` into the retrieval embedding ``e = f / ||f||_2`` - the FC +
  L2-normalisation layer of every original script (SNCA-CE, CDNE, HR-S2DML, t-RNSL; Kang et al.).
  For CDNE the raw ``f`` *are* the relaxed hash codes (the original applies no activation;
  quantization, class head and ``sign`` act on ``f``).
  ``standardize=True`` puts a LayerNorm without learnable parameters in front of the linear
  layer, ``x <- (x - mean(x)) / sqrt(var(x) + 1e-5)`` per sample, as HR-S2DML's original
  ``ResNet18`` does (following Zhai & Wu's classification_metric_learning).
* ``HashHead`` (``head="hash"``): ``h = tanh(W x + b)``, codes in ``(-1, 1)``. Not the CDNE
  original (which uses the raw linear output): an opt-in relaxation (``--code-activation tanh``).
* ``ClassHead``: ``z = V f + c``, ``V: (num_classes, dim)``, applied to the *un-normalised*
  head output ``f`` (or ``h``) - the cross-entropy branch of SNCA-CE and CDNE.

Initialisation, as the original code (``fc_init_weights``): every linear weight is drawn with
``kaiming_normal_`` (fan_in, gain sqrt(2): std = sqrt(2 / fan_in)); biases keep PyTorch's
default ``uniform(-1/sqrt(fan_in), 1/sqrt(fan_in))``.
"""
from __future__ import annotations

import torch
from torch import nn

#: LayerNorm epsilon of HR-S2DML's feature standardisation (PyTorch's default)
STANDARDIZE_EPS = 1e-5


def kaiming_linear(in_features: int, out_features: int) -> nn.Linear:
    """``nn.Linear`` whose weight is ``kaiming_normal_`` (std sqrt(2/fan_in)), bias left default."""
    layer = nn.Linear(in_features, out_features)
    nn.init.kaiming_normal_(layer.weight)
    return layer


class EmbeddingHead(nn.Module):
    """``(B, feature_dim) -> (B, dim)``: [LayerNorm without parameters ->] linear layer."""

    def __init__(self, feature_dim: int, dim: int, *, standardize: bool = False) -> None:
        super().__init__()
        self.standardize = (nn.LayerNorm(feature_dim, eps=STANDARDIZE_EPS, elementwise_affine=False)
                            if standardize else nn.Identity())
        self.fc = kaiming_linear(feature_dim, dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(self.standardize(features))


class HashHead(EmbeddingHead):
    """Relaxed hash codes ``tanh(W x + b)`` in ``(-1, 1)``, shape ``(B, bits)``."""

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.tanh(super().forward(features))


class ClassHead(nn.Module):
    """Class logits ``(B, dim) -> (B, num_classes)`` from the un-normalised head output."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.fc = kaiming_linear(dim, num_classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(features)


HEADS: dict[str, type[EmbeddingHead]] = {"embedding": EmbeddingHead, "hash": HashHead}
