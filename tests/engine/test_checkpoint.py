import os
import random

import numpy as np
import pytest
import torch

from dmlrs.engine import checkpoint as ckpt
from dmlrs.errors import DmlrsError


def test_atomic_write_keeps_the_old_file_when_saving_crashes(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    ckpt.save_checkpoint({"epoch": 1, "method": {"w": torch.ones(3)}}, path)

    def crash(obj, handle):
        handle.write(b"partial bytes")
        raise KeyboardInterrupt  # a kill in the middle of torch.save

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint({"epoch": 2, "method": {"w": torch.zeros(3)}}, path)
    monkeypatch.undo()
    state = ckpt.load_checkpoint(path)
    assert state["epoch"] == 1 and torch.equal(state["method"]["w"], torch.ones(3))
    assert os.listdir(tmp_path) == ["last.pt"]  # no temporary file left behind


def test_rng_state_round_trip_through_a_weights_only_checkpoint(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    ckpt.save_checkpoint({"epoch": 0, "method": {}, "rng": ckpt.capture_rng_state()}, tmp_path / "c.pt")
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    ckpt.restore_rng_state(ckpt.load_checkpoint(tmp_path / "c.pt")["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


@pytest.mark.parametrize("content", [b"garbage", None])
def test_unreadable_or_foreign_checkpoints_raise_clear_errors(tmp_path, content):
    path = tmp_path / "x.pt"
    if content is None:
        torch.save({"conv1.weight": torch.zeros(1)}, path)  # plain weights, not a training checkpoint
    else:
        path.write_bytes(content)
    with pytest.raises(DmlrsError, match="x.pt"):
        ckpt.load_checkpoint(path)
    with pytest.raises(DmlrsError, match="not found"):
        ckpt.load_checkpoint(tmp_path / "missing.pt")


def test_atomic_files_get_the_permissions_of_a_plain_open(tmp_path):
    from dmlrs.atomic import atomic_open

    with open(tmp_path / "plain", "w") as handle:
        handle.write("x")
    with atomic_open(tmp_path / "atomic", "w") as handle:
        handle.write("x")
    assert (tmp_path / "atomic").stat().st_mode == (tmp_path / "plain").stat().st_mode
