"""RobustNormSoftmaxLoss (RNSL / t-RNSL) against explicit float64 loops."""
import pytest
import torch
from torch.func import functional_call

from dmlrs.errors import DmlrsError
from dmlrs.losses.trnsl import RobustNormSoftmaxLoss
from tests.losses.test_norm_softmax import assert_bf16_autocast_close_to_fp32, reference_cosines


def reference_label_probs(embeddings, prototypes, labels, temperature):
    """p_i = exp(z_iy) / sum_c exp(z_ic) with z = cos / T, by loops (float64, keeps autograd)."""
    cos = reference_cosines(embeddings, prototypes)
    probs = []
    for i, y in enumerate(labels.tolist()):
        logits = [cos[i, c] / temperature for c in range(cos.shape[1])]
        top = max(z.item() for z in logits)
        probs.append(torch.exp(logits[y] - top) / sum(torch.exp(z - top) for z in logits))
    return probs


def reference_box_cox(p, q):
    return (1 - p**q) / q


def reference_loss(embeddings, prototypes, labels, temperature, q, k, weights=None):
    """mean L_q(p_i) (weights None) or mean w_i (L_q(p_i) - L_q(k))."""
    probs = reference_label_probs(embeddings, prototypes, labels, temperature)
    if weights is None:
        terms = [reference_box_cox(p, q) for p in probs]
    else:
        terms = [w * (reference_box_cox(p, q) - reference_box_cox(k, q)) for w, p in zip(weights.tolist(), probs)]
    return sum(terms) / len(terms)


def make_problem(batch=6, num_classes=4, dim=5, seed=0):
    gen = torch.Generator().manual_seed(seed)
    embeddings = torch.randn(batch, dim, generator=gen, dtype=torch.float64)
    labels = torch.randint(num_classes, (batch,), generator=gen)
    return embeddings, labels


def make_loss(num_classes=4, dim=5, num_samples=10, temperature=0.05, **kwargs):
    return RobustNormSoftmaxLoss(num_classes, dim, num_samples, temperature=temperature, **kwargs).double()


def test_untruncated_value_and_gradients_match_reference():
    emb, labels = make_problem()
    loss = make_loss(truncated=False, temperature=0.2)
    emb_a = emb.clone().requires_grad_(True)
    value = loss(emb_a, labels)
    value.backward()
    emb_b = emb.clone().requires_grad_(True)
    protos_b = loss.prototypes.detach().clone().requires_grad_(True)
    expected = reference_loss(emb_b, protos_b, labels, 0.2, 0.7, 0.5)
    expected.backward()
    assert value.item() == pytest.approx(expected.item(), rel=1e-10)
    torch.testing.assert_close(emb_a.grad, emb_b.grad, rtol=1e-8, atol=1e-12)
    torch.testing.assert_close(loss.prototypes.grad, protos_b.grad, rtol=1e-8, atol=1e-12)
    assert loss.last_logs["rnsl"] == pytest.approx(expected.item(), rel=1e-6)


def test_truncated_value_uses_the_weights_of_the_batch_indices():
    emb, labels = make_problem(seed=1)
    loss = make_loss(temperature=0.2)
    with torch.no_grad():
        loss.weights.copy_(torch.tensor([1, 0, 1, 1, 0, 0, 1, 0, 1, 1], dtype=torch.float64))
    indices = torch.tensor([9, 1, 4, 2, 7, 0])
    value = loss(emb, labels, indices=indices)
    expected = reference_loss(emb, loss.prototypes, labels, 0.2, 0.7, 0.5, weights=loss.weights[indices])
    assert value.item() == pytest.approx(expected.item(), rel=1e-10)
    assert loss.last_logs["kept_fraction"] == pytest.approx(0.6)
    assert loss.kept_fraction == pytest.approx(0.6)


@pytest.mark.parametrize("truncated", [False, True])
def test_gradcheck_embeddings_and_prototypes(truncated):
    emb, labels = make_problem(batch=4, num_classes=3, dim=4, seed=2)
    loss = make_loss(num_classes=3, dim=4, num_samples=6, temperature=0.5, truncated=truncated)
    with torch.no_grad():
        loss.weights.copy_(torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 1.0]))
    indices = torch.tensor([0, 2, 3, 5])
    protos = loss.prototypes.detach().clone().requires_grad_(True)

    def as_function(embeddings, prototypes):
        return functional_call(loss, {"prototypes": prototypes}, (embeddings, labels), {"indices": indices})

    assert torch.autograd.gradcheck(as_function, (emb.requires_grad_(True), protos))


