"""BNMLoss against a numpy float64 SVD of a softmax written as explicit loops."""
import math

import numpy as np
import pytest
import torch

from dmlrs.losses.bnm import BNMLoss


def reference_bnm(logits, normalizer="min_dim"):
    """-(sum of singular values of softmax(logits)) / n, n = min(B, C) (the original code's -mean
    of the singular values) or B; softmax by loops, SVD by numpy float64."""
    z = logits.detach().double().numpy()
    batch, classes = z.shape
    probs = np.zeros((batch, classes))
    for i in range(batch):
        top = max(z[i])
        exps = [math.exp(z[i, c] - top) for c in range(classes)]
        for c in range(classes):
            probs[i, c] = exps[c] / sum(exps)
    divisor = min(batch, classes) if normalizer == "min_dim" else batch
    return -np.linalg.svd(probs, compute_uv=False).sum() / divisor


def nuclear_norm_of_softmax(logits):
    return np.linalg.svd(torch.softmax(logits.detach().double(), dim=1).numpy(), compute_uv=False).sum()


@pytest.mark.parametrize("normalizer", ["min_dim", "batch"])
@pytest.mark.parametrize("shape", [(6, 4), (3, 7), (5, 5)])
def test_value_matches_numpy_svd(shape, normalizer):
    logits = torch.randn(*shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3
    bnm = BNMLoss(normalizer)
    value = bnm(logits)
    assert value.item() == pytest.approx(reference_bnm(logits, normalizer), rel=1e-12)
    assert bnm.last_logs["bnm"] == pytest.approx(value.item())


def test_default_is_the_original_minus_mean_of_singular_values():
    logits = torch.randn(128, 21, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    singular = np.linalg.svd(torch.softmax(logits, dim=1).numpy(), compute_uv=False)
    assert len(singular) == 21
    assert BNMLoss()(logits).item() == pytest.approx(-singular.mean(), rel=1e-12)
    assert BNMLoss("batch")(logits).item() == pytest.approx(-singular.sum() / 128, rel=1e-12)
    with pytest.raises(ValueError, match="normalizer"):
        BNMLoss("mean")


def test_gradcheck_on_random_logits_with_distinct_singular_values():
    logits = torch.randn(5, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    singular = torch.linalg.svdvals(torch.softmax(logits, dim=1))
    gaps = (singular[:-1] - singular[1:]).abs()
    assert gaps.min() > 1e-3 and singular.min() > 1e-3  # away from the non-smooth points
    assert torch.autograd.gradcheck(BNMLoss(), (logits.requires_grad_(True),))
    assert torch.autograd.gradcheck(BNMLoss("batch"), (logits,))


def test_one_sample_batch_is_minus_the_euclidean_norm_of_its_probabilities():
    logits = torch.tensor([[2.0, -1.0, 0.5]], dtype=torch.float64)
    probs = torch.softmax(logits, dim=1)
    value = BNMLoss()(logits)
    assert value.item() == pytest.approx(-probs.norm().item(), rel=1e-12)
    assert value.item() == pytest.approx(reference_bnm(logits), rel=1e-12)


def test_minimising_it_diversifies_collapsed_predictions():
    gen = torch.Generator().manual_seed(2)
    # Every sample leans to class 0: predictions have collapsed onto one class.
    logits = (0.5 * torch.randn(8, 4, generator=gen, dtype=torch.float64)).requires_grad_(True)
    with torch.no_grad():
        logits[:, 0] += 3.0
    start_norm = nuclear_norm_of_softmax(logits)
    start_classes = logits.argmax(dim=1).unique().numel()
    assert start_classes == 1
    bnm = BNMLoss()
    optimizer = torch.optim.SGD([logits], lr=20.0)
    bnm(logits).backward()
    optimizer.step()
    assert nuclear_norm_of_softmax(logits) > start_norm  # one gradient step already raises it
    for _ in range(200):
        optimizer.zero_grad()
        bnm(logits).backward()
        optimizer.step()
    assert logits.argmax(dim=1).unique().numel() > start_classes  # more classes predicted
    assert np.linalg.matrix_rank(torch.softmax(logits.detach(), dim=1).numpy(), tol=0.1) == 4


def test_labels_cannot_be_passed():
    bnm = BNMLoss()
    logits = torch.randn(4, 3)
    labels = torch.tensor([0, 1, 2, 0])
    with pytest.raises(TypeError):
        bnm(logits, labels)
    with pytest.raises(TypeError):
        bnm(logits, labels=labels)


def test_finite_in_fp32_with_logits_at_plus_minus_twenty():
    logits = torch.tensor([[20.0, -20.0, -20.0], [20.0, -20.0, -20.0], [-20.0, -20.0, 20.0]], requires_grad=True)
    value = BNMLoss()(logits)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(logits.grad).all()
    assert value.item() == pytest.approx(reference_bnm(logits), rel=1e-5)


def test_bf16_autocast_on_cpu_is_finite_and_close_to_fp32():
    torch.manual_seed(3)
    layer = torch.nn.Linear(8, 5)
    inputs = torch.randn(6, 8) * 3
    reference = BNMLoss()(layer(inputs))
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        logits = layer(inputs)
        assert logits.dtype == torch.bfloat16
        value = BNMLoss()(logits)
    assert value.dtype == torch.float32 and torch.isfinite(value)
    assert value.item() == pytest.approx(reference.item(), rel=2e-2)


def test_empty_or_wrong_rank_logits_are_rejected():
    with pytest.raises(ValueError, match="BNM"):
        BNMLoss()(torch.zeros(0, 3))
    with pytest.raises(ValueError, match="BNM"):
        BNMLoss()(torch.zeros(3))


def test_last_logs_hold_a_detached_tensor():
    logits = torch.randn(6, 4, requires_grad=True)
    bnm = BNMLoss()
    value = bnm(logits)
    logged = bnm.last_logs["bnm"]
    assert torch.is_tensor(logged) and not logged.requires_grad and torch.equal(logged, value.detach())
