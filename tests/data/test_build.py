"""build_data end to end: demo, fake datasets in every layout, noise, semi-supervised mode,
reused split files, and the SceneDataset item contract."""
from collections import Counter

import pytest
import torch

from dmlrs.data import build_data, save_manifest
from dmlrs.data.dataset import SceneDataset
from dmlrs.data.fixtures import LAYOUTS, write_fake_dataset, write_image_folder
from dmlrs.data.noise import transition_matrix
from dmlrs.data.splits import manifest_hash, original_split_counts, split_counts
from dmlrs.errors import DmlrsError


def _items(dataset):
    return [dataset.items[i] for i in range(len(dataset))]


def test_demo_bundle():
    bundle = build_data("demo")
    assert bundle.name == "demo" and bundle.root is None and bundle.image_size == 64
    assert bundle.num_classes == len(bundle.classes) == 10
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == tuple(10 * n for n in split_counts(60))
    assert split_counts(60) == original_split_counts(60) == (42, 6, 12) and bundle.manifest["protocol"] == "original"
    assert _items(bundle.train) == _items(bundle.train_eval) == [tuple(p) for p in bundle.manifest["train"]]
    sample = bundle.train_eval[5]
    assert set(sample) == {"image", "label", "index"}
    assert sample["image"].shape == (3, 64, 64) and sample["index"] == 5
    assert sample["label"] == bundle.manifest["train"][5][1] == int(bundle.train_labels[5])
    assert torch.equal(bundle.train_eval[5]["image"], sample["image"])  # eval transform is deterministic
    assert torch.equal(bundle.train_labels, bundle.train_clean_labels)
    assert bundle.train_labels.dtype == torch.long and bundle.noise is None and bundle.unlabelled is None
    assert bundle.manifest_hash == manifest_hash(bundle.manifest) == build_data("demo").manifest_hash
    assert build_data("demo", seed=1).manifest_hash != bundle.manifest_hash
    assert build_data("demo", img_size=32).test[0]["image"].shape == (3, 32, 32)
    text = bundle.summary()
    assert "10 classes" in text and "train 420 / val 60 / test 120" in text and "stripes_horizontal" in text


@pytest.mark.parametrize("layout", LAYOUTS)
def test_fake_dataset_in_every_layout(tmp_path, layout):
    data = write_fake_dataset(tmp_path, "UCMD", layout=layout, per_class=3, size=16)
    bundle = build_data("ucmerced", data, img_size=16, split_protocol="stratified")
    assert bundle.name == "UCMD" and bundle.num_classes == 21 and bundle.image_size == 16
    assert bundle.root is not None and (bundle.root / bundle.manifest["test"][0][0]).is_file()
    for split in (bundle.train, bundle.val, bundle.test):
        assert Counter(label for _, label in split.items) == {c: 1 for c in range(21)}  # 3 -> 1/1/1
    with pytest.raises(DmlrsError, match="the validation split is empty"):  # int(0.7 * 3), int(0.8 * 3) -> 2/0/1
        build_data("ucmerced", data, img_size=16)
    original = build_data("ucmerced", data, img_size=16, check_splits=False)
    assert [len(original.train), len(original.val), len(original.test)] == [42, 0, 21]
    assert any("val split has no images of 21 class(es)" in w for w in original.warnings)
    sample = bundle.test[2]
    assert sample["image"].shape == (3, 16, 16) and sample["index"] == 2
    assert sample["label"] == bundle.manifest["test"][2][1]
    assert build_data("UCMD", data, check_splits=False).image_size == 256  # the papers' size by default


def test_generic_folder_dataset(tmp_path):
    root = write_image_folder(tmp_path / "mine", {"fields": 5, "roads": 4, "lakes": 6}, size=12)
    bundle = build_data(str(root), None, img_size=12)
    assert bundle.classes == ["fields", "lakes", "roads"]
    assert len(bundle.train) + len(bundle.val) + len(bundle.test) == 15
    assert bundle.train[0]["image"].shape == (3, 12, 12)


@pytest.mark.parametrize("protocol", ["original", "stratified"])
@pytest.mark.parametrize("noise_type", ["symmetric", "cyclic"])
def test_label_noise_on_the_train_split_only(noise_type, protocol):
    clean = build_data("demo", split_protocol=protocol)
    bundle = build_data("demo", noise_type=noise_type, noise_rate=0.5, split_protocol=protocol)
    assert torch.equal(bundle.train_clean_labels, clean.train_labels)
    changed = (bundle.train_labels != bundle.train_clean_labels).double().mean().item()
    assert bundle.noise == {"type": noise_type, "rate": 0.5, "realised_rate": pytest.approx(changed)}
    assert 0.4 < changed < 0.6
    for i in (0, 7, 100):
        item = bundle.train[i]
        assert item["label"] == int(bundle.train_labels[i]) and item["clean_label"] == int(bundle.train_clean_labels[i])
        assert bundle.train_eval[i]["clean_label"] == item["clean_label"]
    assert _items(bundle.val) == _items(clean.val) and "clean_label" not in bundle.test[0]
    assert bundle.manifest_hash == clean.manifest_hash  # noise does not change the split
    assert "label noise: " + noise_type in bundle.summary()


def test_dependent_noise_on_fake_aid(tmp_path):
    data = write_fake_dataset(tmp_path, "AID", layout="named", per_class=10, size=8)
    bundle = build_data("AID", data, img_size=8, noise_type="dependent", noise_rate=0.3)
    matrix = transition_matrix("dependent", 0.3, 30, class_names=bundle.classes, dataset="AID")
    for clean, noisy in zip(bundle.train_clean_labels.tolist(), bundle.train_labels.tolist()):
        assert matrix[clean, noisy] > 0  # only transitions the published table allows
    assert bundle.noise["realised_rate"] > 0
    with pytest.raises(DmlrsError, match="0.1"):
        build_data("AID", data, img_size=8, noise_type="dependent", noise_rate=0.2)


