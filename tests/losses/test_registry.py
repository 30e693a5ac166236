import pytest
import torch

from dmlrs.losses import LOSSES, build_loss
from dmlrs.losses.norm_softmax import NormSoftmaxLoss


def test_registry_names_every_loss_file():
    assert set(LOSSES) == {"snca", "norm_softmax", "bnm", "cdne", "trnsl", "srl"}


def test_build_loss_drops_none_so_defaults_apply():
    loss = build_loss("norm_softmax", num_classes=3, dim=4, temperature=None, margin=None)
    reference = NormSoftmaxLoss(num_classes=3, dim=4)
    assert isinstance(loss, NormSoftmaxLoss)
    assert loss.temperature == reference.temperature and loss.margin == reference.margin


def test_build_loss_passes_given_values():
    loss = build_loss("norm_softmax", num_classes=3, dim=4, temperature=0.1, margin=0.2)
    assert loss.temperature == pytest.approx(0.1) and loss.margin == pytest.approx(0.2)


def test_unknown_loss_lists_the_registered_ones():
    with pytest.raises(KeyError, match="norm_softmax"):
        build_loss("triplet")


def test_every_loss_docstring_names_paper_and_defaults():
    for cls in LOSSES.values():
        module_doc = __import__(cls.__module__, fromlist=["_"]).__doc__ or ""
        assert len(module_doc) > 200, f"{cls.__module__} needs a docstring with paper, equation, shapes"
