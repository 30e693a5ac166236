"""``build_model``: the one way the engine and methods create an ``EmbeddingModel``."""
from __future__ import annotations

from pathlib import Path

import torch

from dmlrs.errors import DmlrsError
from dmlrs.models.backbones import backbone_spec
from dmlrs.models.embedding_model import EmbeddingModel
from dmlrs.models.heads import HEADS
from dmlrs.models.weights import load_initial_weights


def build_model(backbone: str = "resnet18", dim: int = 128, *, weights: str | Path | None = "none",
                num_classes: int | None = None, head: str = "embedding",
                channels_last: bool = False, standardize: bool = False) -> EmbeddingModel:
    """Backbone (``resnet18`` | ``resnet50`` | ``vgg16``) + ``head`` (``embedding`` | ``hash``)
    with output size ``dim`` (+ a class head when ``num_classes`` is given), initialised from
    ``weights`` (``"none"`` | ``"imagenet"`` | a file path, see ``dmlrs.models.weights``).

    ``standardize=True`` adds HR-S2DML's parameter-free LayerNorm before the head's linear layer.
    ``channels_last=True`` stores the parameters in NHWC order and converts inputs in
    ``forward`` (faster convolutions on tensor-core GPUs, same results).
    """
    spec = backbone_spec(backbone)
    if head not in HEADS:
        raise DmlrsError(f"unknown head {head!r}; choose one of {', '.join(HEADS)}")
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise DmlrsError(f"--dim must be a positive integer, got {dim!r}")
    if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int)
                                    or num_classes < 1):
        raise DmlrsError(f"num_classes must be a positive integer or None, got {num_classes!r}")
    model = EmbeddingModel(spec.build(), backbone_name=spec.name, feature_dim=spec.feature_dim,
                           dim=dim, head=head, num_classes=num_classes, channels_last=channels_last,
                           standardize=standardize)
    load_initial_weights(model, weights)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model
