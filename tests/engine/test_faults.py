"""Kill anywhere, resume exactly: faults injected into real runs.

* Every entry script is run uninterrupted, then again as a subprocess that is killed with a real
  SIGKILL (``DMLRS_KILL_AT``, see ``dmlrs/engine/faults.py``) at seeded random moments -- after
  an optimizer step, in the middle of validation, inside a checkpoint write between the
  temporary file and its rename -- and continued with ``--resume auto`` until it finishes. The
  test report and every metrics.jsonl line (minus throughput) must equal the uninterrupted run's.
  The kill plan is drawn from ``DMLRS_FAULT_SEED`` (default below) and printed on failure.
* Divergence: a NaN loss or gradient stops the run with one error naming epoch, step and parts,
  keeping the last good checkpoint; ``--skip-nonfinite`` skips such steps and counts them.
* A full disk while writing a checkpoint: one error line, previous checkpoint intact, no
  temporary file left.
* ``--resume auto`` finds the run again after the dataset moved and with other runtime flags.
"""
from __future__ import annotations

import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys

import pytest
import torch

from dmlrs.engine import run_folder
from dmlrs.engine.checkpoint import load_checkpoint
from dmlrs.engine.loaders import SeededBatches, SkipFirst, eval_loader, train_loader
from dmlrs.engine.run_log import RunLog
from dmlrs.engine.seeding import REFRESH_STREAM, TRAIN_STREAM, UNLABELLED_STREAM, draw_seed
from tests.engine.scripts import FAST, REPO, SCRIPTS, only_run_dir, read_json, run_script, tiny_folder

FAULT_SEED = int(os.environ.get("DMLRS_FAULT_SEED", "20261127"))
EPOCHS, STEPS = 3, 2  # 6 optimizer steps; last.pt after every step (--save-every-steps 1)

