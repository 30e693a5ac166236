"""The decoded-image cache: contents, reuse, staleness, atomic builds, bad images, workers.

Every test gets a private cache folder ($DMLRS_CACHE, tests/data/conftest.py).
"""
from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from dmlrs.data import build_data
from dmlrs.data import image_cache as C
from dmlrs.data.demo import render_demo_image
from dmlrs.data.fixtures import truncate_file, write_fake_dataset, write_image_folder
from dmlrs.data.gpu_augment import eval_images, finish_images
from dmlrs.data.images import UnreadableImageError, load_rgb
from dmlrs.data.scan import CorruptImagesError
from dmlrs.data.transforms import build_transforms
from dmlrs.errors import DmlrsError

REPO = Path(__file__).resolve().parents[2]
SIZE = 12


@pytest.fixture
def folder(tmp_path):
    return write_image_folder(tmp_path / "scenes", {"a": 5, "b": 4, "c": 3}, size=20, ext=".png")


def relpaths(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.glob("*/*.png"))


class CountingLoader:
    """load_rgb that counts its calls (in-process builds: workers=1)."""

    def __init__(self, fail_at: int | None = None, error=KeyboardInterrupt):
        self.calls, self.fail_at, self.error = 0, fail_at, error

    def __call__(self, path):
        self.calls += 1
        if self.fail_at is not None and self.calls == self.fail_at:
            raise self.error()
        return load_rgb(path)


def ensure(root: Path, loader=load_rgb, keys=None, size: int = SIZE):
    resize = build_transforms(size)[0].transforms[0]
    source = C.folder_source("scenes", root, relpaths(root) if keys is None else keys, loader)
    return C.ensure_image_cache(source, size, resize, workers=1, progress=False)


def cache_files() -> list[Path]:
    return sorted(C.images_dir().glob("*"))


def rows_of(images: C.CachedImages, root: Path) -> dict[str, np.ndarray]:
    return {rel: images(str(root / rel)).numpy().copy() for rel in relpaths(root)}


def set_mtime(path: Path, later_by_s: int = 10) -> None:
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + later_by_s * 10**9))


# ----------------------------------------------------------------------------- contents
def test_rows_hold_the_reference_resize_of_each_image(folder):
    images, report = ensure(folder)
    assert report.built and report.decoded == 12 and report.path.parent == C.images_dir()
    resize = build_transforms(SIZE)[0].transforms[0]
    for rel, row in rows_of(images, folder).items():
        expected = np.asarray(resize(load_rgb(folder / rel))).transpose(2, 0, 1)  # PIL's Resize((s, s))
        assert row.dtype == np.uint8 and np.array_equal(row, expected), rel


def test_eval_images_of_the_cache_equal_the_pil_eval_transform(folder):
    """(d) uint8 -> /255 -> normalise of the cached pixels = Resize + ToTensor + Normalize on PIL."""
    cached = build_data(str(folder), img_size=SIZE, input_pipeline="cached")
    pil = build_data(str(folder), img_size=SIZE, input_pipeline="pil")
    for split in ("train_eval", "val", "test"):
        ours, theirs = getattr(cached, split), getattr(pil, split)
        if not len(ours):
            continue
        u8 = torch.stack([ours[i]["image"] for i in range(len(ours))])
        assert u8.dtype == torch.uint8
        reference = torch.stack([theirs[i]["image"] for i in range(len(theirs))])
        assert torch.equal(eval_images(u8), reference) and torch.equal(finish_images(u8, "cpu"), reference)
    assert cached.input_pipeline == "cached" and pil.input_pipeline == "pil"
    assert set(cached.train[0]) == {"image", "augment", "label", "index"}
    assert cached.train[0]["augment"].shape == (10,)


def test_the_demo_goes_through_the_cache_too():
    bundle = build_data("demo", img_size=24, input_pipeline="cached")
    relpath = bundle.train.items[0][0]
    _, name, index = relpath.split("/")
    expected = np.asarray(render_demo_image(name, int(index), 24)).transpose(2, 0, 1)
    assert np.array_equal(bundle.train_eval[0]["image"].numpy(), expected)
    assert any(note.startswith("image cache") for note in bundle.notes)


# ----------------------------------------------------------------------------- reuse and staleness
def test_built_once_then_reused_without_decoding(folder):
    first = CountingLoader()
    _, report = ensure(folder, first)
    assert report.built and first.calls == 12
    again = CountingLoader()
    images, report = ensure(folder, again)
    assert not report.built and again.calls == 0 and "reused" in report.note()
    assert len(cache_files()) == 1 and len(images) == 12


