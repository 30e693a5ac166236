"""The "original" split protocol (the default) reproduces the authors' code file for file.

Every expectation comes from a slow reference written here from the facts about the authors'
code (jiankang1991/SNCA_CE, CDNE, RNSL, HR-S2DML): classes = sorted folders; per class
``sorted(glob(class_dir/'*.<ext>'))``, a fresh ``random.Random(42)`` shuffle, the literal
``int(0.7 * n)`` / ``int(0.8 * n)`` cuts (HR-S2DML: ``int(train_per * n)``), lists class by
class in the shuffled order; label noise from one ``np.random.RandomState(42)`` walking the
train list with ``multinomial(1, P[y])``.  The fixture folders are generated on the fly.
"""
import glob
import hashlib
import json
import os
import random
import shutil
from collections import Counter

import numpy as np
import pytest

from dmlrs.data import build_data, save_manifest
from dmlrs.data.build import describe_data
from dmlrs.data.demo import DEMO_CLASSES, demo_samples
from dmlrs.data.fixtures import write_fake_dataset, write_image_folder
from dmlrs.data.noise import DEPENDENT_TABLES_FILE, apply_label_noise
from dmlrs.data.scan import scan_dataset
from dmlrs.data.splits import (add_semi_supervised, check_manifest_matches, literal_sum, load_manifest,
                               make_manifest, manifest_hash, original_cut_points, original_split_counts,
                               split_counts)
from dmlrs.errors import DmlrsError
from tests.data.test_noise import reference_matrix

# folder -> images; class names whose sort order depends on case, sizes where float truncation
# matters (5, 10, 15: int((0.7 + 0.1) * n) would cut one early; 700: int(0.7 * 700) == 489)
SIZES = {"airport": 23, "Harbor": 10, "Beach": 5, "dense": 15, "tiny": 3, "one": 1, "two": 2, "big": 700}
# extra files whose order differs between a name sort and a stem sort ("airport-1.jpg" < "airport.jpg")
EXTRA = ("airport.jpg", "airport-1.jpg", "Airport_Z.jpg", "airport_1.jpg")


# --------------------------------------------------------------------------- the reference


def reference_split(root, ext="jpg", seed=42, train_per=None):
    """The authors' split, with explicit loops: {"classes", "train", "val", "test"} of [relpath, label]."""
    classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    out = {"classes": classes, "train": [], "val": [], "test": []}
    for label, cls in enumerate(classes):
        files = sorted(glob.glob(os.path.join(str(root), cls, "*." + ext)))
        rng = random.Random(seed)  # the original: random.seed(42) before every class
        rng.shuffle(files)
        n = len(files)
        if train_per is None:
            cut1, cut2 = int(0.7 * n), int(0.8 * n)
        else:
            cut1 = cut2 = int(train_per * n)
        for i in range(n):
            rel = os.path.relpath(files[i], str(root)).replace(os.sep, "/")
            if i < cut1:
                out["train"].append([rel, label])
            elif i < cut2:
                out["val"].append([rel, label])
            else:
                out["test"].append([rel, label])
    return out


def reference_noise(clean_labels, matrix, seed=42):
    """The authors' noise: one RandomState, a one-hot multinomial draw per train sample, in order."""
    rs = np.random.RandomState(seed)
    noisy = []
    for y in clean_labels:
        one_hot = rs.multinomial(1, matrix[y, :])
        noisy.append(int(np.where(one_hot == 1)[0][0]))
    return noisy


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = write_image_folder(tmp_path_factory.mktemp("orig") / "scenes", SIZES, size=4, ext=".jpg")
    for name in EXTRA:
        shutil.copyfile(root / "airport" / "airport_000.jpg", root / "airport" / name)
    shutil.copyfile(root / "Beach" / "beach_000.jpg", root / "Beach" / ".hidden.jpg")  # neither lists it
    return root


def _pairs(dataset):
    return [list(item) for item in dataset.items]


# --------------------------------------------------------------------------- cut points


@pytest.mark.parametrize("n", list(range(1, 60)) + list(range(220, 421)) + [100, 700, 800, 2100])
def test_cut_points_are_the_literal_int_cuts(n):
    assert original_cut_points(n) == (int(0.7 * n), int(0.8 * n))
    assert original_split_counts(n) == (int(0.7 * n), int(0.8 * n) - int(0.7 * n), n - int(0.8 * n))


