"""CDNELoss = SNCA on normalised codes + weighted CE + weighted quantization, vs loop references."""
import math

import pytest
import torch
import torch.nn.functional as F

from dmlrs.errors import DmlrsError
from dmlrs.losses.cdne import CDNELoss
from dmlrs.memory import MemoryBank
from tests.losses.test_snca import reference_snca


def reference_cross_entropy(logits, labels):
    total = 0.0
    for row, label in zip(logits, labels):
        log_norm = math.log(sum(math.exp(v) for v in row))
        total += log_norm - row[label]
    return total / len(logits)


def reference_quantization(codes):
    values = [(abs(v) - 1.0) ** 2 for row in codes for v in row]
    return sum(values) / len(values)


def make_problem(seed=0, num_slots=15, bits=6, batch=5, num_classes=3):
    g = torch.Generator().manual_seed(seed)
    memory = MemoryBank(num_slots, bits, generator=g)
    memory.slots = memory.slots.double()
    memory_labels = torch.arange(num_slots) % num_classes
    indices = torch.randperm(num_slots, generator=g)[:batch]
    codes = 2 * torch.randn(batch, bits, generator=g, dtype=torch.float64)  # raw linear codes, as CDNE
    logits = torch.randn(batch, num_classes, generator=g, dtype=torch.float64)
    return memory, memory_labels, indices, codes, logits


@pytest.mark.parametrize("snca_weight, ce_weight, quant_weight, margin",
                         [(1.0, 1.0, 1.0, 0.0), (2.0, 0.3, 2.0, 0.05), (0.0, 0.0, 0.0, 0.0)])
def test_total_is_weighted_sum_of_loop_references(snca_weight, ce_weight, quant_weight, margin):
    memory, memory_labels, indices, codes, logits = make_problem()
    labels = memory_labels[indices]
    loss_fn = CDNELoss(memory, memory_labels, temperature=0.2, margin=margin, snca_weight=snca_weight,
                       ce_weight=ce_weight, quant_weight=quant_weight)
    loss = loss_fn(codes, labels, indices=indices, logits=logits)
    normalised = [[v / math.sqrt(sum(x * x for x in row)) for v in row] for row in codes.tolist()]
    snca = reference_snca(normalised, labels.tolist(), indices.tolist(), memory.slots.tolist(),
                          memory_labels.tolist(), 0.2, margin)
    ce = reference_cross_entropy(logits.tolist(), labels.tolist())
    quant = reference_quantization(codes.tolist())
    assert loss.item() == pytest.approx(snca_weight * snca + ce_weight * ce + quant_weight * quant, rel=1e-10)
    assert loss_fn.last_logs["snca"] == pytest.approx(snca, rel=1e-10)
    assert loss_fn.last_logs["ce"] == pytest.approx(ce, rel=1e-10)
    assert loss_fn.last_logs["quant"] == pytest.approx(quant, rel=1e-10)
    assert loss_fn.last_logs["cdne"] == pytest.approx(loss.item(), rel=1e-12)


def test_defaults_are_the_original_unit_weights_on_raw_codes():
    """The authors' objective: SNCA(normalize(h)) + CE(V h + c) + mean((|h| - 1)^2), h unbounded."""
    memory, memory_labels, indices, codes, _ = make_problem(seed=3)
    labels = memory_labels[indices]
    head = torch.nn.Linear(codes.shape[1], 3).double()
    logits = head(codes)
    loss = CDNELoss(memory, memory_labels)(codes, labels, indices=indices, logits=logits)
    assert codes.abs().max() > 1  # raw codes, no tanh
    normalised = [[v / math.sqrt(sum(x * x for x in row)) for v in row] for row in codes.tolist()]
    snca = reference_snca(normalised, labels.tolist(), indices.tolist(), memory.slots.tolist(),
                          memory_labels.tolist(), 0.05, 0.0)
    expected = (snca + reference_cross_entropy(logits.tolist(), labels.tolist())
                + reference_quantization(codes.tolist()))
    assert loss.item() == pytest.approx(expected, rel=1e-10)


def test_gradcheck_codes_and_logits_float64():
    memory, memory_labels, indices, codes, logits = make_problem(seed=1)
    labels = memory_labels[indices]
    loss_fn = CDNELoss(memory, memory_labels, temperature=0.2, margin=0.05, ce_weight=0.5, quant_weight=0.3)
    inputs = (codes.requires_grad_(True), logits.requires_grad_(True))
    assert torch.autograd.gradcheck(lambda h, z: loss_fn(h, labels, indices=indices, logits=z), inputs)


def test_bf16_autocast_finite_and_float32():
    memory, memory_labels, indices, codes, logits = make_problem(seed=2)
    memory.slots = memory.slots.float()
    loss_fn = CDNELoss(memory, memory_labels)
    labels = memory_labels[indices]
    fp32 = loss_fn(codes.float(), labels, indices=indices, logits=logits.float())
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        mixed = loss_fn(codes.bfloat16(), labels, indices=indices, logits=logits.bfloat16())
    assert mixed.dtype == torch.float32 and torch.isfinite(mixed)
    assert mixed.item() == pytest.approx(fp32.item(), rel=0.05)


def test_missing_logits_or_indices_are_clear_errors():
    memory, memory_labels, indices, codes, logits = make_problem()
    loss_fn = CDNELoss(memory, memory_labels)
    with pytest.raises(DmlrsError, match="logits"):
        loss_fn(codes, memory_labels[indices], indices=indices)
    with pytest.raises(DmlrsError, match="indices"):
        loss_fn(codes, memory_labels[indices], logits=logits)
    with pytest.raises(DmlrsError, match="--quant-weight -1.0"):
        CDNELoss(memory, memory_labels, quant_weight=-1.0)
    with pytest.raises(DmlrsError, match="--lambda_ -2.0"):
        CDNELoss(memory, memory_labels, snca_weight=-2.0)


def test_last_logs_are_detached_tensors():
    memory, memory_labels, indices, codes, logits = make_problem()
    loss_fn = CDNELoss(memory, memory_labels)
    loss = loss_fn(codes.requires_grad_(True), memory_labels[indices], indices=indices, logits=logits)
    assert set(loss_fn.last_logs) == {"snca", "ce", "quant", "cdne"}
    assert all(torch.is_tensor(v) and v.dim() == 0 and not v.requires_grad for v in loss_fn.last_logs.values())
    assert torch.equal(loss_fn.last_logs["cdne"], loss.detach())
