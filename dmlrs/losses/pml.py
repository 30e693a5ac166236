"""Any pytorch-metric-learning (PML) loss, optionally with a PML miner, behind the dmlrs loss signature.

Library: K. Musgrave, S. Belongie, S.-N. Lim, "PyTorch Metric Learning", arXiv:2008.09164, 2020
(https://github.com/KevinMusgrave/pytorch-metric-learning). It implements the baselines of the
papers' comparison tables: Triplet (``TripletMarginLoss``), N-pair-mc (``NPairsLoss``), Proxy-NCA
(``ProxyNCALoss``), Lifted Structure (``LiftedStructureLoss``), contrastive (``ContrastiveLoss``),
Multi-Similarity, ArcFace, ... It is an optional extra: ``pip install -e ".[pml]"``.

Equation: the wrapped loss's own (see its PML documentation). With a miner M:

    tuples = M(f, y)                          (triplets (a, p, n) or pairs (a1, p, a2, n))
    loss   = L(f, y, tuples)                  (L over the mined tuples only)

and without one, L over every tuple of the batch (PML's default).

Shapes: embeddings (B, d) (the dmlrs embedding, unit-norm), labels (B,) long; returns a 0-dim
tensor. ``indices`` is accepted and unused. Computed in float32 (float64 if given float64) with
autocast disabled. ``last_logs["mined_tuples"]``: tuples the miner returned this batch (none
without a miner).

Parameters of the PML loss (Proxy-NCA's proxies, ArcFace's class weights) are parameters of the
wrapped module, a submodule of the wrapper and so of the method: the trainer optimises them with
the model (same SGD, lr and weight decay) and checkpoints save and restore them.

Defaults: the PML class's own; the classes below are looked up by name, imported on first use.
"""
from __future__ import annotations

import difflib
import importlib
import inspect

import torch
from torch import nn

from dmlrs.errors import DmlrsError

PREFIX = "pml:"
INSTALL_HINT = 'pip install -e ".[pml]" (or: pip install pytorch-metric-learning)'
#: the PML base class of each kind of object, by module
_BASES = {"losses": "BaseMetricLossFunction", "miners": "BaseMiner"}


def is_pml_name(name: str) -> bool:
    return name.lower().startswith(PREFIX)


def _module(kind: str, asked: str):
    """``pytorch_metric_learning.<kind>``, or one error saying how to install the extra."""
    try:
        return importlib.import_module(f"pytorch_metric_learning.{kind}")
    except ImportError:
        raise DmlrsError(f"{asked} needs pytorch-metric-learning, an optional extra that is not installed; "
                         f"install it with: {INSTALL_HINT}") from None


def available(kind: str, asked: str = "pml") -> list[str]:
    """Names of the PML classes of ``kind`` ("losses" or "miners") that dmlrs can wrap."""
    module = _module(kind, asked)
    base = getattr(module, _BASES[kind])
    return sorted(name for name, value in vars(module).items()
                  if inspect.isclass(value) and issubclass(value, base) and value is not base)


def pml_class(kind: str, name: str) -> type[nn.Module]:
    """The PML class that ``name`` ("pml:ClassName") names; one error listing close names otherwise."""
    what = "loss" if kind == "losses" else "miner"
    class_name = name[len(PREFIX):] if is_pml_name(name) else name
    names = available(kind, name)
    if class_name not in names:
        close = difflib.get_close_matches(class_name, names, n=4, cutoff=0.4)
        close = close or [n for n in names if class_name.lower() in n.lower()][:4]
        hint = (f"close: {', '.join(PREFIX + n for n in close)}" if close
                else f"{len(names)} {kind}, e.g. {', '.join(PREFIX + n for n in names[:4])}")
        raise DmlrsError(f"{name}: pytorch-metric-learning has no {what} {class_name!r}; {hint}")
    cls = getattr(_module(kind, name), class_name)
    if kind == "losses" and "labels" not in inspect.signature(cls.forward).parameters:
        raise DmlrsError(f"{name} is not a supervised loss of (embeddings, labels) and cannot replace a "
                         "metric-learning term")
    return cls


def tuple_count(tuples) -> int:
    """Tuples a PML miner returned: triplets (a, p, n) -> len(a); pairs (a1, p, a2, n) -> len(a1) + len(a2)."""
    if len(tuples) == 3:
        return int(tuples[0].shape[0])
    return int(tuples[0].shape[0] + tuples[2].shape[0])


class PMLLoss(nn.Module):
    """``forward(embeddings, labels, *, indices=None)`` around a PML ``loss`` and optional ``miner``.

    ``loss`` and ``miner`` are submodules, so PML parameters (proxies) are optimised and
    checkpointed with the method that owns this wrapper.
    """

    def __init__(self, loss: nn.Module, miner: nn.Module | None = None) -> None:
        super().__init__()
        self.loss = loss
        self.miner = miner
        self.last_logs: dict[str, float] = {}

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor, *,
                indices: torch.Tensor | None = None) -> torch.Tensor:
        dtype = torch.float64 if embeddings.dtype == torch.float64 else torch.float32
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            embeddings = embeddings.to(dtype)
            tuples = self.miner(embeddings, labels) if self.miner is not None else None
            loss = self.loss(embeddings, labels, tuples)
        # the tuple count is a shape: known on the host, no device sync
        self.last_logs = {} if tuples is None else {"mined_tuples": float(tuple_count(tuples))}
        return loss

    def extra_repr(self) -> str:
        return "pytorch-metric-learning"
