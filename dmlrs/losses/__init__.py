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
| pml:ClassName  | PMLLoss (pml.py) around any pytorch-metric-learning loss (optional extra)  |

Adding a loss (docs/adding_a_loss.md): one file here with ``forward(embeddings, labels, *,
indices=None)``, one entry in ``LOSSES``; ``--loss NAME --loss-args key=value,...`` then trains it
in place of the metric-learning term of train_SNCA_CE, train_SNCA_CE_MC and train_SRL. A loss
receives what it needs by naming it in its constructor (``memory``, ``memory_labels``,
``num_samples``, ``num_classes``, ``dim``/``embedding_size``); its other simple parameters are
its options (``dmlrs/losses/choice.py``).
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


from dmlrs.losses.choice import LossChoice, resolve_loss  # noqa: E402  (reads LOSSES at call time)

__all__ = ["LOSSES", "LossChoice", "build_loss", "resolve_loss", *sorted(cls.__name__ for cls in LOSSES.values())]
