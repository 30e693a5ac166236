"""At most one device-to-host sync per optimizer step (every method, through the real Trainer).

A host sync (the CPU waiting for the GPU to finish so it can read a value) stalls the pipeline of
queued kernels; one per step is the non-finite check the engine needs, every other one is waste.

How syncs are counted without CUDA. :class:`SyncCounter` is a ``TorchFunctionMode``: it sees
every torch call made from Python and records the ones that, on a CUDA tensor, block the host:

* reading values: ``Tensor.item``, ``__bool__`` (``if t:``), ``__float__``, ``__int__``,
  ``__index__`` (``list[t]``), ``__complex__``, ``tolist``, ``cpu``, ``numpy``, ``__array__``,
  ``__format__`` / ``__repr__`` / ``__str__`` (printing a tensor), ``__contains__`` (``x in t``),
  ``torch.equal``, ``torch.allclose``, ``torch.is_nonzero``;
* ops whose output size depends on the values, so the size must be read first: ``nonzero``,
  ``argwhere``, one-argument ``torch.where``, ``masked_select``, ``unique`` /
  ``unique_consecutive`` (without sizes there is no way round), ``bincount``, ``histc``,
  ``repeat_interleave`` with a tensor of repeats and no ``output_size``, ``F.one_hot`` without
  ``num_classes``, indexing or assigning with a boolean mask (``t[mask]``, ``t[mask] = v``,
  ``index_put_``);
* linear algebra whose CUDA kernels check a convergence / error flag on the host
  (``torch.linalg.svd``, ``svdvals``, ``eigh``, ``eigvalsh``, ``eig``, ``eigvals``,
  ``cholesky``, ``inv``, ``solve``, ``lstsq``, ``matrix_rank``, ``pinv``; ``torch.svd``).

Not seen by the mode: ``.to(device)`` (on a CPU-only machine the training device *is* the host,
so a move to the host cannot be told from a move to the device), ``torch.cuda.synchronize``,
and syncs hidden inside C++ kernels of ops not listed. The CUDA variant at the end counts with
``torch.cuda.set_sync_debug_mode("warn")``, which sees all of those; it runs where CUDA exists.

What is counted: everything ``Trainer._train_epoch`` does, except data loading (the loader's
batches are host tensors until ``_step`` moves them), the batch sampler built from the CPU
label tensor, the epoch-start hooks (t-RNSL's refresh, once per epoch) and checkpoint saves.

The bound, exactly, for E epochs of S steps (independent of ``log_every``: the log reads travel
in the step's own sync):

* every step but an epoch's first:  ``1 + EXTRA[method]`` at most
* an epoch's first step:            ``2 + EXTRA[method]`` at most (the losses' input range checks,
                                    labels and indices read together, run on that step only)
* outside the steps, per epoch:     1 at most (``Method.scalars()``: memory momentum, kept fraction)

so ``syncs <= E * S * (1 + EXTRA) + 2 * E``. ``EXTRA`` lists what is still left, by source.
"""
from __future__ import annotations

import contextlib
import traceback
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from dmlrs.data import build_data
from dmlrs.engine import trainer as trainer_module
from dmlrs.engine.config import TrainConfig
from dmlrs.engine.trainer import Trainer
from dmlrs.methods.cdne import CDNE
from dmlrs.methods.mnce_bnm import MNCEBNM
from dmlrs.methods.snca_ce import SNCACE
from dmlrs.methods.srl import SRL
from dmlrs.methods.trnsl import TRNSL
from dmlrs.models import build_model

DMLRS = Path(trainer_module.__file__).resolve().parents[1]

