"""Losses of dmlrs: one file per loss, registered here by name.

``build_loss(name, **kwargs)`` drops ``None`` keyword arguments, so command-line flags that were
not given fall through to each loss's paper defaults (timm's factory style).

| name           | class                     | paper                                       |
|----------------|---------------------------|---------------------------------------------|
| snca           | SNCALoss                  | Wu et al. ECCV 2018; Kang et al. TGRS 2020  |
| norm_softmax   | NormSoftmaxLoss           | Zhai & Wu 2018; ArcFace margin (MNCE)       |
| bnm            | BNMLoss                   | Cui et al. CVPR 2020                        |
| cdne           | CDNELoss                  | Kang et al. JSTARS 2020                     |
| trnsl          | RobustNormSoftmaxLoss     | Kang et al. TGRS 2021                       |
| srl            | SimilarityRetentionLoss   | Zhao et al. ISPRS IJGI 2020                 |
"""
from torch import nn

from dmlrs.losses.bnm import BNMLoss
from dmlrs.losses.cdne import CDNELoss
from dmlrs.losses.norm_softmax import NormSoftmaxLoss
from dmlrs.losses.snca import SNCALoss
from dmlrs.losses.srl import SimilarityRetentionLoss
from dmlrs.losses.trnsl import RobustNormSoftmaxLoss

LOSSES: dict[str, type[nn.Module]] = {
    "snca": SNCALoss,
    "norm_softmax": NormSoftmaxLoss,
    "bnm": BNMLoss,
    "cdne": CDNELoss,
    "trnsl": RobustNormSoftmaxLoss,
    "srl": SimilarityRetentionLoss,
}


def build_loss(name: str, **kwargs) -> nn.Module:
    """Instantiate a registered loss; ``None`` values are dropped so the loss's defaults apply."""
    try:
        cls = LOSSES[name]
    except KeyError:
        raise KeyError(f"unknown loss {name!r}; registered: {', '.join(sorted(LOSSES))}") from None
    return cls(**{key: value for key, value in kwargs.items() if value is not None})


__all__ = ["LOSSES", "build_loss", *sorted(cls.__name__ for cls in LOSSES.values())]
