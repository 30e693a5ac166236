"""Heads that turn backbone features into embeddings, hash codes and class logits.

* ``EmbeddingHead`` (``head="embedding"``): ``f = W x + b``, ``W: (dim, feature_dim)``. The
  model L2-normalises ``f`` into the retrieval embedding ``e = f / ||f||_2`` - the FC +
  L2-normalisation layer of SNCA / HR-S2DML / t-RNSL / SRL (Kang et al., IEEE TGRS 2020 and
  follow-ups).
* ``HashHead`` (``head="hash"``, CDNE): ``h = tanh(W x + b)`` with ``dim`` = code length in
  bits. ``tanh`` is the usual differentiable relaxation of ``sign``: codes lie in ``(-1, 1)``
  during training; the binary code ``b = sign(h)`` is taken by the Hamming metrics at
  retrieval time (the model never binarises).
* ``ClassHead``: ``z = V f + c``, ``V: (num_classes, dim)``, applied to the *un-normalised*
  head output ``f`` (or ``h``) - the cross-entropy branch of SNCA-CE.
"""
from __future__ import annotations

import torch
from torch import nn


class EmbeddingHead(nn.Module):
    """Linear projection ``(B, feature_dim) -> (B, dim)``; normalisation is done by the model."""

    def __init__(self, feature_dim: int, dim: int) -> None:
        super().__init__()
        self.fc = nn.Linear(feature_dim, dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(features)


class HashHead(EmbeddingHead):
    """Relaxed hash codes ``tanh(W x + b)`` in ``(-1, 1)``, shape ``(B, bits)``."""

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.fc(features))


class ClassHead(nn.Module):
    """Class logits ``(B, dim) -> (B, num_classes)`` from the un-normalised head output."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(features)


HEADS: dict[str, type[EmbeddingHead]] = {"embedding": EmbeddingHead, "hash": HashHead}