def test_q_to_zero_tends_to_cross_entropy():
    """(1 - p^q) / q = -log p - q log(p)^2 / 2 + O(q^2): the relative gap to CE is at most about
    q * max_i |log p_i| / 2 (the bound depends on the random prototypes, so it is computed)."""
    emb, labels = make_problem(seed=3)
    torch.manual_seed(0)  # the prototypes' init
    errors, bounds = [], []
    for q in (1e-2, 1e-4, 1e-6):
        loss = make_loss(truncated=False, q=q)
        log_p = torch.stack([torch.log(p) for p in reference_label_probs(emb, loss.prototypes, labels, 0.05)])
        cross_entropy = -log_p.sum() / 6
        errors.append(abs(loss(emb, labels).item() - cross_entropy.item()) / cross_entropy.item())
        bounds.append(q * log_p.abs().max().item())
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < bounds[2] < 1e-3


def test_update_weights_sets_one_where_label_probability_exceeds_k_and_only_at_indices():
    loss = make_loss(num_classes=3, dim=4, num_samples=8, temperature=0.1)
    protos = loss.prototypes.detach()
    gen = torch.Generator().manual_seed(4)
    # Rows 0-1 sit on their class prototype (p_y close to 1); rows 2-3 sit on another class (p_y small).
    noise = 0.01 * torch.randn(4, 4, generator=gen, dtype=torch.float64)
    emb = torch.stack([protos[0], protos[1], protos[2], protos[0]]) + noise
    labels = torch.tensor([0, 1, 0, 2])
    indices = torch.tensor([6, 1, 3, 4])
    initial = torch.tensor([0.0, 1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0], dtype=torch.float64)
    with torch.no_grad():
        loss.weights.copy_(initial)
    loss.update_weights(emb, labels, indices)

    probs = reference_label_probs(emb, protos, labels, 0.1)
    expected = initial.clone()
    for n, p in zip(indices.tolist(), probs):
        expected[n] = 1.0 if p.item() > 0.5 else 0.0
    assert expected[indices].tolist() == [1.0, 1.0, 0.0, 0.0]  # the construction gives both cases
    torch.testing.assert_close(loss.weights, expected)
    untouched = [n for n in range(8) if n not in indices.tolist()]
    torch.testing.assert_close(loss.weights[untouched], initial[untouched])
    assert loss.kept_fraction == pytest.approx(expected.mean().item())


def test_noise_free_all_weights_one_equals_rnsl_minus_threshold_loss():
    emb, labels = make_problem(seed=5)
    truncated = make_loss()
    plain = make_loss(truncated=False)
    plain.load_state_dict(truncated.state_dict())
    indices = torch.arange(6)
    emb_t = emb.clone().requires_grad_(True)
    emb_p = emb.clone().requires_grad_(True)
    value_t = truncated(emb_t, labels, indices=indices)
    value_p = plain(emb_p, labels)
    value_t.backward()
    value_p.backward()
    threshold = reference_box_cox(0.5, 0.7)
    assert truncated.loss_at_threshold == pytest.approx(threshold, rel=1e-14)
    assert value_t.item() == pytest.approx(value_p.item() - threshold, rel=1e-12, abs=1e-14)
    torch.testing.assert_close(emb_t.grad, emb_p.grad, rtol=1e-12, atol=1e-14)


def test_all_pruned_gives_zero_loss_and_zero_gradient():
    emb, labels = make_problem(seed=6)
    loss = RobustNormSoftmaxLoss(4, 5, 10)  # fp32
    with torch.no_grad():
        loss.weights.zero_()
    emb = emb.float().requires_grad_(True)
    value = loss(emb, labels, indices=torch.arange(6))
    value.backward()
    assert value.item() == 0.0
    assert torch.equal(emb.grad, torch.zeros_like(emb.grad))
    assert torch.equal(loss.prototypes.grad, torch.zeros_like(loss.prototypes.grad))
    assert loss.kept_fraction == 0.0


