"""SNCALoss against an explicit float64 loop reference, gradients, edge cases, numerics."""
import math

import pytest
import torch
import torch.nn.functional as F

from dmlrs.errors import DmlrsError
from dmlrs.losses.snca import SNCALoss
from dmlrs.memory import MemoryBank


def reference_snca(embeddings, labels, indices, slots, memory_labels, temperature, margin=0.0):
    """-1/B sum_i log p_i with explicit loops over i and j (float64, math.exp on plain floats)."""
    batch, total = len(embeddings), 0.0
    for i in range(batch):
        same_mass, other_mass, has_same = 0.0, 0.0, False
        for j in range(len(slots)):
            if j == indices[i]:
                continue
            s_ij = sum(a * b for a, b in zip(embeddings[i], slots[j])) / temperature
            if memory_labels[j] == labels[i]:
                same_mass += math.exp(s_ij)
                has_same = True
            else:
                other_mass += math.exp(s_ij)
        if not has_same:
            continue  # no same-class slot besides its own: dropped, still divided by B
        same_mass /= math.exp(margin / temperature)
        total += math.log(same_mass / (other_mass + same_mass))
    return -total / batch


def make_problem(num_slots=12, dim=5, batch=4, num_classes=3, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    memory = MemoryBank(num_slots, dim, generator=g)
    memory.slots = memory.slots.to(dtype)
    memory_labels = torch.arange(num_slots) % num_classes
    indices = torch.randperm(num_slots, generator=g)[:batch]
    embeddings = F.normalize(torch.randn(batch, dim, generator=g, dtype=dtype), dim=1)
    return memory, memory_labels, indices, embeddings


def loss_and_reference(memory, memory_labels, indices, embeddings, temperature=0.5, margin=0.0):
    loss_fn = SNCALoss(memory, memory_labels, temperature=temperature, margin=margin)
    labels = memory_labels[indices]
    loss = loss_fn(embeddings, labels, indices=indices)
    expected = reference_snca(embeddings.tolist(), labels.tolist(), indices.tolist(), memory.slots.tolist(),
                              memory_labels.tolist(), temperature, margin)
    return loss, expected, loss_fn


@pytest.mark.parametrize("margin", [0.0, 0.1])
@pytest.mark.parametrize("temperature", [0.05, 0.5])
def test_value_matches_loop_reference(margin, temperature):
    memory, memory_labels, indices, embeddings = make_problem()
    loss, expected, loss_fn = loss_and_reference(memory, memory_labels, indices, embeddings, temperature, margin)
    assert loss.dtype == torch.float64
    assert loss.item() == pytest.approx(expected, rel=1e-10, abs=1e-10)
    assert loss_fn.last_logs == {"snca": pytest.approx(expected, rel=1e-10)}


@pytest.mark.parametrize("margin", [0.0, 0.2])
def test_gradient_matches_loop_reference_by_finite_differences(margin):
    memory, memory_labels, indices, embeddings = make_problem(seed=1)
    embeddings.requires_grad_(True)
    loss, _, _ = loss_and_reference(memory, memory_labels, indices, embeddings, 0.5, margin)
    (grad,) = torch.autograd.grad(loss, embeddings)
    labels, slots = memory_labels[indices].tolist(), memory.slots.tolist()
    step = 1e-6
    for i in range(embeddings.shape[0]):
        for k in range(embeddings.shape[1]):
            plus, minus = embeddings.detach().clone(), embeddings.detach().clone()
            plus[i, k] += step
            minus[i, k] -= step
            numeric = (
                reference_snca(plus.tolist(), labels, indices.tolist(), slots, memory_labels.tolist(), 0.5, margin)
                - reference_snca(minus.tolist(), labels, indices.tolist(), slots, memory_labels.tolist(), 0.5, margin)
            ) / (2 * step)
            assert grad[i, k].item() == pytest.approx(numeric, abs=1e-7)


@pytest.mark.parametrize("margin", [0.0, 0.1])
def test_gradcheck_float64(margin):
    memory, memory_labels, indices, embeddings = make_problem(seed=2)
    loss_fn = SNCALoss(memory, memory_labels, temperature=0.1, margin=margin)
    labels = memory_labels[indices]
    embeddings.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda e: loss_fn(e, labels, indices=indices), (embeddings,))


