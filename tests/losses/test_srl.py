"""SimilarityRetentionLoss against explicit-loop float64 references.

The reference below is written from the Ranked List Loss paper's per-query definitions
(Wang et al., CVPR 2019) with plain Python loops over pairs; SRL's dynamic class weight
(1 + easy/hard positive pairs of the query's class) is added on top when asked for.
"""

import math

import pytest
import torch

from dmlrs.errors import DmlrsError
from dmlrs.losses.srl import SimilarityRetentionLoss, pairwise_euclidean

ALPHA, MARGIN, T, LAMBDA = 1.2, 0.4, 10.0, 1.0


def loop_distances(emb):
    """Euclidean distances of L2-normalised rows, one pair at a time, float64 Python floats."""
    rows = [[float(v) for v in r] for r in emb.double()]
    unit = [[v / math.sqrt(sum(w * w for w in r)) for v in r] for r in rows]
    n = len(unit)
    return [[math.sqrt(sum((a - b) ** 2 for a, b in zip(unit[i], unit[j]))) for j in range(n)] for i in range(n)]


def reference_loss(emb, labels, alpha=ALPHA, margin=MARGIN, temperature=T, lambda_=LAMBDA, dynamic=False):
    """RLL (dynamic=False) or our SRL reading (dynamic=True), explicit loops, float64."""
    labels = [int(v) for v in labels]
    d = loop_distances(emb)
    n = len(labels)
    hard_pos = [[j for j in range(n) if j != i and labels[j] == labels[i] and d[i][j] > alpha - margin] for i in range(n)]
    easy_pos = [[j for j in range(n) if j != i and labels[j] == labels[i] and d[i][j] <= alpha - margin] for i in range(n)]
    hard_neg = [[j for j in range(n) if labels[j] != labels[i] and d[i][j] < alpha] for i in range(n)]
    total = 0.0
    for i in range(n):
        loss_p = sum(d[i][j] - (alpha - margin) for j in hard_pos[i]) / len(hard_pos[i]) if hard_pos[i] else 0.0
        if dynamic and hard_pos[i]:
            class_queries = [q for q in range(n) if labels[q] == labels[i]]
            n_easy = sum(len(easy_pos[q]) for q in class_queries)
            n_hard = sum(len(hard_pos[q]) for q in class_queries)
            loss_p *= 1.0 + n_easy / n_hard
        raw = [math.exp(temperature * (alpha - d[i][j])) for j in hard_neg[i]]
        loss_n = sum(w / sum(raw) * (alpha - d[i][j]) for w, j in zip(raw, hard_neg[i]))
        total += loss_p + lambda_ * loss_n
    return total / n


