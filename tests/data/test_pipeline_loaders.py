"""Loaders of the cached pipeline: persistent workers, where batches are finished, seeding.

(Tests of ``dmlrs/engine/loaders.py`` behaviour that the input pipeline relies on.)
"""
from __future__ import annotations

import gc
import os

import pytest
import torch

from dmlrs.data import build_data
from dmlrs.data import gpu_augment as G
from dmlrs.data.fixtures import write_image_folder
from dmlrs.engine import loaders as L
from dmlrs.engine.loaders import ShuffledBatches, eval_loader, release_loaders, train_loader
from dmlrs.engine.seeding import REFRESH_STREAM

SIZE = 16


@pytest.fixture
def bundle(tmp_path):
    folder = write_image_folder(tmp_path / "scenes", {"a": 12, "b": 12, "c": 12}, size=20, ext=".png")
    data = build_data(str(folder), img_size=SIZE, input_pipeline="cached")
    yield data
    release_loaders()


class Pids(torch.utils.data.Dataset):
    """Each item says which process loaded it, plus a seeded random draw."""

    def __len__(self):
        return 10

    def __getitem__(self, i):
        return {"pid": os.getpid(), "draw": torch.rand(1), "index": i}


def finished(loader, device="cpu"):
    images = [G.finish_images(batch["image"], device, batch.get("augment")) for batch in loader]
    return torch.cat(images)


def test_workers_persist_across_epochs_and_are_dropped_with_their_dataset():
    data = Pids()
    first = list(train_loader(data, 4, seed=1, num_workers=2))
    second_run = train_loader(data, 4, seed=2, num_workers=2)
    second = list(second_run)
    assert {int(p) for b in first for p in b["pid"]} == {int(p) for b in second for p in b["pid"]}
    assert {int(p) for b in first for p in b["pid"]} - {os.getpid()}  # loaded in worker processes
    assert second_run.loader is train_loader(data, 4, seed=3, num_workers=2).loader
    # each call still gets its own epoch: batches and draws are those of a fresh loader
    assert torch.equal(torch.cat([b["draw"] for b in second]),
                       torch.cat([b["draw"] for b in train_loader(data, 4, seed=2, num_workers=0)]))
    assert torch.equal(torch.cat([b["index"] for b in second]),
                       torch.cat([torch.tensor(b) for b in ShuffledBatches(10, 4, torch.Generator().manual_seed(2))]))
    evaluation = eval_loader(data, 3, num_workers=2)
    assert evaluation.loader is not second_run.loader  # one loader per kind
    assert torch.equal(torch.cat([b["index"] for b in evaluation]), torch.arange(10))
    import weakref

    old_loader = weakref.ref(second_run.loader)
    del data, first, second, second_run, evaluation
    gc.collect()
    fresh = Pids()
    train_loader(fresh, 4, seed=1, num_workers=2)  # any later call prunes loaders of dead datasets
    gc.collect()
    assert old_loader() is None  # dropped: its worker processes exit with it
    assert all(ref() is not None for ref, _, _ in L._PERSISTENT.values())
    release_loaders()
    assert not L._PERSISTENT


def test_a_resumed_epoch_skips_batches_on_a_persistent_loader():
    data = Pids()
    whole = [b["index"] for b in train_loader(data, 3, seed=5, num_workers=2)]
    rest = [b["index"] for b in train_loader(data, 3, seed=5, num_workers=2, skip_batches=2)]
    assert len(rest) == len(whole) - 2 and all(torch.equal(a, b) for a, b in zip(rest, whole[2:]))
    release_loaders()


@pytest.mark.parametrize("workers", [0, 2])
def test_cached_batches_are_the_same_wherever_they_are_finished(bundle, workers):
    """CPU training: workers finish their batches (float out); without workers the engine does;
    pinned (CUDA) loaders leave uint8 + a plan for the device. Same values every way."""
    reference = finished(train_loader(bundle.train, 8, seed=4, num_workers=0))
    loader = train_loader(bundle.train, 8, seed=4, num_workers=workers)
    batches = list(loader)
    assert all(b["image"].dtype == (torch.float32 if workers else torch.uint8) for b in batches)
    if not workers:
        assert all(isinstance(getattr(b["image"], G.PARAMS_ATTRIBUTE), G.AugmentPlan) for b in batches)
    assert torch.equal(torch.cat([G.finish_images(b["image"], "cpu", b.get("augment")) for b in batches]),
                       reference)
    for split in (bundle.val, bundle.train_eval):
        plain = finished(eval_loader(split, 5, num_workers=0))
        assert torch.equal(finished(eval_loader(split, 5, num_workers=workers)), plain)


def test_the_refresh_pass_augments_training_images_under_its_seeds(bundle):
    """t-RNSL's refresh embeds augmented training images: the same for any worker count, different
    from the un-augmented pass, and equal to augmenting each image under its draw seed."""
    from dmlrs.engine.loaders import SeededBatches
    from dmlrs.engine.seeding import draw_seed, isolated_rng

    refresh = finished(eval_loader(bundle.train, 7, num_workers=2, seed=9))
    assert torch.equal(refresh, finished(eval_loader(bundle.train, 5, num_workers=0, seed=9)))
    plain = finished(eval_loader(bundle.train_eval, 7, num_workers=0))
    assert not torch.equal(refresh, plain)
    rows = []
    for i in range(len(bundle.train)):
        with isolated_rng(draw_seed(9, REFRESH_STREAM, i)):
            sample = bundle.train[i]
        rows.append(G.augment_batch(sample["image"][None], sample["augment"][None]))
    assert torch.equal(refresh, torch.cat(rows))
    assert SeededBatches  # (the loader pairs index i with draw_seed(seed, REFRESH_STREAM, i))


def test_pinned_loaders_leave_finishing_to_the_device_with_a_plan(bundle, monkeypatch):
    """With pin_memory (CUDA training) workers return uint8 images and the main process attaches
    the plan, pinned too, so finishing on the GPU reads nothing back (emulated without CUDA)."""
    pinned = []
    monkeypatch.setattr(G.AugmentPlan, "pin_memory", lambda self: pinned.append(self) or self)
    keys = [[(0, 1), (1, 2), (2, 3)]]
    batch = next(iter(torch.utils.data.DataLoader(L.SeededDataset(bundle.train), batch_sampler=keys)))
    G.attach_params(batch, pin_memory=True)
    assert pinned and batch["image"].dtype == torch.uint8
    assert torch.equal(G.finish_images(batch["image"], "cpu"),
                       G.augment_batch(batch["image"], batch["augment"], schedule="slot"))