def test_one_sample_batch():
    memory, memory_labels, indices, embeddings = make_problem(batch=1, seed=3)
    loss, expected, _ = loss_and_reference(memory, memory_labels, indices, embeddings)
    assert loss.item() == pytest.approx(expected, rel=1e-10)


def test_one_class_gives_zero_loss_and_zero_gradient():
    memory, _, indices, embeddings = make_problem(seed=4)
    memory_labels = torch.zeros(memory.num_samples, dtype=torch.long)
    embeddings.requires_grad_(True)
    loss, expected, _ = loss_and_reference(memory, memory_labels, indices, embeddings, margin=0.1)
    assert expected == 0.0 and loss.item() == 0.0
    loss.backward()
    assert torch.equal(embeddings.grad, torch.zeros_like(embeddings))


def test_sample_without_other_same_class_slot_contributes_zero_but_counts_in_b():
    memory, memory_labels, indices, embeddings = make_problem(seed=5)
    memory_labels = memory_labels.clone()
    memory_labels[indices[0]] = 99  # a singleton class: only the sample's own slot
    embeddings.requires_grad_(True)
    loss, expected, _ = loss_and_reference(memory, memory_labels, indices, embeddings)
    assert torch.isfinite(loss) and loss.item() == pytest.approx(expected, rel=1e-10)
    loss.backward()
    assert torch.isfinite(embeddings.grad).all()
    assert torch.equal(embeddings.grad[0], torch.zeros_like(embeddings.grad[0]))
    # dividing by B: the loss is 3/4 of the mean over the three samples that have neighbours
    rest = SNCALoss(memory, memory_labels, temperature=0.5)
    mean_rest = rest(embeddings[1:], memory_labels[indices[1:]], indices=indices[1:])
    assert loss.item() == pytest.approx(mean_rest.item() * 3 / 4, rel=1e-10)


def test_whole_memory_in_one_batch():
    memory, memory_labels, _, _ = make_problem(num_slots=6, batch=6, seed=6)
    indices = torch.randperm(6, generator=torch.Generator().manual_seed(0))
    embeddings = memory.slots[indices] + 0.1 * torch.randn(6, 5, dtype=torch.float64)
    loss, expected, _ = loss_and_reference(memory, memory_labels, indices, F.normalize(embeddings, dim=1))
    assert loss.item() == pytest.approx(expected, rel=1e-10)


def test_permuting_memory_and_indices_consistently_gives_the_same_loss():
    memory, memory_labels, indices, embeddings = make_problem(seed=7)
    loss = SNCALoss(memory, memory_labels, temperature=0.5)(embeddings, memory_labels[indices], indices=indices)
    perm = torch.randperm(memory.num_samples, generator=torch.Generator().manual_seed(1))  # new slot q = old perm[q]
    inverse = torch.argsort(perm)
    permuted = MemoryBank(memory.num_samples, memory.dim)
    permuted.slots = memory.slots[perm]
    new_indices = inverse[indices]
    permuted_loss = SNCALoss(permuted, memory_labels[perm], temperature=0.5)(
        embeddings, memory_labels[indices], indices=new_indices)
    torch.testing.assert_close(permuted_loss, loss)
    # the wrong indices (same labels, different own slot) do change the loss
    wrong = SNCALoss(permuted, memory_labels[perm], temperature=0.5)
    permuted_labels = memory_labels[perm]
    other_same_class_slot = [  # a slot of the same class that is not the sample's own
        int(torch.nonzero((permuted_labels == memory_labels[i]) & (torch.arange(12) != inverse[i]))[0])
        for i in indices
    ]
    shifted = torch.tensor(other_same_class_slot)
    assert not torch.allclose(wrong(embeddings, memory_labels[indices], indices=shifted), loss)


def _extreme_problem(dtype=torch.float32):
    """Logits at +-1/T (T=0.05 -> +-20) and beyond: embeddings scaled by 10 -> logits up to +-200."""
    memory, memory_labels, indices, embeddings = make_problem(num_slots=10, seed=8, dtype=dtype)
    memory.slots = memory.slots.to(dtype)
    embeddings = 10.0 * memory.slots[indices]  # s_ii = 200, naive exp(200) = inf in fp32
    return memory, memory_labels, indices, embeddings.to(dtype)