@pytest.mark.parametrize("protocol", ["original", "stratified"])
def test_semi_supervised_bundle(protocol):
    full = build_data("demo", split_protocol=protocol)
    bundle = build_data("demo", train_per=0.2, split_protocol=protocol)
    labelled, unlabelled = _items(bundle.train), _items(bundle.unlabelled)
    assert len(labelled) == 10 * max(1, int(42 * 0.2 + 0.5))
    assert sorted(labelled + unlabelled) == sorted(_items(full.train))
    assert _items(bundle.train_eval) == labelled and len(bundle.train_labels) == len(labelled)
    item = bundle.unlabelled[3]
    assert item["label"] == -1 and "clean_label" not in item and item["index"] == 3
    assert set(bundle.unlabelled.labels) == {-1}
    assert f"labelled {len(labelled)}, unlabelled {len(unlabelled)}" in bundle.summary()


def test_semi_supervised_with_noise_keeps_labels_aligned():
    bundle = build_data("demo", train_per=0.5, noise_type="symmetric", noise_rate=0.4)
    full_noise = build_data("demo", noise_type="symmetric", noise_rate=0.4)
    noisy_by_path = {p: int(lab) for (p, _), lab in zip(full_noise.train.items, full_noise.train_labels)}
    assert [noisy_by_path[p] for p, _ in bundle.train.items] == bundle.train_labels.tolist()
    assert [lab for _, lab in bundle.train.items] == bundle.train_clean_labels.tolist()


@pytest.mark.parametrize("protocol", ["original", "stratified"])
def test_transductive_mode_warns_and_uses_the_test_split(protocol):
    with pytest.warns(UserWarning, match="leak"):
        bundle = build_data("demo", train_per=0.2, transductive=True, split_protocol=protocol)
    assert _items(bundle.unlabelled) == _items(bundle.test) == _items(bundle.val)
    assert len(bundle.train) == 10 * 12 and len(bundle.test) == 10 * 48  # int(0.2 * 60) = 12 labelled per class
    assert any("leak" in w and "model selection" in w for w in bundle.warnings) and "leak" in bundle.summary()
    text = bundle.summary()
    assert "600 images" in text and "train 120 / val 480 / test 480 (val = the test split)" in text
    assert "  stripes_horizontal      60      12     48     48" in text  # per-class total not doubled


@pytest.mark.parametrize("protocol", ["original", "stratified"])
def test_reused_split_file(tmp_path, protocol):
    first = build_data("demo", seed=3, split_protocol=protocol)
    path = save_manifest(first.manifest, tmp_path / "split.json")
    again = build_data("demo", split_file=path, seed=99, split_protocol=protocol)  # the file wins over the seed
    assert again.manifest_hash == first.manifest_hash and _items(again.test) == _items(first.test)
    semi = build_data("demo", split_file=path, train_per=0.2, split_protocol=protocol)
    assert semi.manifest_hash != first.manifest_hash and semi.unlabelled is not None
    semi_path = save_manifest(semi.manifest, tmp_path / "semi.json")
    assert build_data("demo", split_file=semi_path, train_per=0.2).manifest_hash == semi.manifest_hash
    with pytest.raises(DmlrsError, match="train_per=0.2"):
        build_data("demo", split_file=semi_path, train_per=0.3)
    assert build_data("demo", split_file=semi_path).unlabelled is None  # supervised run ignores the partition


def test_split_file_from_another_dataset_is_refused(tmp_path):
    data = write_fake_dataset(tmp_path / "ucmd", "UCMD", layout="direct", per_class=3, size=8)
    path = save_manifest(build_data("demo").manifest, tmp_path / "split.json")
    with pytest.raises(DmlrsError, match="classes do not match") as info:
        build_data("UCMD", data, split_file=path)
    message = str(info.value)
    assert message.startswith(f"split file {path}, made for dataset 'demo': ") and "omit --split-file" in message
    with pytest.raises(DmlrsError, match="not found"):
        build_data("demo", split_file=tmp_path / "missing.json")


def test_flag_errors():
    with pytest.raises(DmlrsError, match="--noiseType"):
        build_data("demo", noise_rate=0.2)
    with pytest.raises(DmlrsError, match="--train-per"):
        build_data("demo", transductive=True)
    with pytest.raises(DmlrsError, match="--img-size"):
        build_data("demo", img_size=2)
    with pytest.raises(DmlrsError, match="--split-protocol"):
        build_data("demo", split_protocol="paper")


def test_scene_dataset_contract(tmp_path):
    root = write_image_folder(tmp_path, {"a": 2}, size=8)
    items = [("a/a_000.png", 0), ("a/a_001.png", 0)]
    ds = SceneDataset(root, items, None, labels=[1, 0], clean_labels=[0, 0])
    assert len(ds) == 2 and ds[1]["label"] == 0 and ds[0]["label"] == 1 and ds[0]["clean_label"] == 0
    assert ds[0]["image"].size == (8, 8)
    with pytest.raises(IndexError):
        ds[2]
    with pytest.raises(DmlrsError, match="labels"):
        SceneDataset(root, items, None, labels=[0])
    missing = SceneDataset(root, [("a/nope.png", 0)], None)
    with pytest.raises(DmlrsError, match="nope.png"):
        missing[0]