#: syncs per step beyond the engine's one, still left, by source (each is a CUDA sync per step)
EXTRA = {
    # SNCALoss compares the batch labels with the memory labels (torch.equal) on every call on
    # the CPU only, where it costs no device sync; on an accelerator its ``validate`` switch
    # limits it to an epoch's first step. The memory bank update is sync-free (a (B, B)
    # duplicate matrix instead of torch.unique / bincount).
    "SNCA_CE": 1,
    "SNCA_CE_MC": 1,
    "CDNE": 1,
    # dmlrs/losses/bnm.py: torch.linalg.svdvals checks cuSOLVER's error flag on the host (inherent)
    "MNCE_BNM": 1,
    "tRNSL": 0,
    "SRL": 0,
}
#: the same on CUDA: torch.cuda.set_sync_debug_mode counted svdvals as 2 synchronizing calls on
#: an H200 (torch 2.11); the memory bank's former unique + bincount (3) are gone, not re-measured
#: on a GPU since (this test runs there)
CUDA_EXTRA = {**EXTRA, "SNCA_CE": 0, "SNCA_CE_MC": 0, "CDNE": 0, "MNCE_BNM": 2}

EPOCHS, STEPS, BATCH = 2, 4, 8


# ---------------------------------------------------------------- counting
def _bool_index(index) -> bool:
    items = index if isinstance(index, tuple) else (index,)
    return any(torch.is_tensor(i) and i.dtype in (torch.bool, torch.uint8) for i in items)


_READS = {
    torch.Tensor.item, torch.Tensor.__bool__, torch.Tensor.__float__, torch.Tensor.__int__, torch.Tensor.__index__,
    torch.Tensor.__complex__, torch.Tensor.tolist, torch.Tensor.cpu, torch.Tensor.numpy, torch.Tensor.__array__,
    torch.Tensor.__format__, torch.Tensor.__repr__, torch.Tensor.__str__, torch.Tensor.__contains__,
    torch.equal, torch.allclose, torch.is_nonzero, torch.Tensor.is_nonzero, torch.Tensor.equal, torch.Tensor.allclose,
}
_VALUE_SIZED = {
    torch.nonzero, torch.Tensor.nonzero, torch.argwhere, torch.Tensor.argwhere, torch.masked_select,
    torch.Tensor.masked_select, torch.unique, torch.Tensor.unique, torch.unique_consecutive,
    torch.Tensor.unique_consecutive, torch.bincount, torch.Tensor.bincount, torch.histc, torch.Tensor.histc,
}
_LINALG = {
    torch.linalg.svd, torch.linalg.svdvals, torch.linalg.eigh, torch.linalg.eigvalsh, torch.linalg.eig,
    torch.linalg.eigvals, torch.linalg.cholesky, torch.linalg.inv, torch.linalg.solve, torch.linalg.lstsq,
    torch.linalg.matrix_rank, torch.linalg.pinv, torch.svd, torch.Tensor.svd,
}


def syncs_on_cuda(func, args, kwargs) -> bool:
    """Whether this call blocks the host when its tensors live on a CUDA device."""
    if func in _READS or func in _VALUE_SIZED or func in _LINALG:
        return True
    if func is torch.where:
        return len(args) + len(kwargs) == 1
    if func in (torch.repeat_interleave, torch.Tensor.repeat_interleave):
        repeats = args[1] if len(args) > 1 else kwargs.get("repeats")
        return (torch.is_tensor(repeats) or len(args) == 1) and kwargs.get("output_size") is None
    if func is F.one_hot:
        return (args[1] if len(args) > 1 else kwargs.get("num_classes", -1)) == -1
    if func in (torch.Tensor.__getitem__, torch.Tensor.__setitem__):
        return _bool_index(args[1])
    if func in (torch.Tensor.index_put_, torch.Tensor.index_put, torch.index_put):
        indices = args[1] if len(args) > 1 else kwargs.get("indices", ())
        return any(_bool_index(i) for i in indices if i is not None)
    return False


def _caller() -> str:
    """file:line of the innermost dmlrs frame (for failure messages)."""
    for frame in reversed(traceback.extract_stack()[:-3]):
        if frame.filename.startswith(str(DMLRS)):
            return f"{Path(frame.filename).relative_to(DMLRS.parent)}:{frame.lineno}"
    return "?"


class Phases:
    """Who is running: ``("step", epoch, step)`` inside ``Trainer._step``, ``"epoch"`` elsewhere in
    ``Trainer._train_epoch``, None when nothing is counted."""

    def __init__(self):
        self.phase = None
        self.records: list[tuple[object, str, str]] = []  # (phase, what, where)

    def record(self, what: str) -> None:
        if self.phase is not None:
            self.records.append((self.phase, what, _caller()))

    @contextlib.contextmanager
    def set(self, phase):
        before, self.phase = self.phase, phase
        try:
            yield
        finally:
            self.phase = before