def test_one_sample_and_one_class():
    emb, labels = make_problem(batch=1, num_classes=1, dim=3, seed=7)
    loss = make_loss(num_classes=1, dim=3, num_samples=1)
    value = loss(emb, labels, indices=torch.tensor([0]))
    # One class: p_y = 1, L_q = 0, so the truncated loss is -L_q(k).
    assert value.item() == pytest.approx(-reference_box_cox(0.5, 0.7), rel=1e-12)
    emb, labels = make_problem(batch=1, num_classes=4, dim=5, seed=8)
    loss = make_loss()
    expected = reference_loss(emb, loss.prototypes, labels, 0.05, 0.7, 0.5, weights=torch.ones(1))
    assert loss(emb, labels, indices=torch.tensor([3])).item() == pytest.approx(expected.item(), rel=1e-10)


@pytest.mark.parametrize("truncated", [False, True])
def test_finite_in_fp32_with_logits_at_plus_minus_one_over_temperature(truncated):
    loss = RobustNormSoftmaxLoss(3, 4, 6, truncated=truncated)
    protos = loss.prototypes.detach()
    emb = torch.cat([protos * 3.0, -protos * 0.1]).requires_grad_(True)  # cos = +1 and -1 with own class
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    value = loss(emb, labels, indices=torch.arange(6))
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(emb.grad).all()
    assert torch.isfinite(loss.prototypes.grad).all()
    loss.update_weights(emb.detach(), labels, torch.arange(6))
    assert loss.weights.tolist() == [1.0, 1.0, 1.0, 0.0, 0.0, 0.0]


def test_bf16_autocast_on_cpu_is_finite_and_close_to_fp32():
    assert_bf16_autocast_close_to_fp32(RobustNormSoftmaxLoss(4, 5, 6, truncated=False), seed=9)


def test_weights_travel_in_the_state_dict():
    source = RobustNormSoftmaxLoss(4, 5, 10)
    with torch.no_grad():
        source.weights[[1, 4, 7]] = 0.0
    target = RobustNormSoftmaxLoss(4, 5, 10)
    target.load_state_dict(source.state_dict())
    assert set(source.state_dict()) == {"prototypes", "weights"}
    assert torch.equal(target.weights, source.weights)
    assert target.kept_fraction == pytest.approx(0.7)


def test_bad_inputs_raise_clear_errors():
    loss = RobustNormSoftmaxLoss(4, 5, 10)
    emb, labels = torch.randn(3, 5), torch.tensor([0, 1, 2])
    with pytest.raises(DmlrsError, match="indices"):
        loss(emb, labels)
    with pytest.raises(DmlrsError, match="num_samples"):
        loss(emb, labels, indices=torch.tensor([0, 1, 10]))
    with pytest.raises(DmlrsError, match="num_samples"):
        loss.update_weights(emb, labels, torch.tensor([-1, 0, 1]))
    RobustNormSoftmaxLoss(4, 5, 10, truncated=False)(emb, labels)  # untruncated needs no indices
    with pytest.raises(DmlrsError, match="q must"):
        RobustNormSoftmaxLoss(4, 5, 10, q=0.0)
    with pytest.raises(DmlrsError, match="pruning threshold"):
        RobustNormSoftmaxLoss(4, 5, 10, k=1.0)


def test_range_checks_follow_validate_and_read_labels_and_indices_together(monkeypatch):
    loss = RobustNormSoftmaxLoss(4, 5, 10)
    emb, labels = torch.randn(3, 5), torch.tensor([0, 1, 2])
    loss(emb, labels, indices=torch.tensor([0, 1, 9]))
    assert set(loss.last_logs) == {"rnsl", "kept_fraction"}
    assert all(torch.is_tensor(v) and not v.requires_grad for v in loss.last_logs.values())
    assert loss.last_logs["kept_fraction"] == 1.0
    reads = []
    real_tolist = torch.Tensor.tolist
    monkeypatch.setattr(torch.Tensor, "tolist", lambda self: reads.append(1) or real_tolist(self))
    loss(emb, labels, indices=torch.tensor([0, 1, 9]))
    assert len(reads) == 1  # labels and indices: one host read
    loss.validate = False
    loss(emb, labels, indices=torch.tensor([0, 1, 9]))
    assert len(reads) == 1
    with pytest.raises(DmlrsError, match="num_samples"):  # the refresh always checks
        loss.update_weights(emb, labels, torch.tensor([0, 1, 10]))
    loss.validate = True
    with pytest.raises(DmlrsError, match=r"range over \[0, 10\]"):
        loss(emb, labels, indices=torch.tensor([0, 1, 10]))
    with pytest.raises(DmlrsError, match="num_classes"):
        loss(emb, torch.tensor([0, 1, 4]), indices=torch.tensor([0, 1, 2]))
