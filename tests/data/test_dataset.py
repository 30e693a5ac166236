"""SceneDataset and unreadable images during training: one DmlrsError naming the file (also from a
DataLoader worker), or with skip_corrupt the next readable image of the same class, flagged
``"replaced"``; and a reused split.json refused when the files on disk changed."""
import numpy as np
import pytest
from PIL import Image
from torch.utils.data import DataLoader

from dmlrs.data import build_data, save_manifest
from dmlrs.data.dataset import SceneDataset
from dmlrs.data.fixtures import truncate_file, write_fake_dataset, write_image_folder
from dmlrs.data.images import UnreadableImageError
from dmlrs.errors import strip_worker_traceback
from dmlrs.data.scan import CorruptImagesError
from dmlrs.data.transforms import build_transforms
from dmlrs.errors import DmlrsError


@pytest.fixture
def folder(tmp_path):
    """Classes a (5 images) and b (3 images), 48 x 48 JPEGs, listed interleaved: a0 b0 a1 b1 a2 b2 a3 a4."""
    root = write_image_folder(tmp_path / "f", {"a": 5, "b": 3}, size=48, ext=".jpg")
    order = ["a/a_000", "b/b_000", "a/a_001", "b/b_001", "a/a_002", "b/b_002", "a/a_003", "a/a_004"]
    return root, [(name + ".jpg", 0 if name.startswith("a") else 1) for name in order]


def _pixels(root, relpath):
    with Image.open(root / relpath) as image:
        return np.asarray(image.convert("RGB"))


def test_unreadable_image_raises_one_message_naming_the_file(folder):
    root, items = folder
    truncate_file(root / "a" / "a_001.jpg")
    ds = SceneDataset(root, items, None, check_command="python -m dmlrs.data --dataset /x/f")
    assert ds[1]["label"] == 1 and "replaced" not in ds[1]
    with pytest.raises(DmlrsError) as info:
        ds[2]
    message = str(info.value)
    assert isinstance(info.value, UnreadableImageError) and info.value.path == str(root / "a" / "a_001.jpg")
    assert message.startswith(f"cannot read image {root / 'a' / 'a_001.jpg'} (OSError: image file is truncated")
    assert "python -m dmlrs.data --dataset /x/f" in message and "--skip-corrupt" in message and "\n" not in message


@pytest.mark.parametrize("num_workers", [0, 2])
def test_error_from_a_dataloader_worker_is_the_same_single_message(folder, num_workers):
    root, items = folder
    truncate_file(root / "b" / "b_002.jpg")
    ds = SceneDataset(root, items, build_transforms(16)[1])
    with pytest.raises(DmlrsError) as in_process:
        ds[5]
    batches = iter(DataLoader(ds, batch_size=4, num_workers=num_workers))
    try:
        with pytest.raises(DmlrsError) as info:
            list(batches)
    finally:  # torch 2.14 waits 5 s per worker to join workers after a worker error: stop them now
        for worker in getattr(batches, "_workers", []):
            worker.terminate()
    assert type(info.value) is UnreadableImageError  # still a DmlrsError: the entry points print it as is
    assert str(info.value) == str(in_process.value)
    assert "Traceback" not in str(info.value) and "\n" not in str(info.value)


def test_strip_worker_traceback():
    wrapped = ("Caught UnreadableImageError in DataLoader worker process 1.\nOriginal Traceback (most recent call "
               "last):\n  File \"x.py\", line 1, in f\nOSError: truncated\n\nThe above exception was the direct cause"
               " of the following exception:\n\nTraceback (most recent call last):\n  File \"y.py\", line 2\n"
               "dmlrs.data.images.UnreadableImageError: cannot read image /a/b.jpg (OSError: truncated). Do X.\n")
    assert strip_worker_traceback(wrapped, "UnreadableImageError") == "cannot read image /a/b.jpg (OSError: truncated). Do X."
    assert strip_worker_traceback("plain message", "UnreadableImageError") == "plain message"
    assert str(UnreadableImageError(wrapped)) == "cannot read image /a/b.jpg (OSError: truncated). Do X."


def test_skip_corrupt_uses_the_next_readable_image_of_the_class(folder):
    root, items = folder
    truncate_file(root / "a" / "a_001.jpg")  # item 2 -> a2 (item 4)
    (root / "a" / "a_002.jpg").write_bytes(b"junk")  # item 4 -> a3 (item 6)
    (root / "a" / "a_004.jpg").unlink()  # item 7, the last of its class -> wraps around to a0 (item 0)
    ds = SceneDataset(root, items, None, labels=[9, 8, 7, 6, 5, 4, 3, 2], clean_labels=[0, 1] * 4, skip_corrupt=True)
    for i, source in [(2, "a/a_003.jpg"), (4, "a/a_003.jpg"), (7, "a/a_000.jpg")]:
        sample = ds[i]
        assert sample["replaced"] is True and sample["index"] == i
        assert sample["label"] == ds.labels[i] and sample["clean_label"] == ds.clean_labels[i]  # its own labels
        assert np.array_equal(np.asarray(sample["image"]), _pixels(root, source))
    for i in (0, 1, 3, 5, 6):
        sample = ds[i]
        assert sample["replaced"] is False
        assert np.array_equal(np.asarray(sample["image"]), _pixels(root, items[i][0]))
    assert ds[np.int64(2)]["index"] == 2 and type(ds[np.int64(2)]["index"]) is int


