"""The pytorch-metric-learning wrapper: the same numbers as PML itself, a float64 loop reference for
TripletMarginLoss, parameters owned by the method, one clear error without the extra."""
import itertools
import math
import sys

import pytest
import torch
from pytorch_metric_learning import losses as pml_losses
from pytorch_metric_learning import miners as pml_miners

from dmlrs.errors import DmlrsError
from dmlrs.losses import LossChoice
from dmlrs.losses.pml import PMLLoss, pml_class


def batch(n=12, dim=6, classes=3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    embeddings = torch.nn.functional.normalize(torch.randn(n, dim, generator=generator), dim=1)
    return embeddings, torch.arange(n) % classes


def triplet_reference(embeddings, labels, margin):
    """PML's TripletMarginLoss (all triplets, Euclidean distance of unit vectors, mean over the
    triplets with a positive loss), one triplet at a time in float64."""
    rows = [[float(v) for v in row] for row in embeddings.double()]
    unit = [[v / math.sqrt(sum(w * w for w in row)) for v in row] for row in rows]
    y = labels.tolist()

    def d(i, j):
        return math.sqrt(sum((a - b) ** 2 for a, b in zip(unit[i], unit[j])))

    values = [max(0.0, d(a, p) - d(a, n) + margin)
              for a, p, n in itertools.permutations(range(len(y)), 3) if y[a] == y[p] and y[n] != y[a]]
    positive = [v for v in values if v > 0]
    return sum(positive) / len(positive) if positive else 0.0


@pytest.mark.parametrize("margin", [0.05, 0.3, 1.0])
def test_triplet_matches_a_float64_loop_reference(margin):
    embeddings, labels = batch(n=9)
    loss = PMLLoss(pml_losses.TripletMarginLoss(margin=margin))(embeddings.double(), labels)
    assert loss.dtype == torch.float64
    assert float(loss) == pytest.approx(triplet_reference(embeddings, labels, margin), abs=1e-12)


@pytest.mark.parametrize("make", [
    lambda: (pml_losses.TripletMarginLoss(margin=0.1), None),
    lambda: (pml_losses.TripletMarginLoss(margin=0.1), pml_miners.TripletMarginMiner(margin=0.3)),
    lambda: (pml_losses.ContrastiveLoss(), pml_miners.MultiSimilarityMiner()),
    lambda: (pml_losses.MultiSimilarityLoss(), None),
    lambda: (pml_losses.LiftedStructureLoss(), None),
    lambda: (pml_losses.NPairsLoss(), None),
])
def test_wrapper_equals_calling_pml_directly(make):
    embeddings, labels = batch()
    loss, miner = make()
    ours = PMLLoss(loss, miner)(embeddings.clone().requires_grad_(), labels, indices=torch.arange(12))
    tuples = miner(embeddings, labels) if miner is not None else None
    direct = loss(embeddings, labels, tuples)
    assert torch.equal(ours.detach(), direct.detach())


def test_proxy_loss_equals_pml_with_the_same_proxies_and_its_proxies_get_gradients():
    embeddings, labels = batch()
    torch.manual_seed(3)
    direct = pml_losses.ProxyNCALoss(num_classes=3, embedding_size=6)
    wrapped = LossChoice("pml:ProxyNCALoss").build({"num_classes": 3, "embedding_size": 6})
    wrapped.loss.proxies.data.copy_(direct.proxies.data)
    ours = wrapped(embeddings, labels)
    assert torch.equal(ours.detach(), direct(embeddings, labels).detach())
    ours.backward()
    assert [name for name, _ in wrapped.named_parameters()] == ["loss.proxies"]
    assert wrapped.loss.proxies.grad is not None and wrapped.loss.proxies.grad.abs().sum() > 0


def test_mined_tuples_are_counted_from_the_miners_output():
    embeddings, labels = batch()
    miner = pml_miners.TripletMarginMiner(margin=0.5)
    wrapper = PMLLoss(pml_losses.TripletMarginLoss(), miner)
    wrapper(embeddings, labels)
    assert wrapper.last_logs["mined_tuples"] == len(miner(embeddings, labels)[0]) > 0
    pairs = PMLLoss(pml_losses.ContrastiveLoss(), pml_miners.PairMarginMiner())
    pairs(embeddings, labels)
    a1, _, a2, _ = pml_miners.PairMarginMiner()(embeddings, labels)
    assert pairs.last_logs["mined_tuples"] == len(a1) + len(a2)


def test_computed_in_float32_under_autocast():
    embeddings, labels = batch()
    wrapper = PMLLoss(pml_losses.MultiSimilarityLoss())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = wrapper(embeddings.bfloat16(), labels)
    assert loss.dtype == torch.float32
    assert float(loss) == pytest.approx(float(wrapper(embeddings.bfloat16().float(), labels)), rel=1e-6)


def test_unknown_class_lists_close_names():
    with pytest.raises(DmlrsError, match=r"no loss 'TripletLoss'; close: .*pml:TripletMarginLoss") as info:
        pml_class("losses", "pml:TripletLoss")
    assert "\n" not in str(info.value)
    with pytest.raises(DmlrsError, match=r"no miner 'TripletMiner'; close: .*pml:TripletMarginMiner"):
        pml_class("miners", "pml:TripletMiner")


def test_without_the_extra_asking_for_pml_is_one_error_with_the_install_command(monkeypatch):
    for name in ("pytorch_metric_learning", "pytorch_metric_learning.losses", "pytorch_metric_learning.miners"):
        monkeypatch.setitem(sys.modules, name, None)  # what an environment without the package sees
    with pytest.raises(DmlrsError, match=r'pml:TripletMarginLoss needs pytorch-metric-learning.*'
                                         r'pip install -e "\.\[pml\]"'):
        LossChoice("pml:TripletMarginLoss").build({})