def test_known_dataset_class_sizes():
    assert original_split_counts(100) == (70, 10, 20)  # UCMD
    assert original_split_counts(700) == (489, 71, 140)  # NWPU-RESISC45: 0.7 * 700 == 489.99999999999994
    assert original_split_counts(800) == (560, 80, 160)  # PatternNet
    assert original_split_counts(220) == (154, 22, 44) == split_counts(220)  # AID's smallest class
    assert split_counts(700) == (490, 70, 140)  # the stratified protocol rounds instead
    assert 0.7 + 0.1 != 0.8 and literal_sum(0.7, 0.1) == 0.8
    assert int((0.7 + 0.1) * 5) == 3 and original_cut_points(5) == (3, 4)  # the float sum would cut early


@pytest.mark.parametrize("fractions, cum", [((0.6, 0.2, 0.2), 0.8), ((0.5, 0.25, 0.25), 0.75),
                                            ((0.8, 0.0, 0.2), 0.8), ((0.7, 0.2, 0.1), 0.9)])
def test_other_fractions_cut_at_the_literal_cumulative_fraction(fractions, cum):
    for n in range(1, 300):
        assert original_cut_points(n, fractions) == (int(fractions[0] * n), int(cum * n))


# --------------------------------------------------------------------------- file-for-file lists


def test_local_rng_shuffles_like_the_global_seeded_one_and_leaves_it_alone(folder):
    state = random.getstate()
    try:
        files = [f"f{i}" for i in range(50)]
        expected = list(files)
        random.seed(42)
        random.shuffle(expected)  # literally what the original calls
        local = list(files)
        random.Random(42).shuffle(local)
        assert local == expected
    finally:
        random.setstate(state)
    before = random.getstate()
    index = scan_dataset(str(folder), None)
    make_manifest("x", folder, index.classes, index.samples)
    build_data(str(folder), None, img_size=8, noise_type="symmetric", noise_rate=0.3)
    assert random.getstate() == before  # dmlrs never touches the global random state


@pytest.mark.parametrize("seed", [42, 7])
def test_split_lists_equal_the_reference_file_for_file(folder, seed):
    ref = reference_split(folder, seed=seed)
    index = scan_dataset(str(folder), None)
    assert index.classes == ref["classes"] == sorted(SIZES)
    manifest = make_manifest("scenes", folder, index.classes, index.samples, seed=seed)
    assert manifest["protocol"] == "original"
    for key in ("train", "val", "test"):
        assert manifest[key] == ref[key]  # same files, same order
    bundle = build_data(str(folder), None, img_size=8, seed=seed)
    assert (_pairs(bundle.train), _pairs(bundle.val), _pairs(bundle.test)) == (ref["train"], ref["val"], ref["test"])
    # dataset index i (also the memory-bank slot) is the original's idx i
    for i in (0, 5, len(ref["train"]) - 1):
        item = bundle.train_eval[i]
        assert item["index"] == i and item["label"] == ref["train"][i][1]
        assert bundle.train_eval.items[i][0] == ref["train"][i][0]
    counts = Counter(lab for _, lab in ref["train"])
    assert counts[ref["classes"].index("big")] == 489 and counts[ref["classes"].index("one")] == 0


def test_split_differs_from_the_stratified_protocol(folder):
    index = scan_dataset(str(folder), None)
    original = make_manifest("x", folder, index.classes, index.samples)
    stratified = make_manifest("x", folder, index.classes, index.samples, split_protocol="stratified")
    assert original["train"] != stratified["train"]
    assert stratified["protocol"] == "stratified"


@pytest.mark.parametrize("seed", [42, 3])
@pytest.mark.parametrize("noise_type, rate", [("symmetric", 0.4), ("symmetric", 0.1), ("cyclic", 0.3)])
def test_noisy_labels_equal_the_reference(folder, noise_type, rate, seed):
    ref = reference_split(folder, seed=seed)
    clean = [lab for _, lab in ref["train"]]
    expected = reference_noise(clean, reference_matrix(noise_type, rate, len(ref["classes"])), seed=seed)
    bundle = build_data(str(folder), None, img_size=8, seed=seed, noise_type=noise_type, noise_rate=rate)
    assert bundle.train_clean_labels.tolist() == clean
    assert bundle.train_labels.tolist() == expected
    assert [bundle.train_eval[i]["label"] for i in range(len(clean))] == expected
    assert bundle.noise["realised_rate"] == pytest.approx(np.mean(np.array(expected) != np.array(clean)))
    assert _pairs(bundle.val) == ref["val"] and _pairs(bundle.test) == ref["test"]  # val/test stay clean
    assert "clean_label" not in bundle.val[0] and "clean_label" not in bundle.test[0]