def clustered(seed, classes=4, per_class=3, dim=4, spread=0.5):
    """Class clusters loose enough to give a mix of easy/hard positives and negatives."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=g, dtype=torch.float64)
    labels = torch.arange(classes).repeat_interleave(per_class)
    emb = centres[labels] + spread * torch.randn(len(labels), dim, generator=g, dtype=torch.float64)
    return emb, labels


def min_gap_to_thresholds(emb, labels, alpha=ALPHA, margin=MARGIN):
    """Smallest |d - threshold| over off-diagonal pairs (keeps tests away from hinge kinks)."""
    d = torch.tensor(loop_distances(emb), dtype=torch.float64)
    off = ~torch.eye(len(labels), dtype=torch.bool)
    return min(float((d[off] - alpha).abs().min()), float((d[off] - (alpha - margin)).abs().min()))


def away_from_kinks(seed, **kwargs):
    """First clustered batch (from ``seed`` on) whose distances keep 1e-3 from both thresholds."""
    for s in range(seed, seed + 200):
        emb, labels = clustered(s, **kwargs)
        if min_gap_to_thresholds(emb, labels) > 1e-3:
            return emb, labels
    raise AssertionError("no batch away from the thresholds")


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("classes,per_class", [(4, 3), (3, 5), (6, 2)])
@pytest.mark.parametrize(
    "loss_kwargs,ref_kwargs",
    [
        ({"dynamic_positive_weights": False}, {}),  # RLL
        ({"dynamic_positive_weights": False, "weight_negatives": False}, {"temperature": 0.0}),  # RLL at T = 0
        ({}, {"dynamic": True}),  # SRL, our reading of the dynamic weights
        ({"alpha": 1.0, "margin": 0.3, "temperature": 5.0, "lambda_": 0.5}, {"dynamic": True, "alpha": 1.0,
                                                                          "margin": 0.3, "temperature": 5.0,
                                                                          "lambda_": 0.5}),
    ],
)
def test_matches_loop_reference_float64(seed, classes, per_class, loss_kwargs, ref_kwargs):
    emb, labels = clustered(seed, classes, per_class)
    got = SimilarityRetentionLoss(**loss_kwargs)(emb, labels)
    assert got.dtype == torch.float64
    assert got.item() == pytest.approx(reference_loss(emb, labels, **ref_kwargs), rel=1e-10, abs=1e-12)


def test_float32_input_matches_reference():
    emb, labels = away_from_kinks(100, classes=5, per_class=4)
    got = SimilarityRetentionLoss()(emb.float(), labels)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(reference_loss(emb, labels, dynamic=True), rel=1e-5)


def test_fixtures_mix_easy_and_hard_pairs_so_switches_matter():
    emb, labels = clustered(0, 4, 3)
    srl, rll = SimilarityRetentionLoss(), SimilarityRetentionLoss(dynamic_positive_weights=False)
    uniform = SimilarityRetentionLoss(dynamic_positive_weights=False, weight_negatives=False)
    values = [srl(emb, labels).item(), rll(emb, labels).item(), uniform(emb, labels).item()]
    assert 0.0 < srl.last_logs["hard_pos_frac"] < 1.0
    assert 0.0 < srl.last_logs["hard_neg_frac"] < 1.0
    assert len({round(v, 9) for v in values}) == 3


def test_dynamic_weights_equal_rll_when_every_positive_is_hard():
    # Two classes on alternating points of a circle: positives opposite (d = 2), negatives at d = sqrt(2).
    angles = torch.tensor([0.0, 1.0, 2.0, 3.0], dtype=torch.float64) * math.pi / 2
    emb = torch.stack([angles.cos(), angles.sin()], dim=1)
    labels = torch.tensor([0, 1, 0, 1])
    srl = SimilarityRetentionLoss()
    value = srl(emb, labels)
    assert srl.last_logs["hard_pos_frac"] == 1.0
    assert value.item() == pytest.approx(SimilarityRetentionLoss(dynamic_positive_weights=False)(emb, labels).item())
    assert value.item() == pytest.approx(reference_loss(emb, labels))


def test_last_logs_match_reference_counts():
    emb, labels = clustered(3, 4, 3)
    loss = SimilarityRetentionLoss(lambda_=0.7)
    total = loss(emb, labels)
    d = torch.tensor(loop_distances(emb))
    same = labels[:, None] == labels[None, :]
    pos = same & ~torch.eye(len(labels), dtype=torch.bool)
    assert loss.last_logs["hard_pos_frac"] == pytest.approx(float((d[pos] > ALPHA - MARGIN).double().mean()))
    assert loss.last_logs["hard_neg_frac"] == pytest.approx(float((d[~same] < ALPHA).double().mean()))
    assert loss.last_logs["srl_pos"] + 0.7 * loss.last_logs["srl_neg"] == pytest.approx(total.item(), rel=1e-6)
    neg_only = reference_loss(emb, labels, dynamic=True, lambda_=1.0) - reference_loss(emb, labels, dynamic=True, lambda_=0.0)
    assert loss.last_logs["srl_neg"] == pytest.approx(neg_only, rel=1e-6)


def test_pairwise_distances_from_gram_match_loop_and_have_finite_self_gradient():
    emb, _ = clustered(7, 3, 3)
    x = torch.nn.functional.normalize(emb, dim=1).requires_grad_(True)
    dist = pairwise_euclidean(x)
    assert torch.allclose(dist, torch.tensor(loop_distances(emb), dtype=torch.float64), atol=1e-6)
    dist.sum().backward()  # includes the zero-distance diagonal
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"dynamic_positive_weights": False}, {"dynamic_positive_weights": False, "weight_negatives": False}],
)
def test_gradcheck_float64(kwargs):
    emb, labels = away_from_kinks(10, classes=3, per_class=3, dim=3)
    emb = emb.clone().requires_grad_(True)
    loss = SimilarityRetentionLoss(**kwargs)
    assert torch.autograd.gradcheck(lambda e: loss(e, labels), (emb,), eps=1e-6, atol=1e-6)


def _value_and_grad(emb, labels, **kwargs):
    emb = emb.clone().requires_grad_(True)
    value = SimilarityRetentionLoss(**kwargs)(emb, labels)
    value.backward()
    return value, emb.grad


def test_one_sample_gives_zero_loss_and_zero_grad():
    value, grad = _value_and_grad(torch.randn(1, 5), torch.tensor([3]))
    assert value.item() == 0.0
    assert torch.equal(grad, torch.zeros_like(grad))


def test_one_class_has_no_negative_part():
    emb, _ = clustered(4, 1, 5)
    labels = torch.zeros(5, dtype=torch.long)
    loss = SimilarityRetentionLoss()
    value = loss(emb, labels)
    assert loss.last_logs["srl_neg"] == 0.0 and loss.last_logs["hard_neg_frac"] == 0.0
    assert value.item() == pytest.approx(reference_loss(emb, labels, dynamic=True))
    _, grad = _value_and_grad(emb, labels)
    assert torch.isfinite(grad).all()


def test_all_pairs_hard():
    # Arc of 1.2 rad: positives 0.9 rad apart (d = 0.87 > 0.8), negatives within 1.2 rad (d <= 1.13 < 1.2).
    angles = torch.tensor([0.0, 0.3, 0.9, 1.2], dtype=torch.float64)
    emb = torch.stack([angles.cos(), angles.sin()], dim=1)
    labels = torch.tensor([0, 1, 0, 1])
    loss = SimilarityRetentionLoss()
    value = loss(emb, labels)
    assert loss.last_logs["hard_pos_frac"] == 1.0 and loss.last_logs["hard_neg_frac"] == 1.0
    assert value.item() == pytest.approx(reference_loss(emb, labels, dynamic=True))
    _, grad = _value_and_grad(emb, labels)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_no_hard_pairs_gives_zero_loss_and_zero_finite_grad():
    # Duplicated points per class (d = 0 to positives), classes at opposite poles (d = 2 > alpha).
    emb = torch.tensor([[1.0, 0.0], [1.0, 0.0], [-1.0, 0.0], [-1.0, 0.0]])
    labels = torch.tensor([0, 0, 1, 1])
    value, grad = _value_and_grad(emb, labels)
    assert value.item() == 0.0
    assert torch.isfinite(grad).all() and torch.equal(grad, torch.zeros_like(grad))


def test_class_with_a_single_image():
    emb, _ = clustered(5, 3, 3)
    emb = emb[:7]  # classes of sizes 3, 3, 1
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 2])
    value, grad = _value_and_grad(emb, labels)
    assert value.item() == pytest.approx(reference_loss(emb, labels, dynamic=True))
    assert torch.isfinite(grad).all()


def test_finite_under_cpu_bf16_autocast():
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 8)
    images = torch.randn(12, 16)
    labels = torch.arange(4).repeat_interleave(3)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        emb = head(images)
        assert emb.dtype == torch.bfloat16
        value = SimilarityRetentionLoss()(emb, labels)
    assert value.dtype == torch.float32 and torch.isfinite(value)
    value.backward()
    assert all(torch.isfinite(p.grad).all() for p in head.parameters())
    reference = reference_loss(emb.detach().double(), labels, dynamic=True)
    assert value.item() == pytest.approx(reference, rel=1e-3, abs=1e-4)


def test_indices_keyword_is_accepted_and_ignored():
    emb, labels = clustered(1, 3, 3)
    loss = SimilarityRetentionLoss()
    assert loss(emb, labels, indices=torch.arange(9)).item() == loss(emb, labels).item()


@pytest.mark.parametrize(
    "kwargs,flag",
    [
        ({"alpha": 0.0}, "--alpha"),
        ({"alpha": 2.5}, "--alpha"),
        ({"margin": -0.1}, "--margin"),
        ({"margin": 1.2}, "--margin"),
        ({"temperature": -1.0}, "--temperature"),
        ({"lambda_": -1.0}, "--lambda"),
    ],
)
def test_impossible_hyperparameters_raise_dmlrs_error(kwargs, flag):
    with pytest.raises(DmlrsError, match=flag):
        SimilarityRetentionLoss(**kwargs)


def test_mismatched_shapes_are_rejected():
    with pytest.raises(ValueError):
        SimilarityRetentionLoss()(torch.randn(4, 3), torch.zeros(5, dtype=torch.long))


def test_last_logs_are_detached_device_tensors():
    g = torch.Generator().manual_seed(3)
    emb = torch.randn(8, 4, generator=g, requires_grad=True)
    labels = torch.arange(4).repeat_interleave(2)
    loss = SimilarityRetentionLoss()
    loss(emb, labels)
    assert set(loss.last_logs) == {"hard_pos_frac", "hard_neg_frac", "srl_pos", "srl_neg"}
    for value in loss.last_logs.values():
        assert torch.is_tensor(value) and value.dim() == 0 and not value.requires_grad
    assert loss.last_logs["hard_pos_frac"].dtype == torch.float64  # exact ratio of pair counts
