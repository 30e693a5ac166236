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
    logged = loss_fn.last_logs["snca"]  # a detached device tensor: reading it is the caller's sync
    assert list(loss_fn.last_logs) == ["snca"] and torch.is_tensor(logged) and logged.dim() == 0
    assert not logged.requires_grad and logged.device == loss.device
    assert logged.item() == pytest.approx(expected, rel=1e-10)


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


def float64_autograd_reference(embeddings, labels, indices, slots, memory_labels, temperature, margin=0.0):
    """Independent float64 masked log-sum-exp under autograd (for gradients at extreme logits)."""
    logits = embeddings.double() @ slots.double().t() / temperature
    same = labels[:, None] == memory_labels[None, :]
    own = torch.zeros_like(same).scatter_(1, indices[:, None], True)
    lse_pos = torch.where(same & ~own, logits, -math.inf).logsumexp(dim=1)
    lse_neg = torch.where(same, -math.inf, logits).logsumexp(dim=1)
    per_sample = F.softplus(lse_neg - lse_pos + margin / temperature)
    return torch.where(torch.isfinite(lse_pos), per_sample, 0.0).sum() / len(embeddings)


def _loss_and_grad(loss_fn, embeddings, labels, indices):
    leaf = embeddings.detach().clone().requires_grad_(True)
    loss = loss_fn(leaf, labels, indices=indices)
    loss.backward()
    return loss.detach(), leaf.grad


@pytest.mark.parametrize("problem", ["overflow", "far_positives"])
def test_fp32_gradient_at_extreme_logits_matches_float64(problem):
    if problem == "overflow":
        memory, memory_labels, indices, embeddings = _extreme_problem()
    else:
        memory, memory_labels, indices, embeddings = _far_positives_problem(torch.float32)
    labels = memory_labels[indices]
    loss, grad = _loss_and_grad(SNCALoss(memory, memory_labels, temperature=0.05, margin=0.1),
                                embeddings, labels, indices)
    leaf = embeddings.double().requires_grad_(True)
    expected = float64_autograd_reference(leaf, labels, indices, memory.slots, memory_labels, 0.05, 0.1)
    (expected_grad,) = torch.autograd.grad(expected, leaf)
    assert torch.isfinite(grad).all()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    torch.testing.assert_close(grad.double(), expected_grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("num_slots", [14, 15, 16, 17, 30, 32])
def test_slot_counts_around_the_row_padding_match_loop_reference(num_slots):
    memory, memory_labels, indices, embeddings = make_problem(num_slots=num_slots, batch=5, seed=11)
    loss, expected, _ = loss_and_reference(memory, memory_labels, indices, embeddings, 0.2, 0.05)
    assert loss.item() == pytest.approx(expected, rel=1e-10)


def test_unbalanced_classes_per_batch_index_equals_class_table(monkeypatch):
    """Very unbalanced classes build the (B, K) index per batch; same values as the table path."""
    g = torch.Generator().manual_seed(12)
    memory = MemoryBank(40, 5, generator=g)
    memory.slots = memory.slots.double()
    memory_labels = torch.tensor([0] * 30 + [1] * 6 + [2] * 3 + [3])  # class 3: a singleton
    indices = torch.tensor([0, 5, 31, 36, 39, 29, 30])
    labels = memory_labels[indices]
    embeddings = F.normalize(torch.randn(7, 5, generator=g, dtype=torch.float64), dim=1)
    table = SNCALoss(memory, memory_labels, temperature=0.3, margin=0.1)
    monkeypatch.setattr(SNCALoss, "TABLE_SIZE_LIMIT", 0)
    per_batch = SNCALoss(memory, memory_labels, temperature=0.3, margin=0.1)
    assert table.class_slots is not None and per_batch.class_slots is None
    loss_a, grad_a = _loss_and_grad(table, embeddings, labels, indices)
    loss_b, grad_b = _loss_and_grad(per_batch, embeddings, labels, indices)
    assert torch.equal(loss_a, loss_b) and torch.equal(grad_a, grad_b)
    expected = reference_snca(embeddings.tolist(), labels.tolist(), indices.tolist(), memory.slots.tolist(),
                              memory_labels.tolist(), 0.3, 0.1)
    assert loss_a.item() == pytest.approx(expected, rel=1e-10)
    assert torch.equal(grad_a[4], torch.zeros(5, dtype=torch.float64))  # the singleton


def test_loaded_memory_labels_rebuild_the_class_index():
    memory, memory_labels, indices, embeddings = make_problem(seed=13)
    other_labels = (memory_labels + 1) % 3
    source = SNCALoss(memory, other_labels, temperature=0.5)
    loss_fn = SNCALoss(memory, memory_labels, temperature=0.5)
    # the class index is derived from memory_labels, not saved
    assert set(loss_fn.state_dict()) == {"memory_labels", "memory.slots", "memory.momentum_value"}
    loss_fn.load_state_dict(source.state_dict())
    labels = other_labels[indices]
    torch.testing.assert_close(loss_fn(embeddings, labels, indices=indices),
                               source(embeddings, labels, indices=indices), rtol=0, atol=0)


def test_forward_and_backward_make_no_python_level_host_reads(monkeypatch):
    """No .item() / bool() / float() of a tensor inside the loss (each is a host sync on a GPU)."""
    memory, memory_labels, indices, embeddings = make_problem(seed=14, dtype=torch.float32)
    loss_fn = SNCALoss(memory, memory_labels, temperature=0.05)
    labels = memory_labels[indices]

    def refuse(*args, **kwargs):
        raise AssertionError("host read of a tensor inside SNCALoss")

    leaf = embeddings.clone().requires_grad_(True)
    for name in ("item", "tolist", "__bool__", "__float__", "__int__", "__index__"):
        monkeypatch.setattr(torch.Tensor, name, refuse)
    loss = loss_fn(leaf, labels, indices=indices)
    loss.backward()
    monkeypatch.undo()
    assert torch.isfinite(loss) and torch.isfinite(leaf.grad).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu_without_host_syncs_once_validate_is_off():
    memory, memory_labels, indices, embeddings = make_problem(num_slots=300, batch=16, seed=15,
                                                              dtype=torch.float32)
    labels = memory_labels[indices]
    cpu = SNCALoss(memory, memory_labels, temperature=0.05, margin=0.1)
    loss_cpu, grad_cpu = _loss_and_grad(cpu, embeddings, labels, indices)
    device = torch.device("cuda")
    gpu = SNCALoss(MemoryBank(300, 5), memory_labels, temperature=0.05, margin=0.1).to(device)
    gpu.memory.slots.copy_(memory.slots)
    args = embeddings.to(device), labels.to(device), indices.to(device)
    _loss_and_grad(gpu, *args)  # validate=True (default): the label check syncs
    gpu.validate = False  # as the engine does after the first step of an epoch
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        loss_gpu, grad_gpu = _loss_and_grad(gpu, *args)
        logged = gpu.last_logs["snca"]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert logged.device.type == "cuda"
    torch.testing.assert_close(loss_gpu.cpu(), loss_cpu, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad_gpu.cpu(), grad_cpu, rtol=1e-4, atol=1e-6)
    gpu.validate = True
    with pytest.raises(DmlrsError, match="memory labels"):
        gpu(args[0], (args[1] + 1) % 3, indices=args[2])