class SyncCounter(TorchFunctionMode):
    def __init__(self, phases: Phases):
        super().__init__()
        self.phases = phases

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if syncs_on_cuda(func, args, kwargs):
            self.phases.record(getattr(func, "__name__", str(func)))
        return func(*args, **kwargs)


class CudaSyncCounter:
    """Counts the warnings of ``torch.cuda.set_sync_debug_mode("warn")`` (one per synchronizing
    CUDA call: value reads, blocking copies, value-sized outputs, cuSOLVER checks...)."""

    def __init__(self, phases: Phases):
        self.phases = phases

    def __enter__(self):
        self._mode = torch.cuda.get_sync_debug_mode()
        self._catch = warnings.catch_warnings()
        self._catch.__enter__()
        warnings.simplefilter("always")
        shown = warnings.showwarning

        def showwarning(message, category, filename, lineno, file=None, line=None):
            if "synchroniz" in str(message):
                self.phases.record(str(message).splitlines()[0][:60])
            else:
                shown(message, category, filename, lineno, file, line)

        warnings.showwarning = showwarning
        torch.cuda.set_sync_debug_mode("warn")
        return self

    def __exit__(self, *exc):
        torch.cuda.set_sync_debug_mode(self._mode)
        self._catch.__exit__(*exc)


def run_counted(method, data, tmp_path, monkeypatch, *, counter=SyncCounter, device="cpu", log_every=2,
                epochs=EPOCHS, steps=STEPS):
    """Train ``epochs`` x ``steps`` through ``Trainer.fit`` (validation stubbed out) and return the
    recorded syncs, grouped as {phase: [(what, where), ...]}, and the trainer."""
    config = TrainConfig(epochs=epochs, batch_size=BATCH, steps_per_epoch=steps, lr=0.01, device=device,
                         num_workers=0, save_every_steps=0, log_every=log_every, progress=True)
    trainer = Trainer(method, data, config, tmp_path / "run", tensorboard=False)
    trainer.evaluator.validate = lambda: {"knn_acc": 0.5, "mAP": 0.5}
    phases = Phases()

    def paused(function):
        def call(*args, **kwargs):
            with phases.set(None):
                return function(*args, **kwargs)
        return call

    def counted(function, phase):
        def call(*args, **kwargs):
            with phases.set(phase() if callable(phase) else phase):
                return function(*args, **kwargs)
        return call

    class HostLoader:  # the loader's own work is host work: not counted
        def __init__(self, loader):
            self.loader = loader

        def __len__(self):
            return len(self.loader)

        def __iter__(self):
            with phases.set(None):  # (DataLoader draws its base seed with .item() on a CPU tensor)
                batches = iter(self.loader)
            while True:
                with phases.set(None):
                    batch = next(batches, None)
                if batch is None:
                    return
                yield batch

    real_loader = trainer_module.train_loader
    monkeypatch.setattr(trainer_module, "train_loader", lambda *a, **k: HostLoader(real_loader(*a, **k)))
    method.on_epoch_start = paused(method.on_epoch_start)
    method.batch_sampler = paused(method.batch_sampler)
    trainer.save = paused(trainer.save)
    trainer._train_epoch = counted(trainer._train_epoch, "epoch")
    trainer._step = counted(trainer._step, lambda: ("step", trainer.epoch, trainer.step_in_epoch))
    with counter(phases):
        assert trainer.fit()
    grouped: dict = {}
    for phase, what, where in phases.records:
        grouped.setdefault(phase, []).append((what, where))
    return grouped, trainer


# ---------------------------------------------------------------- the methods, tiny
def model(num_classes=None, head="embedding"):
    torch.manual_seed(0)
    return build_model("resnet18", 16, weights="none", num_classes=num_classes, head=head)


@pytest.fixture(scope="module")
def labelled():
    return build_data("demo", img_size=32)


@pytest.fixture(scope="module")
def semi():
    return build_data("demo", img_size=32, train_per=0.5)


