"""NormSoftmaxLoss (normalized softmax, ArcFace-margin MNCE) against explicit float64 loops."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from dmlrs.errors import DmlrsError
from dmlrs.losses.norm_softmax import NormSoftmaxLoss


def reference_cosines(embeddings, prototypes):
    """cos_ic by explicit loops over samples, classes and dimensions (float64, keeps autograd)."""
    rows = []
    for x in embeddings.double():
        x_norm = torch.sqrt(sum(x[d] * x[d] for d in range(x.shape[0])))
        row = []
        for w in prototypes.double():
            w_norm = torch.sqrt(sum(w[d] * w[d] for d in range(w.shape[0])))
            dot = sum(x[d] * w[d] for d in range(x.shape[0]))
            row.append(dot / (x_norm * w_norm))
        rows.append(torch.stack(row))
    return torch.stack(rows)  # (B, C)


def reference_margin_target(cos, margin):
    """cos(theta + m) through acos, with the ArcFace fallback cos - m sin(m) once theta + m > pi."""
    theta = torch.acos(cos)
    if theta.item() + margin > math.pi:
        return cos - margin * math.sin(margin)
    return torch.cos(theta + margin)


def reference_loss(embeddings, prototypes, labels, temperature, margin):
    cos = reference_cosines(embeddings, prototypes)
    total = 0.0
    for i, y in enumerate(labels.tolist()):
        logits = [
            (reference_margin_target(cos[i, c], margin) if (c == y and margin > 0) else cos[i, c]) / temperature
            for c in range(cos.shape[1])
        ]
        top = max(z.item() for z in logits)
        log_sum = top + torch.log(sum(torch.exp(z - top) for z in logits))
        total = total + (log_sum - logits[y])
    return total / len(labels)


def make_problem(batch=6, num_classes=4, dim=5, seed=0):
    gen = torch.Generator().manual_seed(seed)
    embeddings = torch.randn(batch, dim, generator=gen, dtype=torch.float64)
    labels = torch.randint(num_classes, (batch,), generator=gen)
    return embeddings, labels


def loss_as_function(loss, labels):
    """(embeddings, prototypes) -> loss value, for gradcheck over both inputs."""
    return lambda emb, protos: functional_call(loss, {"prototypes": protos}, (emb, labels))


@pytest.mark.parametrize("margin", [0.0, 0.5])
def test_value_and_gradients_match_reference(margin):
    emb, labels = make_problem()
    loss = NormSoftmaxLoss(4, 5, temperature=0.05, margin=margin).double()
    emb_a = emb.clone().requires_grad_(True)
    value = loss(emb_a, labels)
    value.backward()

    emb_b = emb.clone().requires_grad_(True)
    protos_b = loss.prototypes.detach().clone().requires_grad_(True)
    expected = reference_loss(emb_b, protos_b, labels, 0.05, margin)
    expected.backward()

    assert value.item() == pytest.approx(expected.item(), rel=1e-10)
    torch.testing.assert_close(emb_a.grad, emb_b.grad, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(loss.prototypes.grad, protos_b.grad, rtol=1e-8, atol=1e-10)
    assert loss.last_logs["norm_softmax"] == pytest.approx(expected.item(), rel=1e-6)


@pytest.mark.parametrize("margin", [0.0, 0.5])
def test_gradcheck_embeddings_and_prototypes(margin):
    emb, labels = make_problem(batch=4, num_classes=3, dim=4, seed=1)
    loss = NormSoftmaxLoss(3, 4, temperature=0.5, margin=margin).double()
    protos = loss.prototypes.detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(loss_as_function(loss, labels), (emb.requires_grad_(True), protos))


def test_zero_margin_is_cross_entropy_on_cosine_over_temperature():
    emb, labels = make_problem(seed=2)
    loss = NormSoftmaxLoss(4, 5, margin=0.0).double()
    cos = reference_cosines(emb, loss.prototypes.detach())
    torch.testing.assert_close(loss.logits(emb), cos / 0.05, rtol=1e-12, atol=1e-12)
    expected = F.cross_entropy(cos / 0.05, labels)
    assert loss(emb, labels).item() == pytest.approx(expected.item(), rel=1e-12)


def test_margin_raises_the_loss_and_lowers_only_the_target_logit():
    emb, labels = make_problem(seed=3)
    plain = NormSoftmaxLoss(4, 5, margin=0.0).double()
    arc = NormSoftmaxLoss(4, 5, margin=0.5).double()
    arc.load_state_dict(plain.state_dict())
    assert arc(emb, labels).item() > plain(emb, labels).item()
    torch.testing.assert_close(arc.logits(emb), plain.logits(emb))  # logits() never has the margin


def test_fallback_branch_when_theta_plus_margin_exceeds_pi():
    margin = 0.5
    loss = NormSoftmaxLoss(2, 3, margin=margin).double()
    with torch.no_grad():
        loss.prototypes.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))
    # Sample 0: exactly opposite its prototype (cos = -1); sample 1: cos = -0.95 (theta ~ 161.8 deg,
    # theta + 28.6 deg > 180 deg); sample 2: cos = -0.5, where cos(theta + m) applies.
    emb = torch.tensor([[-1.0, 0.0, 0.0], [-0.95, math.sqrt(1 - 0.95**2), 0.0], [-0.5, 0.0, math.sqrt(0.75)]])
    labels = torch.tensor([0, 0, 0])
    cos_target = emb[:, 0]
    assert (torch.acos(cos_target[:2]) + margin > math.pi).all() and math.acos(-0.5) + margin < math.pi

    emb_a = emb.clone().requires_grad_(True)
    value = loss(emb_a, labels)
    value.backward()
    emb_b = emb[1:].clone().requires_grad_(True)  # the reference's acos has no gradient at cos = -1
    expected_tail = reference_loss(emb_b, loss.prototypes.detach(), labels[1:], 0.05, margin)
    expected_first = reference_loss(emb[:1], loss.prototypes.detach(), labels[:1], 0.05, margin)
    assert value.item() == pytest.approx((expected_first.item() + 2 * expected_tail.item()) / 3, rel=1e-10)
    assert torch.isfinite(emb_a.grad).all()
    expected_tail.backward()
    torch.testing.assert_close(emb_a.grad[1:], emb_b.grad * 2 / 3, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("margin", [0.0, 0.5])
def test_finite_in_fp32_with_logits_at_plus_minus_one_over_temperature(margin):
    loss = NormSoftmaxLoss(3, 4, temperature=0.05, margin=margin)
    protos = loss.prototypes.detach()
    # cos = +1 with the own prototype, and cos = -1 with the own prototype.
    emb = torch.cat([protos * 3.0, -protos * 0.1]).requires_grad_(True)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    value = loss(emb, labels)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(emb.grad).all()
    assert torch.isfinite(loss.prototypes.grad).all()
    assert loss.logits(emb).abs().max().item() == pytest.approx(20.0, rel=1e-5)


def assert_bf16_autocast_close_to_fp32(loss, seed):
    """Under CPU bf16 autocast the loss sees bf16 embeddings, returns fp32, stays near fp32's value."""
    torch.manual_seed(seed)
    layer = torch.nn.Linear(8, 5)
    inputs = torch.randn(6, 8)
    labels = torch.tensor([0, 1, 2, 3, 0, 1])
    reference = loss(layer(inputs), labels)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        embeddings = layer(inputs)
        assert embeddings.dtype == torch.bfloat16
        value = loss(embeddings, labels)
    assert value.dtype == torch.float32 and torch.isfinite(value)
    assert value.item() == pytest.approx(reference.item(), rel=5e-2)


