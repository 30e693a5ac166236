"""Convolutional trunks from torchvision with the ImageNet classifier removed.

Every backbone maps images ``(B, 3, H, W)`` to one global feature vector ``(B, feature_dim)``
by global average pooling of its last convolutional feature map, so any input size from 32
pixels up works (32 px gives a 1x1 final map; 224 px gives 7x7, pooled the same way).

=========  ============  =================================================================
name       feature_dim   trunk
=========  ============  =================================================================
resnet18   512           torchvision ``resnet18`` with ``fc`` replaced by ``Identity``
resnet50   2048          torchvision ``resnet50`` with ``fc`` replaced by ``Identity``
vgg16      512           torchvision ``vgg16().features`` (13 conv layers) + global avg pool
=========  ============  =================================================================

VGG16 choice: 512-d global average pooling of ``conv5_3`` (after its max pool), *not* the
4096-d ``fc7``. Reasons: (1) ``fc6`` expects a fixed 7x7x512 map, so fc7 features need 224 px
inputs (or a 7x7 up-sampling pool that invents a 49x larger input for 32 px images);
(2) fc6/fc7 hold 120M of VGG16's 138M parameters, which dominates memory and time for no
benefit once a new embedding head is trained on top; (3) the ResNets use the same
"conv features -> global average pool" recipe, so all three backbones behave alike and the
embedding head is the only learned projection. The ImageNet conv weights still load
unchanged (their keys ``features.N.weight`` are identical to torchvision's).

State-dict keys of every trunk equal torchvision's own keys minus the classifier
(``fc.*`` for ResNets, ``classifier.*`` for VGG), so a torchvision state dict loads after
dropping ``classifier_prefix`` keys (see ``dmlrs.models.weights``).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

import torch
from torch import nn
from torchvision import models as tvm
from torchvision.models.vgg import cfgs as vgg_configs
from torchvision.models.vgg import make_layers as make_vgg_layers

from dmlrs.errors import DmlrsError


class VGGFeatures(nn.Module):
    """VGG convolutional layers followed by global average pooling: ``(B,3,H,W) -> (B,512)``.

    The ``features`` attribute has the same layout (and state-dict keys) as torchvision's
    ``VGG.features``; initialisation copies torchvision's (Kaiming-normal fan-out, zero bias).
    Built directly rather than from ``torchvision.models.vgg16()`` so the 120M-parameter
    classifier is never allocated.
    """

    def __init__(self, config: str = "D") -> None:
        super().__init__()
        self.features = make_vgg_layers(vgg_configs[config], batch_norm=False)
        self.pool = nn.AdaptiveAvgPool2d(1)
        for module in self.features.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(module.bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.pool(self.features(images)), 1)  # (B, 512, 1, 1) -> (B, 512)


def _resnet_trunk(constructor: Callable[[], tvm.ResNet]) -> Callable[[], nn.Module]:
    """torchvision ResNet whose forward ends at the global-average-pooled features."""

    def build() -> nn.Module:
        model = constructor()
        model.fc = nn.Identity()  # forward: ... layer4 -> avgpool -> flatten -> (B, C)
        return model

    return build


@dataclass(frozen=True)
class BackboneSpec:
    """How to build one trunk and where its ImageNet weights come from."""

    name: str
    build: Callable[[], nn.Module]
    feature_dim: int
    imagenet_weights: tvm.WeightsEnum  # torchvision weights entry (gives the URL / file name)
    classifier_prefix: str  # keys of torchvision's ImageNet classifier, dropped when loading


BACKBONES: dict[str, BackboneSpec] = {
    "resnet18": BackboneSpec("resnet18", _resnet_trunk(tvm.resnet18), 512,
                             tvm.ResNet18_Weights.IMAGENET1K_V1, "fc."),
    "resnet50": BackboneSpec("resnet50", _resnet_trunk(tvm.resnet50), 2048,
                             tvm.ResNet50_Weights.IMAGENET1K_V1, "fc."),
    "vgg16": BackboneSpec("vgg16", VGGFeatures, 512,
                          tvm.VGG16_Weights.IMAGENET1K_V1, "classifier."),
}


def backbone_spec(name: str) -> BackboneSpec:
    """The spec for ``name``; unknown names raise DmlrsError listing the choices."""
    if name not in BACKBONES:
        raise DmlrsError(f"unknown --model {name!r}; choose one of {', '.join(BACKBONES)}")
    return BACKBONES[name]


def build_backbone(name: str) -> nn.Module:
    """A randomly initialised trunk ``(B,3,H,W) -> (B, BACKBONES[name].feature_dim)``."""
    return backbone_spec(name).build()


@lru_cache(maxsize=None)
def backbone_key_shapes(name: str) -> dict[str, tuple[int, ...]]:
    """State-dict key -> shape of a trunk, computed on the meta device (no memory, no init)."""
    with torch.device("meta"):
        trunk = build_backbone(name)
    return {key: tuple(value.shape) for key, value in trunk.state_dict().items()}