def test_skip_corrupt_raises_when_the_whole_class_is_unreadable(folder):
    root, items = folder
    for name in ("b_000", "b_001", "b_002"):
        (root / "b" / f"{name}.jpg").write_bytes(b"junk")
    ds = SceneDataset(root, items, None, skip_corrupt=True)
    assert ds[0]["replaced"] is False
    with pytest.raises(UnreadableImageError, match=r"no image of its class \(b/, label 1\) in this split is "
                                                   r"readable \(3 tried\)"):
        ds[3]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_replaced_flag_collates_and_sums(folder, num_workers):
    root, items = folder
    truncate_file(root / "a" / "a_001.jpg")
    ds = SceneDataset(root, items, build_transforms(16)[1], skip_corrupt=True)
    batches = list(DataLoader(ds, batch_size=3, num_workers=num_workers))
    assert sum(int(batch["replaced"].sum()) for batch in batches) == 1
    assert batches[0]["replaced"].tolist() == [False, False, True]


def test_build_data_passes_skip_corrupt_and_the_check_command(tmp_path):
    data = write_fake_dataset(tmp_path / "d", "UCMD", layout="direct", per_class=4, size=48, ext=".jpg")
    plain = build_data("UCMD", data, img_size=16)
    assert set(plain.train[0]) == {"image", "label", "index"}
    relpath = plain.manifest["train"][1][0]
    truncate_file(data / relpath)  # after the scan: training finds it
    with pytest.raises(UnreadableImageError) as info:
        plain.train[1]
    assert f"python -m dmlrs.data --dataset UCMD --data {data}" in str(info.value)
    bundle = build_data("UCMD", data, img_size=16, skip_corrupt=True)  # header check: the file still opens
    for split in (bundle.train, bundle.train_eval, bundle.val, bundle.test):
        assert split.skip_corrupt and all(split[i]["replaced"] is False for i in range(len(split))
                                          if split.items[i][0] != relpath)
    assert bundle.train[1]["replaced"] is True and bundle.train[1]["index"] == 1
    demo = build_data("demo", skip_corrupt=True)
    assert demo.train[0]["replaced"] is False


# ----------------------------------------------------------------------------- reused split files


@pytest.fixture
def ucmd(tmp_path):
    data = write_fake_dataset(tmp_path / "d", "UCMD", layout="direct", per_class=5, size=48, ext=".jpg")
    bundle = build_data("UCMD", data, img_size=16)
    return data, bundle, save_manifest(bundle.manifest, tmp_path / "split.json")


def test_fresh_manifest_records_file_sizes_outside_its_hash(ucmd):
    data, bundle, path = ucmd
    sizes = bundle.manifest["file_sizes"]
    assert len(sizes) == 105 and all(sizes[p] == (data / p).stat().st_size for p in sizes)
    again = build_data("UCMD", data, img_size=16, split_file=path)
    assert again.manifest_hash == bundle.manifest_hash
    assert "file_sizes" not in build_data("demo").manifest  # the demo has no files


def test_reused_manifest_refuses_added_removed_and_changed_files(ucmd):
    data, bundle, path = ucmd
    listed = bundle.manifest["test"][0][0]
    (data / listed).unlink()
    Image.new("RGB", (48, 48)).save(data / "beach" / "zz_new.jpg")
    changed = bundle.manifest["train"][0][0]
    with open(data / changed, "ab") as handle:
        handle.write(b"\0" * 10)
    with pytest.raises(DmlrsError) as info:
        build_data("UCMD", data, split_file=path)
    message = str(info.value)
    assert message.startswith(f"split file {path} no longer matches the dataset: ") and "\n" not in message
    assert f"1 listed image(s) are missing ({listed})" in message
    assert "1 image(s) on disk are in no split (beach/zz_new.jpg)" in message
    size = bundle.manifest["file_sizes"][changed]
    assert f"1 image(s) changed since the split was made ({changed}: {size} -> {size + 10} bytes)" in message
    assert "without --split-file" in message and "remove added ones" in message


def test_old_manifest_without_sizes_skips_the_size_check_and_gains_sizes(ucmd, tmp_path):
    data, bundle, _ = ucmd
    old = {k: v for k, v in bundle.manifest.items() if k != "file_sizes"}
    path = save_manifest(old, tmp_path / "old.json")
    changed = bundle.manifest["val"][0][0] if bundle.manifest["val"] else bundle.manifest["test"][0][0]
    with open(data / changed, "ab") as handle:
        handle.write(b"\0")
    again = build_data("UCMD", data, split_file=path)
    assert again.manifest_hash == bundle.manifest_hash
    assert again.manifest["file_sizes"][changed] == bundle.manifest["file_sizes"][changed] + 1


def test_resume_with_skip_corrupt_keeps_a_listed_corrupt_file(ucmd):
    data, bundle, path = ucmd
    relpath = bundle.manifest["train"][3][0]
    (data / relpath).write_bytes(b"broken")  # fails even the header check
    with pytest.raises(CorruptImagesError, match=relpath):
        build_data("UCMD", data, split_file=path)
    resumed = build_data("UCMD", data, img_size=16, split_file=path, skip_corrupt=True)
    assert resumed.manifest_hash == bundle.manifest_hash  # same split: the checkpoint still matches
    assert resumed.skipped == [relpath] and resumed.train[3]["replaced"] is True
    fresh = build_data("UCMD", data, img_size=16, skip_corrupt=True)  # a new split leaves it out
    assert relpath not in {p for key in ("train", "val", "test") for p, _ in fresh.manifest[key]}


def test_demo_manifest_reuse_needs_no_files(tmp_path):
    first = build_data("demo", seed=3)
    path = save_manifest(first.manifest, tmp_path / "split.json")
    assert build_data("demo", split_file=path).manifest_hash == first.manifest_hash
