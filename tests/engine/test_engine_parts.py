import signal

import pytest
import torch

from dmlrs.engine import run_folder
from dmlrs.engine.device import resolve_device
from dmlrs.engine.interrupt import GracefulInterrupt
from dmlrs.engine.loaders import ShuffledBatches, SkipFirst
from dmlrs.errors import DmlrsError


def batches(seed, size=10, batch_size=4):
    return list(ShuffledBatches(size, batch_size, torch.Generator().manual_seed(seed)))


def test_shuffled_batches_are_a_function_of_the_seed_and_drop_the_short_batch():
    first = batches(0)
    assert first == batches(0) and first != batches(1)
    assert len(first) == 2 and all(len(b) == 4 for b in first)
    assert len(set(sum(first, []))) == 8
    assert sum(batches(0, size=3, batch_size=4), []) != [] and len(batches(0, size=3, batch_size=4)) == 1


def test_skip_first_replays_the_rest_of_an_epoch():
    full = batches(5)
    rest = list(SkipFirst(ShuffledBatches(10, 4, torch.Generator().manual_seed(5)), 1))
    assert rest == full[1:]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_first_signal_only_sets_the_flag(sig):
    previous = signal.getsignal(sig)
    with GracefulInterrupt() as interrupt:
        signal.raise_signal(sig)
        assert interrupt.requested and interrupt.signal_name == signal.Signals(sig).name
    assert signal.getsignal(sig) is previous


def test_second_sigint_aborts():
    with GracefulInterrupt():
        signal.raise_signal(signal.SIGINT)
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)


def test_fingerprint_ignores_runtime_only_settings():
    base = {"lr": 0.1, "dataset": "demo", "num_workers": 4, "resume": None}
    assert run_folder.fingerprint(base) == run_folder.fingerprint({**base, "num_workers": 0, "resume": "auto"})
    assert run_folder.fingerprint(base) != run_folder.fingerprint({**base, "lr": 0.2})


def test_run_folders_never_collide(tmp_path):
    first = run_folder.create_run_dir(tmp_path, "SNCA_CE", "AID")
    second = run_folder.create_run_dir(tmp_path, "SNCA_CE", "AID")
    assert first != second and first.parent == second.parent == tmp_path / "SNCA_CE" / "AID"


def test_device_flag_errors_are_actionable():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in ("cpu", "cuda")
    with pytest.raises(DmlrsError, match="--device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(DmlrsError, match="CUDA is not available"):
            resolve_device("cuda")
