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


def test_shuffled_batches_are_a_function_of_the_seed_and_keep_the_short_batch():
    first = batches(0)
    assert first == batches(0) and first != batches(1)
    assert [len(b) for b in first] == [4, 4, 2]  # no drop_last, as the original loaders
    assert sorted(sum(first, [])) == list(range(10))
    assert len(batches(0, size=3, batch_size=4)) == 1


def test_a_last_batch_of_one_image_is_dropped_batch_norm_cannot_train_on_it():
    dropped = batches(0, size=9, batch_size=4)
    assert [len(b) for b in dropped] == [4, 4] and len(ShuffledBatches(9, 4, torch.Generator())) == 2
    assert [len(b) for b in batches(0, size=1, batch_size=4)] == [1]  # the only batch stays


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


def test_unlabelled_stream_runs_across_epochs_like_the_original_global_iterator():
    """The original restarts its unlabelled iterator whenever the global step is a multiple of
    the pool's batch count U; every other step takes the next batch of the current pass."""
    from dmlrs.engine.loaders import ContinuingPasses

    size, batch_size, steps_per_epoch, epochs = 10, 3, 2, 5  # U = 4 batches (3, 3, 3, 1 -> dropped: 3)
    stream = ContinuingPasses(size, batch_size, seed=7, start_step=0, num_steps=steps_per_epoch * epochs)
    unit = stream.batches_per_pass
    assert unit == 3  # a last batch of one image is dropped (batch norm), as ShuffledBatches
    expected, current = [], None
    for step in range(steps_per_epoch * epochs):  # the original's loop, written out
        if step % unit == 0:
            current = iter(stream.pass_batches(step // unit))
        expected.append(next(current))
    assert list(stream) == expected
    passes = [stream.pass_batches(p) for p in range(3)]
    assert passes[0] != passes[1] and all(len(set(sum(p, []))) == 9 for p in passes)
    # epoch by epoch (and after a resume at any step) the same stream continues
    pieces = [list(ContinuingPasses(size, batch_size, seed=7, start_step=s, num_steps=n))
              for s, n in ((0, 2), (2, 3), (5, 5))]
    assert sum(pieces, []) == expected
