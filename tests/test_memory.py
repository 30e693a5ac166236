"""MemoryBank and MomentumEncoder: maths against explicit formulas, state, batch-norm scheme."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dmlrs.errors import DmlrsError
from dmlrs.memory import MemoryBank, MomentumEncoder


def _unit(rows: int, dim: int, seed: int) -> torch.Tensor:
    return F.normalize(torch.randn(rows, dim, generator=torch.Generator().manual_seed(seed)), dim=1)


# --------------------------------------------------------------------------------- MemoryBank
def test_initial_slots_have_norm_about_one_and_are_seeded():
    a = MemoryBank(500, 128, generator=torch.Generator().manual_seed(3))
    b = MemoryBank(500, 128, generator=torch.Generator().manual_seed(3))
    c = MemoryBank(500, 128, generator=torch.Generator().manual_seed(4))
    assert a.slots.shape == (500, 128)
    squared_norms = a.slots.double().pow(2).sum(dim=1)
    assert abs(squared_norms.mean().item() - 1) < 0.01  # E ||m||^2 = d * (1/d) = 1
    assert not torch.allclose(squared_norms, torch.ones(500, dtype=torch.float64))  # not normalised
    assert torch.equal(a.slots, b.slots)
    assert not torch.equal(a.slots, c.slots)


def test_initial_slots_are_the_original_uniform_init():
    dim = 12
    generator = torch.Generator().manual_seed(0)
    bank = MemoryBank(30, dim, generator=generator)
    bound = 1 / math.sqrt(dim / 3)
    raw = torch.rand(30, dim, generator=torch.Generator().manual_seed(0)) * 2 * bound - bound
    torch.testing.assert_close(bank.slots, raw)


def test_update_matches_explicit_formula_and_touches_only_given_indices():
    bank = MemoryBank(10, 4, momentum=0.3, generator=torch.Generator().manual_seed(0))
    before = bank.slots.clone().double()
    indices = torch.tensor([7, 2, 5])
    features = _unit(3, 4, seed=1)
    bank.update(indices, features)
    for row, i in enumerate(indices.tolist()):
        mixed = [0.3 * before[i, k].item() + 0.7 * features[row, k].item() for k in range(4)]
        norm = math.sqrt(sum(v * v for v in mixed))
        expected = torch.tensor([v / norm for v in mixed], dtype=torch.float64)
        torch.testing.assert_close(bank.slots[i].double(), expected, atol=1e-6, rtol=1e-6)
    untouched = [i for i in range(10) if i not in indices.tolist()]
    assert torch.equal(bank.slots[untouched], before[untouched].float())
    torch.testing.assert_close(bank.slots[indices].norm(dim=1), torch.ones(3))


def test_update_with_duplicate_indices_uses_the_mean_feature_once():
    bank = MemoryBank(5, 3, momentum=0.5, generator=torch.Generator().manual_seed(0))
    before = bank.slots.clone()
    features = _unit(3, 3, seed=2)
    bank.update(torch.tensor([1, 1, 4]), features)
    expected_1 = F.normalize(0.5 * before[1] + 0.5 * (features[0] + features[1]) / 2, dim=0)
    expected_4 = F.normalize(0.5 * before[4] + 0.5 * features[2], dim=0)
    torch.testing.assert_close(bank.slots[1], expected_1)
    torch.testing.assert_close(bank.slots[4], expected_4)
    # order of duplicates does not matter
    other = MemoryBank(5, 3, momentum=0.5, generator=torch.Generator().manual_seed(0))
    other.update(torch.tensor([4, 1, 1]), features[[2, 1, 0]])
    torch.testing.assert_close(other.slots, bank.slots)


def test_update_does_not_build_a_graph_and_rejects_wrong_shapes():
    bank = MemoryBank(6, 4)
    features = _unit(2, 4, seed=0).requires_grad_(True)
    bank.update(torch.tensor([0, 1]), features)
    assert not bank.slots.requires_grad
    with pytest.raises(DmlrsError, match="embedding size"):
        bank.update(torch.tensor([0, 1]), _unit(2, 5, seed=0))


def test_replace_sets_normalised_features():
    bank = MemoryBank(6, 4, generator=torch.Generator().manual_seed(0))
    before = bank.slots.clone()
    features = 3.0 * _unit(2, 4, seed=5)
    bank.replace(torch.tensor([3, 0]), features)
    torch.testing.assert_close(bank.slots[[3, 0]], features / 3.0)
    assert torch.equal(bank.slots[[1, 2, 4, 5]], before[[1, 2, 4, 5]])


@pytest.mark.parametrize("epoch, expected", [(0, 0.5), (79, 0.5), (80, 0.8), (119, 0.8), (120, 0.9), (129, 0.9)])
def test_momentum_schedule(epoch, expected):
    bank = MemoryBank(4, 2, momentum=0.5, schedule={120: 0.9, 80: 0.8})
    bank.set_epoch(epoch)
    assert bank.momentum == pytest.approx(expected)


def test_set_epoch_is_not_incremental():
    bank = MemoryBank(4, 2, momentum=0.5, schedule={80: 0.8, 120: 0.9})
    bank.set_epoch(125)
    bank.set_epoch(10)  # e.g. a restart from an early checkpoint
    assert bank.momentum == pytest.approx(0.5)


def test_state_dict_round_trip_carries_slots_and_momentum():
    bank = MemoryBank(8, 3, momentum=0.5, schedule={2: 0.8})
    bank.set_epoch(5)
    bank.update(torch.tensor([1, 6]), _unit(2, 3, seed=9))
    state = bank.state_dict()
    assert set(state) == {"slots", "momentum_value"}
    restored = MemoryBank(8, 3, momentum=0.5, schedule={2: 0.8})
    restored.load_state_dict(state)
    assert torch.equal(restored.slots, bank.slots)
    assert restored.momentum == pytest.approx(0.8)


def test_invalid_momentum_is_a_user_error():
    with pytest.raises(DmlrsError, match="momentum"):
        MemoryBank(4, 2, momentum=1.5)
    with pytest.raises(DmlrsError, match="epoch 80"):
        MemoryBank(4, 2, schedule={80: -0.1})


# ---------------------------------------------------------------------------- MomentumEncoder
class TinyNet(nn.Module):
    """conv + BN + linear; returns the dict contract of dmlrs models."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 5)

    def forward(self, images):
        x = torch.relu(self.bn(self.conv(images))).mean(dim=(2, 3))  # (B, 4)
        features = self.fc(x)
        return {"features": features, "embedding": F.normalize(features, dim=1)}