BUILDERS = {
    "SNCA_CE": lambda d: SNCACE(model(d.num_classes), d.train_labels, memory_mode="bank"),
    "SNCA_CE_MC": lambda d: SNCACE(model(d.num_classes), d.train_labels, memory_mode="momentum"),
    "CDNE": lambda d: CDNE(model(d.num_classes, head="hash"), d.train_labels),
    "MNCE_BNM": lambda d: MNCEBNM(model(), d.num_classes),
    # refreshed before the 2nd epoch: the refresh is an epoch hook, not counted per step
    "tRNSL": lambda d: TRNSL(model(), d.num_classes, d.train, start_prune=2, prune_every=1),
    "SRL": lambda d: SRL(model(), classes_per_batch=2, images_per_class=4),
}


def data_for(name, labelled, semi):
    return semi if name == "MNCE_BNM" else labelled


def check_bound(grouped, extra, name, epochs=EPOCHS, steps=STEPS):
    shown = "\n".join(f"  {phase}: {records}" for phase, records in grouped.items())
    step_phases = [phase for phase in grouped if isinstance(phase, tuple)]
    for epoch in range(epochs):
        for step in range(steps):
            count = len(grouped.get(("step", epoch, step), []))
            allowed = 1 + extra + (step == 0)
            assert 1 <= count <= allowed, f"{name}: epoch {epoch + 1} step {step + 1}: {count} syncs " \
                                          f"(at most {allowed})\n{shown}"
    assert len(step_phases) == epochs * steps, shown  # every step was seen, and nothing else
    assert len(grouped.get("epoch", [])) <= epochs, f"{name}: syncs outside the steps\n{shown}"
    total = sum(len(records) for records in grouped.values())
    assert total <= epochs * steps * (1 + extra) + 2 * epochs, shown


@pytest.mark.parametrize("name", list(BUILDERS))
def test_every_method_reads_the_device_at_most_once_per_step(name, labelled, semi, tmp_path, monkeypatch):
    data = data_for(name, labelled, semi)
    grouped, trainer = run_counted(BUILDERS[name](data), data, tmp_path, monkeypatch)
    check_bound(grouped, EXTRA[name], name)
    # the engine's own read is exactly one per step, from _step (the non-finite check + log read)
    engine = [where for phase, records in grouped.items() if isinstance(phase, tuple) for _, where in records
              if where.startswith("dmlrs/engine/")]
    assert len(engine) == EPOCHS * STEPS, engine


def test_log_reads_ride_on_the_step_sync(labelled, tmp_path, monkeypatch):
    """Reading the loss sums every step or once per epoch costs the same number of syncs."""
    counts = []
    for log_every in (1, 1000):
        grouped, _ = run_counted(BUILDERS["SRL"](labelled), labelled, tmp_path / str(log_every), monkeypatch,
                                 log_every=log_every)
        counts.append(sum(len(records) for records in grouped.values()))
    assert counts[0] == counts[1] == EPOCHS * STEPS, counts


def recording_trainer(method, data, tmp_path, *, steps, log_every, progress):
    """A one-epoch CPU ``Trainer`` whose ``_step`` also appends each step's loss parts to ``parts``."""
    config = TrainConfig(epochs=1, batch_size=BATCH, steps_per_epoch=steps, lr=0.01, device="cpu", num_workers=0,
                         save_every_steps=0, log_every=log_every, progress=progress)
    trainer = Trainer(method, data, config, tmp_path / "run", tensorboard=False)
    parts, real_step = [], trainer._step
    trainer._step = lambda batch: parts.append(real_step(batch)) or parts[-1]
    return trainer, parts


# ---------------------------------------------------------------- what the reads show
def test_epoch_means_are_the_python_means_of_the_step_parts(labelled, tmp_path, monkeypatch):
    """The device sums (float64) give exactly the means Python floats give: metrics.jsonl is unchanged."""
    trainer, parts = recording_trainer(BUILDERS["tRNSL"](labelled), labelled, tmp_path, steps=5, log_every=2,
                                       progress=False)
    record = trainer._train_epoch()
    assert len(parts) == 5 and all(torch.is_tensor(v) and v.dim() == 0 for p in parts for v in p.values())
    sums: dict[str, float] = {}
    for step in parts:
        for key, value in step.items():
            sums[key] = sums.get(key, 0.0) + float(value)
    assert record["train"] == {key: value / 5 for key, value in sums.items()}  # exact, not approx
    assert set(record) == {"train", "lr", "images_per_second", "skipped_nonfinite", "kept_fraction"}
    assert set(record["train"]) == {"loss", "rnsl"}