def test_runs_with_other_seeds_share_the_cache(folder):
    first = build_data(str(folder), img_size=SIZE, seed=1, input_pipeline="cached")
    second = build_data(str(folder), img_size=SIZE, seed=2, input_pipeline="cached")
    assert first.manifest_hash != second.manifest_hash
    assert [n for n in second.notes if n.startswith("image cache")][0].endswith("(reused)")
    assert len(cache_files()) == 1


def test_a_changed_file_is_decoded_again_and_only_it(folder):
    _, _ = ensure(folder)
    changed = folder / "b" / "b_001.png"
    Image.new("RGB", (20, 20), (200, 10, 10)).save(changed)
    set_mtime(changed)
    loader = CountingLoader()
    images, report = ensure(folder, loader)
    assert report.built and loader.calls == 1 and (report.decoded, report.reused) == (1, 11)
    assert np.array_equal(images(str(changed))[:, 0, 0].numpy(), [200, 10, 10])
    assert len(cache_files()) == 1
    # same size and content, only a new mtime: still not trusted
    set_mtime(changed)
    assert ensure(folder)[1].built


def test_added_and_removed_files_rebuild_reusing_the_other_rows(folder):
    old, _ = ensure(folder)
    old.array()  # opened (as build_data does)
    Image.new("RGB", (20, 20), (1, 2, 3)).save(folder / "c" / "c_new.png")
    loader = CountingLoader()
    images, report = ensure(folder, loader)
    assert report.built and (report.decoded, report.reused) == (1, 12) and loader.calls == 1
    assert [p.name for p in cache_files()] == [report.path.name]  # the stale list's file is deleted
    assert np.array_equal(images(str(folder / "c" / "c_new.png"))[:, 0, 0].numpy(), [1, 2, 3])
    (folder / "a" / "a_000.png").unlink()
    images, report = ensure(folder, loader)
    assert report.built and (report.decoded, report.reused) == (0, 12) and len(images) == 12
    assert [p.name for p in cache_files()] == [report.path.name]
    # a process that opened the old file before keeps reading it (the inode lives on)
    assert old(str(folder / "a" / "a_000.png")).shape == (3, SIZE, SIZE)


def test_a_damaged_cache_file_is_rebuilt(folder):
    _, report = ensure(folder)
    with open(report.path, "r+b") as handle:
        handle.truncate(report.path.stat().st_size - 5)  # the trailer is gone
    assert C.read_header(report.path) is None
    loader = CountingLoader()
    _, again = ensure(folder, loader)
    assert again.built and loader.calls == 12 and C.read_header(again.path) is not None


# ----------------------------------------------------------------------------- atomic builds
def test_an_exception_during_the_build_leaves_no_file(folder):
    """(e) An interrupted build (KeyboardInterrupt at the 5th image) leaves neither the cache nor its
    temporary file; the next build starts from scratch and succeeds."""
    with pytest.raises(KeyboardInterrupt):
        ensure(folder, CountingLoader(fail_at=5))
    assert cache_files() == [] and not list(C.images_dir().glob(".*"))
    images, report = ensure(folder)
    assert report.built and len(images) == 12


KILLED_BUILD = """
import sys, time
from pathlib import Path
from dmlrs.data import image_cache as C
from dmlrs.data.images import load_rgb
from dmlrs.data.transforms import build_transforms

root = Path(sys.argv[1])
def slow(path):
    time.sleep(0.3)
    return load_rgb(path)
keys = sorted(str(p.relative_to(root)) for p in root.glob("*/*.png"))
C.ensure_image_cache(C.folder_source("scenes", root, keys, slow), 12, build_transforms(12)[0].transforms[0],
                     workers=1, progress=False)
"""