#: per script: method flags and the loader processes of the killed runs (the reference uses 0)
CASES = {
    "SNCA_CE": ([], 0),
    "SNCA_CE_MC": ([], 0),
    # workers 2 vs 0: the augmentation of both streams (labelled + unlabelled) must not depend on it
    "MNCE_BNM": (["--train_per", "0.5"], 2),
    "CDNE": (["--memory", "momentum"], 0),
    # weights refreshed before epochs 2 and 3 (1-based): kills land inside pruning epochs
    "tRNSL": (["--noiseType", "symmetric", "--noiseRate", "0.2", "--start_prune", "2", "--prune-every", "1"], 0),
    "SRL": (["--classes-per-batch", "2", "--images-per-class", "4"], 0),
}
assert set(CASES) == set(SCRIPTS)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    return tiny_folder(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def reference(scenes, tmp_path_factory):
    """``reference(name)``: the run folder of the uninterrupted run of a script (made once)."""
    made = {}

    def get(name):
        if name not in made:
            out = tmp_path_factory.mktemp(f"reference-{name}")
            assert run_script(name, argv_for(scenes, out, *CASES[name][0])) == 0
            made[name] = only_run_dir(out)
        return made[name]

    return get


def argv_for(scenes, out, *extra):
    return ["--dataset", str(scenes), "--epochs", str(EPOCHS), "--steps-per-epoch", str(STEPS), "--out", str(out),
            "--deterministic", "--lr-step", "1", "--save-every-steps", "1", *FAST, *extra]


def rows(run_dir):
    """metrics.jsonl without the throughput (the only value that may differ)."""
    path = run_dir / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.is_file() else []
    return [{k: v for k, v in json.loads(line).items() if k != "images_per_second"} for line in lines]


def assert_same_run(run_dir, reference_dir, context):
    assert read_json(run_dir / "test_metrics.json") == read_json(reference_dir / "test_metrics.json"), context
    assert rows(run_dir) == rows(reference_dir), context
    leftovers = [p.name for p in run_dir.rglob("*.tmp")]
    assert not leftovers, (context, leftovers)


def kill_plan(name: str, index: int) -> list[tuple[str, int]]:
    """Two kills: after a random optimizer step (t-RNSL: the 2nd step of a pruning epoch, so the
    resume lands inside it), then in validation or inside a checkpoint write (alternating over
    the scripts so both are always covered), at a random occurrence."""
    rng = random.Random(f"{FAULT_SEED}-{name}")
    if name == "tRNSL":
        first = ("step", rng.choice([2 * STEPS, 3 * STEPS]))
    else:
        first = ("step", rng.randint(2, EPOCHS * STEPS - 1))  # from step 2 on there is a last.pt
    second = ("validate", 1) if index % 2 == 0 else ("save", rng.randint(1, 2))
    return [first, second]


def run_killed(name, argv, point, workers):
    env = {**os.environ, "DMLRS_KILL_AT": f"{point[0]}:{point[1]}", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(REPO / f"train_{name}" / "main.py"), *argv, "--num_workers",
                           str(workers)], env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("name", SCRIPTS)
def test_kill_anywhere_then_resume_auto_ends_like_an_uninterrupted_run(name, scenes, reference, tmp_path, capsys):
    extra, workers = CASES[name]
    plan = kill_plan(name, SCRIPTS.index(name))
    context = f"{name}: kills {plan} (DMLRS_FAULT_SEED={FAULT_SEED}), --num_workers {workers}"

    out = tmp_path / "killed"
    for number, point in enumerate(plan):
        argv = argv_for(scenes, out, *extra, *(["--resume", "auto"] if number else []))
        result = run_killed(name, argv, point, workers)
        assert result.returncode == -signal.SIGKILL, (context, point, result.returncode, result.stderr[-2000:])
    capsys.readouterr()
    # the last resume runs to the end, in-process (no kill: it saves a Python start-up)
    assert run_script(name, argv_for(scenes, out, *extra, "--resume", "auto", "--num_workers", str(workers))) == 0, \
        context
    assert "resumed from" in capsys.readouterr().out, context
    assert_same_run(only_run_dir(out), reference(name), context)


class SimulatedKill(BaseException):
    """Stands in for SIGKILL in-process (nothing catches a BaseException on its way out)."""


def test_kills_between_the_epoch_end_writes_are_repaired_on_resume(scenes, reference, tmp_path, monkeypatch):
    """Epoch end writes last.pt, then best.pt, then the metrics.jsonl line; a kill between them
    must neither lose best.pt nor the line (nor duplicate it)."""
    from dmlrs.engine import trainer as trainer_module

    out, real_save = tmp_path / "killed", trainer_module.save_checkpoint

    def save(state, path):  # epoch 1 always improves on -inf, so it writes best.pt
        if path.name == "best.pt" and state["epoch"] == 1:
            raise SimulatedKill
        real_save(state, path)

    real_log = RunLog.log_epoch

    def log_epoch(self, epoch, record):  # the resume first restores epoch 1's line (killed before it)
        if epoch == 2:
            raise SimulatedKill
        real_log(self, epoch, record)

    for where, patch_target in (("before best.pt", (trainer_module, "save_checkpoint", save)),
                                ("before the metrics line", (RunLog, "log_epoch", log_epoch))):
        with monkeypatch.context() as patch:
            patch.setattr(*patch_target)
            with pytest.raises(SimulatedKill):
                run_script("SNCA_CE", argv_for(scenes, out, *(["--resume", "auto"] if where != "before best.pt"
                                                              else [])))
        run_dir = only_run_dir(out)
        epoch = load_checkpoint(run_dir / "checkpoints" / "last.pt")["epoch"]
        assert epoch == 1 + (where != "before best.pt"), where
        assert len(rows(run_dir)) == epoch - 1, where  # the kill came before the line
        if where == "before best.pt":
            assert not (run_dir / "checkpoints" / "best.pt").exists()
    assert run_script("SNCA_CE", argv_for(scenes, out, "--resume", "auto")) == 0
    assert load_checkpoint(run_dir / "checkpoints" / "best.pt")["epoch"] == \
        load_checkpoint(reference("SNCA_CE") / "checkpoints" / "best.pt")["epoch"]
    assert_same_run(run_dir, reference("SNCA_CE"), "kills between the epoch-end writes")


# ---------------------------------------------------------------- divergence
def poison(monkeypatch, method_class, calls, *, gradient=False):
    """Make ``method_class.training_step`` return a NaN loss (or a loss whose gradient is NaN) at
    the given 1-based calls."""
    original, count = method_class.training_step, {"n": 0}

    class NanGradient(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.clone()

        @staticmethod
        def backward(ctx, grad):
            return grad * float("nan")

    def training_step(self, batch):
        out = original(self, batch)
        count["n"] += 1
        if count["n"] in calls:
            if gradient:
                out["loss"] = NanGradient.apply(out["loss"])
            else:
                out["loss"] = out["loss"] * float("nan")
                out["snca"] = out["snca"] * float("nan")
        return out

    monkeypatch.setattr(method_class, "training_step", training_step)


def finite_state(path):
    state = load_checkpoint(path)
    tensors = [t for t in state["method"].values() if torch.is_tensor(t) and t.is_floating_point()]
    return state, all(bool(torch.isfinite(t).all()) for t in tensors)


@pytest.mark.parametrize("gradient", [False, True], ids=["nan-loss", "nan-gradient"])
def test_a_non_finite_step_stops_naming_epoch_step_and_part_and_keeps_last_pt(gradient, scenes, tmp_path,
                                                                             monkeypatch, capsys):
    from dmlrs.methods.snca_ce import SNCACE

    poison(monkeypatch, SNCACE, {4}, gradient=gradient)  # epoch 2, step 2
    out = tmp_path / "runs"
    assert run_script("SNCA_CE", argv_for(scenes, out)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: training diverged at epoch 2, step 2") and "\n" not in err, err
    assert ("gradient" in err) if gradient else ("snca=nan" in err and "loss=nan" in err), err
    assert "last.pt (epoch 2 after step 1) is kept" in err and "--skip-nonfinite" in err, err
    state, finite = finite_state(only_run_dir(out) / "checkpoints" / "last.pt")
    assert (state["epoch"], state["step_in_epoch"]) == (1, 1) and finite


def test_skip_nonfinite_skips_and_counts_the_steps_then_stops_past_the_budget(scenes, tmp_path, monkeypatch,
                                                                              capsys):
    from dmlrs.methods.snca_ce import SNCACE

    writes = {"n": 0}
    original_write = SNCACE.after_optimizer_step

    def after_optimizer_step(self):
        writes["n"] += 1
        original_write(self)

    with monkeypatch.context() as patch:
        poison(patch, SNCACE, {3})
        patch.setattr(SNCACE, "after_optimizer_step", after_optimizer_step)
        out = tmp_path / "skip"
        assert run_script("SNCA_CE", argv_for(scenes, out, "--skip-nonfinite", "1")) == 0
    assert writes["n"] == EPOCHS * STEPS - 1  # no memory write for the skipped step
    assert [row["skipped_nonfinite"] for row in rows(only_run_dir(out))] == [0, 1, 0]
    assert "skipped the step at epoch 2, step 1" in capsys.readouterr().out

    with monkeypatch.context() as patch:
        poison(patch, SNCACE, {2, 5})
        out = tmp_path / "budget"
        assert run_script("SNCA_CE", argv_for(scenes, out, "--skip-nonfinite", "1")) == 2
    err = capsys.readouterr().err
    assert "diverged at epoch 3, step 1" in err and "1 such step(s) were skipped already" in err, err
    state, finite = finite_state(only_run_dir(out) / "checkpoints" / "last.pt")
    assert (state["epoch"], state["step_in_epoch"], state["skipped_nonfinite"]) == (2, 0, 1) and finite


# ---------------------------------------------------------------- disk
def test_a_full_disk_while_checkpointing_is_one_error_and_keeps_the_previous_checkpoint(scenes, tmp_path,
                                                                                       monkeypatch, capsys):
    real_save, calls = torch.save, {"n": 0}

    def save(obj, handle, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:  # last.pt and best.pt after epoch 1, then last.pt after epoch 2
            handle.write(b"partial")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, handle, *args, **kwargs)

    out = tmp_path / "runs"
    with monkeypatch.context() as patch:
        patch.setattr(torch, "save", save)
        assert run_script("SNCA_CE", argv_for(scenes, out, "--save-every-steps", "0")) == 2
    err = capsys.readouterr().err.strip()
    run_dir = only_run_dir(out)
    last = run_dir / "checkpoints" / "last.pt"
    assert err.count("\n") == 0 and err.startswith(f"error: could not write checkpoint {last}: "), err
    assert "No space left on device" in err and "previous last.pt is intact" in err, err
    assert load_checkpoint(last)["epoch"] == 1
    assert not [p for p in run_dir.rglob("*") if p.name.endswith(".tmp")]
    # space freed: the run continues from the intact checkpoint
    assert run_script("SNCA_CE", argv_for(scenes, out, "--save-every-steps", "0", "--resume", "auto")) == 0
    assert [row["epoch"] for row in rows(run_dir)] == [1, 2, 3]


# ---------------------------------------------------------------- --resume auto
def test_resume_auto_finds_the_run_after_the_data_moved_and_runtime_flags_changed(tmp_path, monkeypatch):
    from dmlrs.engine.trainer import Trainer

    first_home = tmp_path / "a"
    scenes = tiny_folder(first_home)
    base = ["--dataset", scenes.name, "--epochs", "2", "--steps-per-epoch", "1", "--out", str(tmp_path / "runs"),
            "--deterministic", *[flag for flag in FAST if flag != "--no-tensorboard"]]
    original_init = Trainer.__init__

    def init(self, *args, **kwargs):  # stop cleanly after the first epoch (as Ctrl-C would)
        original_init(self, *args, **kwargs)
        self.epoch_end_callbacks.append(lambda t: t.interrupt.request())

    with monkeypatch.context() as patch:
        patch.setattr(Trainer, "__init__", init)
        assert run_script("SNCA_CE", [*base, "--data", str(first_home)]) == 130
    run_dir = only_run_dir(tmp_path / "runs")
    moved = tmp_path / "b"
    shutil.move(str(first_home), str(moved))
    again = [*base, "--data", str(moved), "--no-tensorboard", "--save-every-steps", "7", "--num_workers", "1",
             "--resume", "auto"]
    assert run_script("SNCA_CE", again) == 0
    assert only_run_dir(tmp_path / "runs") == run_dir
    assert [row["epoch"] for row in rows(run_dir)] == [1, 2]


def test_the_fingerprint_ignores_runtime_settings_only():
    base = {"lr": 0.1, "dataset": "AID", "data": "/datasets", "amp": False, "deterministic": True}
    runtime = {"tensorboard": False, "progress": False, "data": "/elsewhere", "num_workers": 3, "device": "cpu",
               "save_every_steps": 9, "out": "x", "resume": "auto", "evaluate": None, "epochs": 7,
               "eval_every": 2, "skip_nonfinite": 4}
    assert run_folder.fingerprint(base) == run_folder.fingerprint({**base, **runtime})
    for key, value in (("amp", True), ("deterministic", False), ("lr", 0.2)):
        assert run_folder.fingerprint(base) != run_folder.fingerprint({**base, key: value}), key


def test_a_dataset_given_as_a_path_is_recognised_by_its_folder_name():
    from dmlrs.cli import _fingerprint_settings

    here = _fingerprint_settings({"dataset": "/old/place/scenes", "lr": 0.1})
    assert run_folder.fingerprint(here) == run_folder.fingerprint(_fingerprint_settings(
        {"dataset": "/new/place/scenes", "lr": 0.1}))


# ---------------------------------------------------------------- pieces
class RandomImages(torch.utils.data.Dataset):
    """Each item is a fresh random draw from torch, numpy and random (an augmentation stand-in)."""

    def __len__(self):
        return 11

    def __getitem__(self, i):
        import numpy as np

        return {"image": torch.rand(3) + float(np.random.rand()) + random.random(), "label": i % 2, "index": i}


def images(loader):
    return torch.cat([batch["image"] for batch in loader])


def test_augmentation_is_a_function_of_the_epoch_seed_and_position_only():
    data = RandomImages()
    torch.manual_seed(0)
    plain = images(train_loader(data, 4, seed=5, num_workers=0))
    torch.manual_seed(1)  # the global RNG plays no part, nor does it move
    state = torch.get_rng_state()
    assert torch.equal(images(train_loader(data, 4, seed=5, num_workers=2)), plain)
    assert torch.equal(torch.get_rng_state(), state)
    # resuming after the first batch replays the rest of the epoch exactly
    assert torch.equal(images(train_loader(data, 4, seed=5, num_workers=0, skip_batches=1)), plain[4:])
    assert not torch.equal(images(train_loader(data, 4, seed=6, num_workers=0)), plain)
    refresh = images(eval_loader(data, 4, num_workers=2, seed=5))
    assert torch.equal(refresh, images(eval_loader(data, 3, num_workers=0, seed=5)))


def test_draw_seeds_are_distinct_across_streams_and_positions_and_skips_keep_them():
    seeds = {draw_seed(123, stream, p) for stream in (TRAIN_STREAM, UNLABELLED_STREAM, REFRESH_STREAM)
             for p in range(5000)}
    assert len(seeds) == 15000 and all(0 <= s < 2**32 for s in seeds)
    batches = [[3, 1], [0, 2], [4]]
    whole = list(SeededBatches(batches, 9, TRAIN_STREAM))
    assert whole[1] == [(0, draw_seed(9, TRAIN_STREAM, 2)), (2, draw_seed(9, TRAIN_STREAM, 3))]
    assert list(SkipFirst(SeededBatches(batches, 9, TRAIN_STREAM), 2)) == whole[2:]


def test_every_epoch_hook_leaves_its_effect_in_the_state_dict():
    """The trainer runs on_epoch_start once per epoch and not again on a resume inside the epoch,
    so what a hook changes must travel in state_dict()."""
    from dmlrs.methods.snca_ce import SNCACE
    from dmlrs.methods.base import EpochContext
    from dmlrs.methods.trnsl import TRNSL
    from dmlrs.models import build_model

    def model():
        torch.manual_seed(0)
        return build_model("resnet18", 8, weights="none", num_classes=3)

    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    snca, fresh = SNCACE(model(), labels), SNCACE(model(), labels)
    snca.on_epoch_start(EpochContext(120, None))
    fresh.load_state_dict(snca.state_dict())
    assert fresh.scalars() == snca.scalars() == {"memory_momentum": 0.9}

    embeddings = torch.nn.functional.normalize(torch.randn(6, 8), dim=1)
    extract = lambda dataset: (embeddings, labels, torch.arange(6))  # noqa: E731
    trnsl, fresh = TRNSL(model(), 3, list(range(6)), start_prune=1, prune_every=1), \
        TRNSL(model(), 3, list(range(6)), start_prune=1, prune_every=1)
    trnsl.on_epoch_start(EpochContext(0, extract))
    assert trnsl.scalars()["kept_fraction"] < 1
    fresh.load_state_dict(trnsl.state_dict())
    assert fresh.scalars() == trnsl.scalars()


def test_reconcile_drops_later_and_torn_lines_and_restores_the_missing_one(tmp_path):
    log = RunLog(tmp_path, tensorboard=False)
    log.path.write_text('{"epoch": 1, "a": 1}\n{"epoch": 2, "a": 2}\n{"epoch": 3, "a"')
    log.reconcile(1, {"a": 1})
    assert log.path.read_text() == '{"a": 1, "epoch": 1}\n'
    log.reconcile(2, {"a": 2.5})
    assert [json.loads(line) for line in log.path.read_text().splitlines()] == [{"epoch": 1, "a": 1},
                                                                                 {"epoch": 2, "a": 2.5}]


def test_images_replaced_by_skip_corrupt_are_counted_per_epoch(scenes, reference, tmp_path, monkeypatch):
    """The data layer marks a sample it replaced (``--skip-corrupt``) with ``"replaced": True``."""
    from dmlrs.data.dataset import SceneDataset

    plain = rows(reference("SNCA_CE"))  # (made before the patch)
    original = SceneDataset.__getitem__

    def getitem(self, i):
        return {**original(self, i), "replaced": True}

    monkeypatch.setattr(SceneDataset, "__getitem__", getitem)
    out = tmp_path / "runs"
    assert run_script("SNCA_CE", argv_for(scenes, out, "--epochs", "1")) == 0
    assert [row["replaced_images"] for row in rows(only_run_dir(out))] == [STEPS * 8]  # every image (-b 8)
    assert all("replaced_images" not in row for row in plain)