def _net(seed: int = 0) -> TinyNet:
    torch.manual_seed(seed)
    return TinyNet()


def test_ema_copy_starts_equal_and_has_no_grads():
    model = _net()
    ema = MomentumEncoder(model, decay=0.9)
    for p, q in zip(model.parameters(), ema.module.parameters()):
        assert torch.equal(p, q) and p.data_ptr() != q.data_ptr()
        assert not q.requires_grad
    images = torch.randn(2, 3, 6, 6, requires_grad=True)
    out = ema(images)
    assert set(out) == {"features", "embedding"}
    assert not out["features"].requires_grad


@pytest.mark.parametrize("bn_mode", ["train", "eval"])
def test_ema_update_matches_formula_on_parameters(bn_mode):
    model = _net(0)
    ema = MomentumEncoder(model, decay=0.9, bn_mode=bn_mode)
    buffers_before = {name: b.clone() for name, b in ema.module.named_buffers()}
    old = [q.detach().clone() for q in ema.module.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    model.train()
    model(torch.randn(4, 3, 6, 6))  # moves the online BN running stats
    ema.update(model)
    for q, q_old, p in zip(ema.module.parameters(), old, model.parameters()):
        torch.testing.assert_close(q, 0.9 * q_old + 0.1 * p)
    for name, b in model.named_buffers():
        # eval mode copies the online running statistics; train mode (the original) leaves them
        expected = b if bn_mode == "eval" else buffers_before[name]
        assert torch.equal(dict(ema.module.named_buffers())[name], expected)


def test_ema_default_is_the_original_batch_statistics_key_encoder():
    model = _net(1)
    ema = MomentumEncoder(model, decay=0.99)
    assert ema.bn_mode == "train"
    ema.eval()  # the method's mode never changes the scheme
    assert not ema.module.training and ema.module.bn.training and not ema.module.conv.training
    images = torch.randn(6, 3, 6, 6) * 2 + 1
    keys = ema(images)["features"]
    # keys are normalised with the key batch's own statistics: a formula written out here
    x = ema.module.conv(images).double()
    mean = x.mean(dim=(0, 2, 3), keepdim=True)
    var = x.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
    bn = ema.module.bn
    normed = (x - mean) / torch.sqrt(var + bn.eps) * bn.weight.double()[None, :, None, None] \
        + bn.bias.double()[None, :, None, None]
    expected = ema.module.fc(torch.relu(normed).mean(dim=(2, 3)).float())
    torch.testing.assert_close(keys, expected, atol=1e-5, rtol=1e-5)


def test_ema_eval_batchnorm_uses_running_stats_even_in_train_mode():
    model = _net(1)
    model.train()
    for _ in range(3):
        model(torch.randn(8, 3, 6, 6) * 2 + 1)  # non-trivial running stats
    ema = MomentumEncoder(model, decay=0.99, bn_mode="eval")
    ema.train()  # must not switch the copy to batch statistics
    assert not ema.module.training
    stats_before = ema.module.bn.running_mean.clone()
    images = torch.randn(6, 3, 6, 6)
    batch_out = ema(images)["features"]
    # each sample's output is independent of its batch-mates (no batch-statistics leak) ...
    single = torch.cat([ema(images[i:i + 1])["features"] for i in range(6)])
    torch.testing.assert_close(batch_out, single)
    # ... equals the eval-mode online model (running statistics) ...
    model.eval()
    torch.testing.assert_close(batch_out, model(images)["features"])
    # ... and forwarding does not move the running statistics
    assert torch.equal(ema.module.bn.running_mean, stats_before)


def test_ema_state_dict_round_trip():
    model = _net(2)
    ema = MomentumEncoder(model, decay=0.5)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(2)
    ema.update(model)
    restored = MomentumEncoder(_net(3), decay=0.5)
    restored.load_state_dict(ema.state_dict())
    for (name, a), (_, b) in zip(ema.state_dict().items(), restored.state_dict().items()):
        assert torch.equal(a, b), name
    images = torch.randn(2, 3, 6, 6)
    torch.testing.assert_close(restored(images)["embedding"], ema(images)["embedding"])


def test_ema_rejects_bad_decay():
    with pytest.raises(DmlrsError, match="decay"):
        MomentumEncoder(_net(), decay=1.5)
    with pytest.raises(DmlrsError, match="--ema-bn"):
        MomentumEncoder(_net(), bn_mode="frozen")