def test_a_kill_during_the_build_leaves_only_a_temporary_file_that_is_never_used(folder):
    """(e) A real SIGKILL in the middle of a build: no cache file under the target's name, only a
    ``.tmp`` that no reader opens; the next build deletes it (its process is gone) and builds."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen([sys.executable, "-c", KILLED_BUILD, str(folder)], env=env)
    deadline = time.time() + 60
    while time.time() < deadline and not list(C.images_dir().glob(".*.tmp")):
        time.sleep(0.05)
    time.sleep(0.4)  # some rows written
    process.send_signal(signal.SIGKILL)
    process.wait()
    leftovers = list(C.images_dir().glob(".*.tmp"))
    assert len(leftovers) == 1 and not list(C.images_dir().glob("*.u8"))
    assert C.read_header(leftovers[0]) is None  # not a complete cache file either
    images, report = ensure(folder)
    assert report.built and not leftovers[0].exists() and len(images) == 12


def test_temporaries_of_live_processes_are_left_alone(folder):
    live = C.images_dir() / f".x.u8.{C._host()}.{os.getpid()}.abcd.tmp"
    live.parent.mkdir(parents=True, exist_ok=True)
    live.write_bytes(b"partial")
    ensure(folder)
    assert live.exists()


# ----------------------------------------------------------------------------- bad images
def test_an_image_that_fails_to_decode_stops_the_run_before_training(tmp_path):
    data = write_fake_dataset(tmp_path / "d", "UCMD", layout="direct", per_class=4, size=48, ext=".jpg")
    plain = build_data("UCMD", data, img_size=16)
    relpath = plain.manifest["train"][1][0]
    truncate_file(data / relpath)  # the header still opens: only decoding finds it
    with pytest.raises(CorruptImagesError) as info:
        build_data("UCMD", data, img_size=16, input_pipeline="cached")
    message = str(info.value)
    assert relpath in message and "image file is truncated" in message and "--skip-corrupt" in message
    assert "\n" not in message


def test_with_skip_corrupt_an_undecodable_image_is_replaced_and_counted(tmp_path):
    data = write_fake_dataset(tmp_path / "d", "UCMD", layout="direct", per_class=4, size=48, ext=".jpg")
    relpath = build_data("UCMD", data, img_size=16).manifest["train"][1][0]
    truncate_file(data / relpath)
    bundle = build_data("UCMD", data, img_size=16, skip_corrupt=True, input_pipeline="cached")
    assert any("could not be decoded when caching" in w and relpath in w for w in bundle.warnings)
    assert bundle.train[1]["replaced"] is True and bundle.train[1]["index"] == 1
    assert bundle.train[1]["image"].dtype == torch.uint8
    assert all(bundle.val[i]["replaced"] is False for i in range(len(bundle.val)))


def test_a_bad_row_raises_the_datasets_unreadable_image_error(folder):
    images, _ = ensure(folder, keys=relpaths(folder) + ["a/missing.png"])
    with pytest.raises(UnreadableImageError, match="cannot read image .*missing.png"):
        images(str(folder / "a" / "missing.png"))


def test_not_enough_disk_space_is_one_clear_error(folder, monkeypatch):
    class Usage:
        free = 1000

    monkeypatch.setattr(C.shutil, "disk_usage", lambda path: Usage())
    with pytest.raises(DmlrsError, match="--input-pipeline pil"):
        ensure(folder)


def test_a_failed_write_is_one_clear_error_and_leaves_nothing(folder, monkeypatch):
    import errno

    def replace(src, dst):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(C.os, "replace", replace)
    with pytest.raises(DmlrsError) as info:
        ensure(folder)
    message = str(info.value)
    assert "could not write the image cache" in message and "No space left on device" in message
    assert "$DMLRS_CACHE" in message and "--input-pipeline pil" in message and "\n" not in message
    assert not list(C.images_dir().glob("*")) and not list(C.images_dir().glob(".*"))


# ----------------------------------------------------------------------------- processes
def test_the_loader_pickles_without_its_memory_map_and_reads_in_workers(folder):
    images, _ = ensure(folder)
    key = str(folder / "a" / "a_000.png")
    first = images(key)
    copy = pickle.loads(pickle.dumps(images))
    assert copy._array is None and torch.equal(copy(key), first)
    source = C.folder_source("scenes", folder, relpaths(folder), load_rgb)  # spawned build workers get it
    again = pickle.loads(pickle.dumps(source))
    assert again.stat("a/a_000.png") == source.stat("a/a_000.png") and again.location("x") == str(folder / "x")

    bundle = build_data(str(folder), img_size=SIZE, input_pipeline="cached")
    in_process = [bundle.val[i]["image"] for i in range(len(bundle.val))] + \
        [bundle.test[i]["image"] for i in range(len(bundle.test))]
    for dataset in (bundle.val, bundle.test):
        for workers in (0, 2):
            loaded = torch.cat([b["image"] for b in DataLoader(dataset, batch_size=2, num_workers=workers)])
            assert loaded.dtype == torch.uint8 and len(loaded) == len(dataset)
    assert all(t.dtype == torch.uint8 for t in in_process)


def test_parallel_build_equals_the_in_process_build(tmp_path):
    root = write_image_folder(tmp_path / "many", {"x": 40, "y": 40}, size=18, ext=".png")
    keys = sorted(str(p.relative_to(root)) for p in root.glob("*/*.png"))
    resize = build_transforms(SIZE)[0].transforms[0]
    source = C.folder_source("many", root, keys, load_rgb)
    parallel, report = C.ensure_image_cache(source, SIZE, resize, workers=2, progress=False)
    assert report.built and report.decoded == 80
    for key in keys[::7]:
        expected = np.asarray(resize(load_rgb(root / key))).transpose(2, 0, 1)
        assert np.array_equal(parallel(str(root / key)).numpy(), expected)


def test_a_bad_input_pipeline_name_is_a_user_error():
    with pytest.raises(DmlrsError, match="--input-pipeline"):
        build_data("demo", input_pipeline="gpu")