def test_dependent_noise_equals_the_reference_on_fake_aid(tmp_path):
    tables = json.loads(DEPENDENT_TABLES_FILE.read_text())["AID"]
    per_class = {name: 4 + i % 7 for i, name in enumerate(tables["classes"])}
    data = write_fake_dataset(tmp_path, "AID", layout="named", per_class=per_class, size=4)
    ref = reference_split(data / "AID")
    names = ref["classes"]
    matrix = np.zeros((len(names), len(names)))
    for true_name, row in tables["matrices"]["0.3"].items():
        for noisy_name, p in row.items():
            matrix[names.index(true_name), names.index(noisy_name)] = p
    expected = reference_noise([lab for _, lab in ref["train"]], matrix)
    bundle = build_data("AID", data, img_size=8, noise_type="dependent", noise_rate=0.3)
    assert _pairs(bundle.train) == ref["train"] and bundle.train_labels.tolist() == expected


def test_noise_follows_the_train_list_order():
    labels = [3, 0, 0, 2, 1, 3, 2, 2, 1, 0] * 20
    expected = reference_noise(labels, reference_matrix("symmetric", 0.5, 4))
    assert apply_label_noise(labels, 4, "symmetric", 0.5, seed=42)[0].tolist() == expected
    reordered = labels[::-1]
    assert apply_label_noise(reordered, 4, "symmetric", 0.5, seed=42)[0].tolist() != expected[::-1]


# --------------------------------------------------------------------------- HR-S2DML (transductive)


@pytest.mark.parametrize("train_per", [0.2, 0.35])
def test_transductive_manifest_equals_the_reference(folder, train_per):
    ref = reference_split(folder, train_per=train_per)
    index = scan_dataset(str(folder), None)
    with pytest.warns(UserWarning, match="model selection"):
        manifest = make_manifest("x", folder, index.classes, index.samples, train_per=train_per, transductive=True)
    assert manifest["train"] == ref["train"] and manifest["test"] == ref["test"] and ref["val"] == []
    assert manifest["val"] == manifest["test"]  # no validation split: the checkpoint is chosen on the test images
    assert manifest["labelled"] == list(range(len(manifest["train"])))
    assert manifest["unlabelled"] == list(range(len(manifest["test"]))) and manifest["unlabelled_source"] == "test"
    per_class = Counter(lab for _, lab in manifest["train"])
    for label, cls in enumerate(index.classes):
        n = sum(1 for _, lab in index.samples if lab == label)
        assert per_class[label] == int(train_per * n)


def test_transductive_bundle_and_readers_accept_val_equal_to_test(folder, tmp_path):
    with pytest.warns(UserWarning, match="leak"):
        bundle = build_data(str(folder), None, img_size=8, train_per=0.2, transductive=True)
    ref = reference_split(folder, train_per=0.2)
    assert _pairs(bundle.train) == ref["train"]
    assert _pairs(bundle.val) == _pairs(bundle.test) == _pairs(bundle.unlabelled) == ref["test"]
    assert set(bundle.unlabelled.labels) == {-1}
    warning = next(w for w in bundle.warnings if "leak" in w)
    assert "trained on" in warning and "model selection" in warning and "optimistic" in warning
    index = scan_dataset(str(folder), None)
    assert check_manifest_matches(bundle.manifest, index.classes, index.samples) == []
    path = save_manifest(bundle.manifest, tmp_path / "split.json")
    loaded = load_manifest(path)
    assert loaded == bundle.manifest and manifest_hash(loaded) == bundle.manifest_hash
    again = build_data(str(folder), None, img_size=8, train_per=0.2, transductive=True, split_file=path)
    assert again.manifest_hash == bundle.manifest_hash and any("leak" in w for w in again.warnings)
    text = describe_data(bundle)
    n_images = len(index.samples)
    assert f"{n_images:,} images" in text and "(val = the test split)" in text
    big = next(line for line in text.splitlines() if line.strip().startswith("big "))
    assert big.split()[1:] == ["700", "140", "560", "560"]


def test_transductive_recut_of_an_original_split_file(folder, tmp_path):
    plain = build_data(str(folder), None, img_size=8)
    path = save_manifest(plain.manifest, tmp_path / "split.json")
    with pytest.warns(UserWarning, match="leak"):
        semi = build_data(str(folder), None, img_size=8, split_file=path, train_per=0.2, transductive=True)
    ref = reference_split(folder, train_per=0.2)
    assert _pairs(semi.train) == ref["train"] and _pairs(semi.test) == _pairs(semi.val) == ref["test"]


# --------------------------------------------------------------------------- listing differences