def test_bf16_autocast_on_cpu_is_finite_and_close_to_fp32():
    assert_bf16_autocast_close_to_fp32(NormSoftmaxLoss(4, 5, margin=0.5), seed=4)


def test_one_sample_and_one_class():
    emb, labels = make_problem(batch=1, num_classes=1, dim=3, seed=5)
    for margin in (0.0, 0.5):
        loss = NormSoftmaxLoss(1, 3, margin=margin).double()
        value = loss(emb, labels)
        assert value.item() == pytest.approx(0.0, abs=1e-12)  # softmax over one class is 1
        expected = reference_loss(emb, loss.prototypes, labels, 0.05, margin)
        assert value.item() == pytest.approx(expected.item(), abs=1e-12)
    emb, labels = make_problem(batch=1, num_classes=4, dim=5, seed=6)
    loss = NormSoftmaxLoss(4, 5, margin=0.5).double()
    expected = reference_loss(emb, loss.prototypes, labels, 0.05, 0.5)
    assert loss(emb, labels).item() == pytest.approx(expected.item(), rel=1e-10)


def test_prototypes_are_a_parameter_in_the_state_dict_and_normalised_in_use():
    loss = NormSoftmaxLoss(4, 5)
    assert [name for name, _ in loss.named_parameters()] == ["prototypes"]
    assert loss.state_dict()["prototypes"].shape == (4, 5)
    emb, labels = make_problem(seed=7)
    before = loss(emb.float(), labels)
    with torch.no_grad():
        loss.prototypes.mul_(7.0)  # rescaling prototypes changes nothing
    assert loss(emb.float(), labels).item() == pytest.approx(before.item(), rel=1e-5)


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(DmlrsError, match="temperature"):
        NormSoftmaxLoss(4, 5, temperature=0.0)
    with pytest.raises(DmlrsError, match="margin"):
        NormSoftmaxLoss(4, 5, margin=-0.1)
    with pytest.raises(DmlrsError, match="num_classes"):
        NormSoftmaxLoss(0, 5)
    loss = NormSoftmaxLoss(4, 5)
    with pytest.raises(DmlrsError, match="num_classes"):
        loss(torch.randn(2, 5), torch.tensor([0, 4]))
    with pytest.raises(ValueError, match="embeddings"):
        loss(torch.randn(2, 6), torch.tensor([0, 1]))


def test_last_logs_are_detached_tensors_and_the_range_check_follows_validate(monkeypatch):
    """No .item() per call: the logged value stays a tensor. The label range check (a host read)
    runs while ``validate`` is True (the default; the engine keeps it for an epoch's first step)."""
    loss = NormSoftmaxLoss(4, 5)
    emb = torch.randn(3, 5, requires_grad=True)
    value = loss(emb, torch.tensor([0, 1, 3]))
    logged = loss.last_logs["norm_softmax"]
    assert torch.is_tensor(logged) and not logged.requires_grad and torch.equal(logged, value.detach())
    reads = []
    real_tolist = torch.Tensor.tolist
    monkeypatch.setattr(torch.Tensor, "tolist", lambda self: reads.append(1) or real_tolist(self))
    loss(emb, torch.tensor([0, 1, 3]))
    assert len(reads) == 1  # min and max of the labels in one read
    loss.validate = False
    loss(emb, torch.tensor([0, 1, 3]))
    assert len(reads) == 1
    loss.validate = True
    with pytest.raises(DmlrsError, match=r"labels must lie in \[0, 4\) but range over \[-1, 3\]"):
        loss(emb, torch.tensor([-1, 1, 3]))
    with pytest.raises(ValueError, match="labels must have shape"):  # shapes: checked whatever validate is
        loss.validate = False
        loss(emb, torch.tensor([0, 1]))