def test_finite_where_naive_exp_overflows_fp32():
    memory, memory_labels, indices, embeddings = _extreme_problem()
    logits = embeddings @ memory.slots.t() / 0.05
    assert torch.isinf(logits.exp()).any()  # the naive algorithm would produce inf/inf = nan
    embeddings.requires_grad_(True)
    loss_fn = SNCALoss(memory, memory_labels, temperature=0.05)
    loss = loss_fn(embeddings, memory_labels[indices], indices=indices)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(embeddings.grad).all()
    labels = memory_labels[indices].tolist()
    expected = reference_snca(embeddings.detach().double().tolist(), labels, indices.tolist(),
                              memory.slots.double().tolist(), memory_labels.tolist(), 0.05)  # exp(200) fits in fp64
    assert loss.item() == pytest.approx(expected, rel=1e-4, abs=1e-4)


def _far_positives_problem(dtype):
    """Same-class logits near -150, an other-class logit at +150: exp(-300) underflows in fp32."""
    memory_labels = torch.tensor([0, 0, 0, 1, 1, 2])
    direction = torch.zeros(6, 3, dtype=dtype)
    direction[:, 0] = torch.tensor([1.0, -1.0, -0.99, 1.0, 0.5, -0.2], dtype=dtype)
    direction[:, 1] = (1 - direction[:, 0] ** 2).sqrt()
    memory = MemoryBank(6, 3)
    memory.slots = direction
    indices = torch.tensor([0, 3])
    embeddings = 7.5 * torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], dtype=dtype)  # logits in [-150, 150]
    return memory, memory_labels, indices, embeddings


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_underflowing_same_class_mass_takes_the_per_set_shift_and_matches_reference(dtype):
    memory, memory_labels, indices, embeddings = _far_positives_problem(dtype)
    embeddings.requires_grad_(True)
    loss, expected, _ = loss_and_reference(memory, memory_labels, indices, embeddings, temperature=0.05)
    assert expected > 100  # exp of the same-class gap is far below fp32's range
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert torch.isfinite(embeddings.grad).all()
    if dtype == torch.float64:
        loss_fn = SNCALoss(memory, memory_labels, temperature=0.05)
        labels = memory_labels[indices]
        leaf = embeddings.detach().requires_grad_(True)
        assert torch.autograd.gradcheck(lambda e: loss_fn(e, labels, indices=indices), (leaf,))


def test_logits_near_plus_minus_one_over_t_fp32_match_float64_reference():
    memory, memory_labels, indices, _ = make_problem(num_slots=10, seed=9, dtype=torch.float32)
    # each embedding equals a same-class slot (logit +1/T) or its negative (-1/T)
    partner = torch.tensor([(i + 3) % 10 for i in indices.tolist()])  # same class (3 classes, period 3)
    signs = torch.tensor([1.0, -1.0, 1.0, -1.0])[:, None]
    embeddings = signs * memory.slots[partner]
    loss, expected, _ = loss_and_reference(memory, memory_labels, indices, embeddings, temperature=0.05)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(expected, rel=1e-4)


def test_cpu_bf16_autocast_is_finite_and_close_to_fp32():
    memory, memory_labels, indices, embeddings = make_problem(num_slots=30, batch=8, seed=10, dtype=torch.float32)
    loss_fn = SNCALoss(memory, memory_labels, temperature=0.05)
    labels = memory_labels[indices]
    linear = torch.nn.Linear(5, 5)
    with torch.no_grad():
        linear.weight.copy_(torch.eye(5))
        linear.bias.zero_()
    fp32 = loss_fn(F.normalize(linear(embeddings), dim=1), labels, indices=indices)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        out = F.normalize(linear(embeddings), dim=1)
        assert out.dtype == torch.bfloat16
        mixed = loss_fn(out, labels, indices=indices)
    mixed.backward()
    assert mixed.dtype == torch.float32 and torch.isfinite(mixed)
    assert torch.isfinite(linear.weight.grad).all()
    assert mixed.item() == pytest.approx(fp32.item(), rel=0.05)


def test_missing_indices_and_mismatched_labels_are_clear_errors():
    memory, memory_labels, indices, embeddings = make_problem()
    loss_fn = SNCALoss(memory, memory_labels)
    with pytest.raises(DmlrsError, match="indices"):
        loss_fn(embeddings, memory_labels[indices])
    with pytest.raises(DmlrsError, match="memory labels"):
        loss_fn(embeddings, (memory_labels[indices] + 1) % 3, indices=indices)
    with pytest.raises(DmlrsError, match="memory labels"):
        SNCALoss(memory, memory_labels[:-1])