def test_other_extensions_and_case_follow_the_scanner(tmp_path):
    root = write_image_folder(tmp_path / "mixed", {"fields": 12, "roads": 9}, size=4, ext=".jpg")
    shutil.copyfile(root / "fields" / "fields_000.jpg", root / "fields" / "fields_005b.JPG")
    shutil.copyfile(root / "fields" / "fields_000.jpg", root / "fields" / "Fields_x.png")
    index = scan_dataset(str(root), None)
    listed = [rel for rel, _ in index.samples]
    assert "fields/fields_005b.JPG" in listed and "fields/Fields_x.png" in listed  # dmlrs lists every image type
    manifest = make_manifest("mixed", root, index.classes, index.samples)
    # consistent with the scanner: the original algorithm applied to every listed file, sorted by name
    for label, cls in enumerate(index.classes):
        files = sorted(rel for rel, lab in index.samples if lab == label)
        random.Random(42).shuffle(files)
        got = [p for key in ("train", "val", "test") for p, lab in manifest[key] if lab == label]
        assert got == files
    # the original's glob("*.jpg") (case-sensitive) misses the two files: only that class differs
    glob_ref = reference_split(root, ext="jpg")
    assert [p for p in manifest["train"] if p[1] == 1] == [p for p in glob_ref["train"] if p[1] == 1]
    assert [p for p in manifest["train"] if p[1] == 0] != [p for p in glob_ref["train"] if p[1] == 0]
    assert sum(len(manifest[k]) for k in ("train", "val", "test")) == len(index.samples) == 23


def test_build_warns_about_files_the_original_glob_misses(tmp_path):
    data = write_fake_dataset(tmp_path, "UCMD", layout="direct", per_class=3, size=4)
    shutil.copyfile(data / "beach" / "beach_000.tif", data / "beach" / "beach_009.TIF")
    bundle = build_data("UCMD", data, img_size=8)
    assert any("beach/beach_009.TIF" in w and "'.tif'" in w for w in bundle.warnings)
    stratified = build_data("UCMD", data, img_size=8, split_protocol="stratified")
    assert not any("'.tif'" in w for w in stratified.warnings)


# --------------------------------------------------------------------------- old manifests, stratified


def test_manifest_without_protocol_loads_as_stratified(tmp_path):
    old = build_data("demo", split_protocol="stratified")
    legacy = {k: v for k, v in old.manifest.items() if k != "protocol"}
    path = save_manifest(legacy, tmp_path / "split.json")
    loaded = load_manifest(path)
    assert loaded["protocol"] == "stratified" and manifest_hash(loaded) == old.manifest_hash
    reused = build_data("demo", split_file=path, noise_type="symmetric", noise_rate=0.4)
    expected, _ = apply_label_noise([lab for _, lab in legacy["train"]], 10, "symmetric", 0.4, seed=42,
                                    split_protocol="stratified")
    assert reused.train_labels.tolist() == expected.tolist()  # the file's protocol picks the noise sampler
    assert any("'stratified' split protocol" in w for w in reused.warnings)
    with pytest.warns(UserWarning):
        add_semi_supervised(dict(loaded), 0.2, transductive=True)  # re-cut with the file's protocol works


# Hashes computed with the dmlrs code before the original protocol existed (stratified was the
# only protocol): the demo manifest, its semi-supervised variant and symmetric 0.4 noise labels.
STRATIFIED_DEMO_HASH = "c6ebdcb976a638b4b0e22b618ae20b1942ca68816a405b028f510df29b3c7557"
STRATIFIED_DEMO_SEMI_HASH = "cb7e8e5696e9fd284c70a385ad5eb4210cca15905045e74c58da2dbd303224c1"
STRATIFIED_DEMO_NOISE_SHA256 = "348dbac8037adcf5bfcd1335cbf268e5da13fd10436a835349430da4044f5135"


def test_stratified_protocol_is_unchanged():
    manifest = make_manifest("demo", None, list(DEMO_CLASSES), demo_samples(), split_protocol="stratified")
    assert manifest_hash(manifest) == STRATIFIED_DEMO_HASH
    semi = make_manifest("demo", None, list(DEMO_CLASSES), demo_samples(), split_protocol="stratified", train_per=0.2)
    assert manifest_hash(semi) == STRATIFIED_DEMO_SEMI_HASH
    bundle = build_data("demo", split_protocol="stratified", noise_type="symmetric", noise_rate=0.4)
    assert bundle.manifest_hash == STRATIFIED_DEMO_HASH
    noisy = json.dumps(bundle.train_labels.tolist()).encode()
    assert hashlib.sha256(noisy).hexdigest() == STRATIFIED_DEMO_NOISE_SHA256
    assert build_data("demo").manifest_hash != STRATIFIED_DEMO_HASH  # the default is now the original


def test_unknown_protocol_errors():
    with pytest.raises(DmlrsError, match="original"):
        build_data("demo", split_protocol="Original")