def test_progress_bar_shows_the_means_since_the_previous_read(labelled, tmp_path, monkeypatch):
    shown = []

    class Bar:
        def __init__(self, *args, **kwargs):
            pass

        def set_postfix(self, values):
            shown.append(dict(values))

        def update(self, n=1):
            pass

        def close(self):
            pass

    monkeypatch.setattr(trainer_module, "tqdm", Bar)
    trainer, parts = recording_trainer(BUILDERS["SRL"](labelled), labelled, tmp_path, steps=6, log_every=3,
                                       progress=True)
    trainer._train_epoch()
    assert len(shown) == 2  # steps 3 and 6
    for window, values in zip((parts[:3], parts[3:]), shown):
        assert set(values) == {"loss", "srl_pos", "srl_neg", "hard_pos_frac", "hard_neg_frac", "img/s"}
        expected = sum(float(p["loss"]) for p in window) / 3
        assert float(values["loss"]) == pytest.approx(expected, abs=1e-4)
        assert float(values["img/s"]) > 0


def test_a_mid_epoch_checkpoint_holds_exact_float_sums(labelled, tmp_path):
    trainer, parts = recording_trainer(BUILDERS["SRL"](labelled), labelled, tmp_path, steps=3, log_every=100,
                                       progress=False)
    original = trainer._step

    def step(batch):  # stop after two steps, as a signal would
        out = original(batch)
        if len(parts) == 2:
            trainer.interrupt.request()
        return out

    trainer._step = step
    with trainer.interrupt:
        trainer._train_epoch()
    state = trainer.totals.state_dict()
    assert state["steps"] == 2 and all(isinstance(v, float) for v in state["sums"].values())
    assert state["sums"]["loss"] == float(parts[0]["loss"]) + float(parts[1]["loss"])


# ---------------------------------------------------------------- CUDA: the same, counted by CUDA itself
@pytest.mark.skipif(not torch.cuda.is_available(), reason="device-specific: counts CUDA syncs with "
                                                          "torch.cuda.set_sync_debug_mode")
@pytest.mark.parametrize("name", list(BUILDERS))
def test_on_cuda_every_method_syncs_at_most_once_per_step(name, labelled, semi, tmp_path, monkeypatch):
    data = data_for(name, labelled, semi)
    grouped, _ = run_counted(BUILDERS[name](data), data, tmp_path, monkeypatch, counter=CudaSyncCounter,
                             device="cuda")
    check_bound(grouped, CUDA_EXTRA[name], name)


def test_the_counter_sees_the_usual_syncs():
    """The mode flags what it should, and not ordinary device-side work."""
    phases = Phases()
    phases.phase = "test"
    x, mask = torch.arange(4.0), torch.tensor([True, False, True, False])
    with SyncCounter(phases):
        x.sum() + 1, torch.where(mask, x, 0.0), x[torch.tensor([0, 2])], x.masked_fill(mask, 0.0)  # no sync
        assert not phases.records
        float(x[0]), x[0].item(), bool(x[0] > 0), int(x[1]), x.tolist(), x.cpu()
        x[mask], torch.unique(x), torch.nonzero(x), torch.equal(x, x), f"{x[0]:.2f}", [0, 1][x.long()[1]]
        torch.linalg.svdvals(torch.eye(2)), torch.bincount(torch.tensor([1])), F.one_hot(torch.tensor([1]))
        x[mask] = 0.0
    names = [what for _, what, _ in phases.records]
    assert names == ["__float__", "item", "__bool__", "__int__", "tolist", "cpu", "__getitem__", "unique",
                     "nonzero", "equal", "__format__", "__index__", "linalg_svdvals", "bincount", "one_hot",
                     "__setitem__"], names
