"""Split properties: disjoint, complete, stratified, deterministic, order/extension independent
(stratified protocol); manifest round-trip, hash, mismatch errors (both protocols);
semi-supervised partition and transductive warning.  The file-for-file comparison of the
original protocol with the authors' code is in test_original_protocol.py."""
import json
import random
from collections import Counter

import pytest

from dmlrs.data.splits import (add_semi_supervised, check_manifest_matches, load_manifest, make_manifest,
                               manifest_hash, save_manifest, split_counts, stem_key, stratified_split)
from dmlrs.errors import DmlrsError

CLASSES = ["alpha", "beta", "gamma"]
SIZES = [20, 7, 3]


def _samples(ext=".jpg", sizes=SIZES):
    return [(f"{c}/{c}_{i}{ext}", label) for label, (c, n) in enumerate(zip(CLASSES, sizes)) for i in range(n)]


def _paths(split, key):
    return [p for p, _ in split[key]]


def test_split_is_disjoint_complete_and_stratified():
    samples = _samples()
    split = stratified_split(samples, CLASSES, seed=42)
    all_paths = _paths(split, "train") + _paths(split, "val") + _paths(split, "test")
    assert len(all_paths) == len(set(all_paths)) == len(samples)
    assert set(all_paths) == {p for p, _ in samples}
    for key in ("train", "val", "test"):
        counts = Counter(label for _, label in split[key])
        for label, n in enumerate(SIZES):
            assert counts[label] == split_counts(n)[("train", "val", "test").index(key)]
    # labels travel with their paths
    truth = dict(samples)
    assert all(truth[p] == lab for key in ("train", "val", "test") for p, lab in split[key])


@pytest.mark.parametrize("n, expected", [(1, (1, 0, 0)), (2, (2, 0, 0)), (3, (1, 1, 1)), (4, (2, 1, 1)),
                                         (10, (7, 1, 2)), (220, (154, 22, 44)), (100, (70, 10, 20))])
def test_split_counts_rounding_rule(n, expected):
    assert split_counts(n) == expected
    assert sum(split_counts(n)) == n


def test_every_class_with_three_images_gets_a_test_image():
    for n in range(3, 40):
        n_train, n_val, n_test = split_counts(n)
        assert n_test >= 1 and n_val >= 1 and n_train >= 1


@pytest.mark.parametrize("bad", [(0.5, 0.5, 0.5), (0.0, 0.5, 0.5), (0.8, -0.1, 0.3), (0.7, 0.3)])
def test_bad_fractions_are_rejected(bad):
    with pytest.raises(DmlrsError, match="fractions"):
        stratified_split(_samples(), CLASSES, fractions=bad)


def test_split_is_deterministic_and_seed_dependent():
    a = stratified_split(_samples(), CLASSES, seed=1)
    assert a == stratified_split(_samples(), CLASSES, seed=1)
    assert a != stratified_split(_samples(), CLASSES, seed=2)


def test_split_ignores_listing_order_and_extension():
    reference = stratified_split(_samples(".jpg"), CLASSES, seed=7)
    shuffled = _samples(".jpg")
    random.Random(0).shuffle(shuffled)
    assert stratified_split(shuffled, CLASSES, seed=7) == reference
    as_tif = stratified_split(_samples(".tif"), CLASSES, seed=7)
    for key in ("train", "val", "test"):
        assert [stem_key(p) for p in _paths(as_tif, key)] == [stem_key(p) for p in _paths(reference, key)]


def test_adding_a_class_does_not_reshuffle_the_others():
    base = stratified_split(_samples(), CLASSES, seed=3)
    more = _samples() + [(f"delta/d_{i}.jpg", 3) for i in range(9)]
    extended = stratified_split(more, CLASSES + ["delta"], seed=3)
    for key in ("train", "val", "test"):
        assert [s for s in extended[key] if s[1] < 3] == base[key]


@pytest.mark.parametrize("protocol", ["original", "stratified"])
def test_manifest_round_trip_and_hash(tmp_path, protocol):
    manifest = make_manifest("toy", tmp_path, CLASSES, _samples(), seed=5, split_protocol=protocol)
    assert manifest["protocol"] == protocol
    path = save_manifest(manifest, tmp_path / "runs" / "split.json")
    loaded = load_manifest(path)
    assert loaded == manifest
    assert manifest_hash(loaded) == manifest_hash(manifest)
    assert {"version", "dataset", "root", "classes", "seed", "protocol", "fractions", "train", "val", "test"} \
        <= set(loaded)
    assert not list(path.parent.glob("*.tmp"))  # atomic write leaves no temp file
    moved = dict(loaded, train=loaded["train"][1:] + loaded["train"][:1])
    assert manifest_hash(moved) != manifest_hash(loaded)
    assert manifest_hash(dict(loaded, seed=99, root="/elsewhere")) == manifest_hash(loaded)  # content only


@pytest.mark.parametrize("content, message", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "JSON object"),
    (json.dumps({"version": 1, "classes": ["a"]}), "lacks"),
    (json.dumps({"version": 9, "classes": ["a"], "train": [], "val": [], "test": []}), "version"),
    (json.dumps({"version": 1, "classes": ["a"], "train": [["x.jpg", 3]], "val": [], "test": []}), "'train'"),
    (json.dumps({"version": 1, "classes": ["a"], "protocol": "random", "train": [], "val": [], "test": []}),
     "protocol 'random'"),
    (json.dumps({"version": 1, "classes": ["a"], "protocol": ["x"], "train": [], "val": [], "test": []}), "protocol"),
    ("", "not valid JSON"),
    (b"\xff\xfe{", "not valid JSON"),
    ("[" * 100000, "not"),
    (json.dumps({"version": 1, "classes": "ab", "train": [], "val": [], "test": []}), "'classes'"),
    (json.dumps({"version": 1, "classes": ["a", "a"], "train": [], "val": [], "test": []}), "distinct"),
    (json.dumps({"version": 1, "classes": ["a"], "train": [["x.jpg", True]], "val": [], "test": []}), "'train'"),
    (json.dumps({"version": 1, "classes": ["a"], "train": {"x.jpg": 0}, "val": [], "test": []}), "'train'"),
    (json.dumps({"version": 1, "classes": ["a"], "train": [], "val": [], "test": [], "seed": "42"}), "'seed'"),
    (json.dumps({"version": 1, "classes": ["a"], "train": [], "val": [], "test": [], "fractions": [0.7, "x", 1]}),
     "'fractions'"),
    (json.dumps({"version": 1, "classes": ["a"], "train": [], "val": [], "test": [], "file_sizes": {"x": -1}}),
     "'file_sizes'"),
    (json.dumps({"version": 1, "classes": ["a"], "train": [["x", 0]], "val": [], "test": [], "labelled": [0]}),
     "'labelled' needs 'train_per'"),
    (json.dumps({"version": 1, "classes": ["a"], "train": [["x", 0]], "val": [], "test": [], "labelled": [0],
                 "train_per": "0.2"}), "'train_per'"),
    (json.dumps({"version": 1, "classes": ["a"], "train": [["x", 0]], "val": [], "test": [], "labelled": [3],
                 "train_per": 0.2, "unlabelled": []}), "'labelled' must list indices"),
    (json.dumps({"version": 1, "classes": ["a"], "train": [["x", 0]], "val": [], "test": [["x", 0]]}),
     "more than once, e.g. x \\(train, test\\)"),
])
def test_bad_manifest_files_raise_clear_errors(tmp_path, content, message):
    path = tmp_path / "split.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    with pytest.raises(DmlrsError, match=message) as info:
        load_manifest(path)
    assert str(path) in str(info.value) and "omitting --split-file" in str(info.value)
    assert "\n" not in str(info.value)


_WRONG_VALUES = [None, True, -1, 2.5, "text", [], [1, "a"], {}, {"a": 1}]


@pytest.mark.parametrize("key", ["version", "dataset", "root", "classes", "seed", "protocol", "fractions", "train",
                                 "val", "test", "train_per", "transductive", "labelled", "unlabelled",
                                 "unlabelled_source", "file_sizes"])
def test_any_wrong_value_is_refused_with_the_file_named_or_harmless(tmp_path, key):
    """Hand-edited split files: each key set to values of the wrong type, used for (semi-)supervised runs."""
    from dmlrs.data import build_data

    good = build_data("demo", train_per=0.5).manifest
    good["file_sizes"] = {p: 1 for p, _ in good["train"]}
    for value in _WRONG_VALUES:
        path = save_manifest(dict(good, **{key: value}), tmp_path / "split.json")
        for train_per in (None, 0.5):
            try:
                build_data("demo", split_file=path, train_per=train_per).summary()
            except DmlrsError as exc:
                assert str(path) in str(exc), (key, value, str(exc))
                assert "\n" not in str(exc)


def test_unreadable_manifest_file_is_named(tmp_path):
    folder = tmp_path / "split.json"
    folder.mkdir()  # a folder where the file should be
    with pytest.raises(DmlrsError, match="not found"):
        load_manifest(folder)


def test_missing_manifest_file(tmp_path):
    with pytest.raises(DmlrsError, match="not found"):
        load_manifest(tmp_path / "nope.json")


@pytest.mark.parametrize("protocol", ["original", "stratified"])
def test_reused_manifest_must_match_the_data(protocol):
    manifest = make_manifest("toy", None, CLASSES, _samples(), seed=5, split_protocol=protocol)
    assert check_manifest_matches(manifest, CLASSES, _samples()) == []
    with pytest.raises(DmlrsError, match="classes do not match"):
        check_manifest_matches(manifest, ["alpha", "beta", "omega"], _samples())
    gone = manifest["test"][0][0]
    fewer = [s for s in _samples() if s[0] != gone]
    with pytest.raises(DmlrsError, match=rf"1 listed image\(s\) are missing \({gone}\)"):
        check_manifest_matches(manifest, CLASSES, fewer)
    moved = manifest["val"][0][0]
    relabelled = [(p, (lab + 1) % 3 if p == moved else lab) for p, lab in _samples()]
    with pytest.raises(DmlrsError, match=rf"1 image\(s\) are in another class folder \({moved} "):
        check_manifest_matches(manifest, CLASSES, relabelled)
    with pytest.raises(DmlrsError, match=r"1 image\(s\) on disk are in no split \(alpha/new.jpg\)"):
        check_manifest_matches(manifest, CLASSES, _samples() + [("alpha/new.jpg", 0)])


def test_every_difference_is_listed_in_one_line():
    manifest = make_manifest("toy", None, CLASSES, _samples(), seed=5, file_sizes={p: 100 for p, _ in _samples()})
    gone = manifest["train"][0][0]
    added = [(f"beta/new_{i}.jpg", 1) for i in range(4)]
    on_disk = [s for s in _samples() if s[0] != gone] + added
    sizes = {p: 100 for p, _ in on_disk}
    changed = manifest["test"][-1][0]
    sizes[changed] = 57
    with pytest.raises(DmlrsError) as info:
        check_manifest_matches(manifest, CLASSES, on_disk, source="split file x.json", sizes=sizes)
    message = str(info.value)
    assert "\n" not in message and message.startswith("split file x.json no longer matches the dataset: ")
    assert f"1 listed image(s) are missing ({gone})" in message
    assert "4 image(s) on disk are in no split (beta/new_0.jpg, beta/new_1.jpg, beta/new_2.jpg, ... (4 in all))" \
        in message
    assert f"1 image(s) changed since the split was made ({changed}: 100 -> 57 bytes)" in message
    assert "remove added ones" in message and "without --split-file" in message
    # without recorded sizes (older manifests) the size check is skipped
    old = {k: v for k, v in manifest.items() if k != "file_sizes"}
    assert check_manifest_matches(old, CLASSES, _samples(), sizes={p: 1 for p, _ in _samples()}) == []
    assert manifest_hash(old) == manifest_hash(manifest)  # sizes are not hashed: old checkpoints still match


def test_unreadable_files_are_present_but_not_added_or_size_checked():
    samples = _samples()
    manifest = make_manifest("toy", None, CLASSES, samples, seed=5, file_sizes={p: 100 for p, _ in samples})
    listed_bad = manifest["train"][0][0]
    sizes = {p: 100 for p, _ in samples}
    sizes[listed_bad] = 3  # truncated
    extra_bad = ("gamma/junk.jpg", 2)  # left out when the split was made
    assert check_manifest_matches(manifest, CLASSES, samples + [extra_bad], sizes=sizes,
                                  unreadable=[listed_bad, extra_bad[0]]) == []
    with pytest.raises(DmlrsError, match="changed since"):
        check_manifest_matches(manifest, CLASSES, samples, sizes=sizes)


@pytest.mark.parametrize("protocol", ["original", "stratified"])
def test_semi_supervised_partition_of_the_train_split(protocol):
    manifest = make_manifest("toy", None, CLASSES, _samples(sizes=[40, 30, 20]), seed=5, train_per=0.2,
                             split_protocol=protocol)
    n_train = len(manifest["train"])
    labelled, unlabelled = manifest["labelled"], manifest["unlabelled"]
    assert manifest["unlabelled_source"] == "train"
    assert set(labelled).isdisjoint(unlabelled) and sorted(labelled + unlabelled) == list(range(n_train))
    per_class_train = Counter(lab for _, lab in manifest["train"])
    per_class_labelled = Counter(manifest["train"][i][1] for i in labelled)
    for label, m in per_class_train.items():
        assert per_class_labelled[label] == max(1, int(m * 0.2 + 0.5))
    again = make_manifest("toy", None, CLASSES, _samples(sizes=[40, 30, 20]), seed=5, train_per=0.2,
                          split_protocol=protocol)
    assert again["labelled"] == labelled
    other = make_manifest("toy", None, CLASSES, _samples(sizes=[40, 30, 20]), seed=6, train_per=0.2,
                          split_protocol=protocol)
    assert other["train"] != manifest["train"] or other["labelled"] != labelled


@pytest.mark.parametrize("protocol", ["original", "stratified"])
def test_transductive_mode_recuts_the_classes_and_warns(protocol):
    manifest = make_manifest("toy", None, CLASSES, _samples(), seed=5, split_protocol=protocol)
    with pytest.warns(UserWarning, match="leak"):
        add_semi_supervised(manifest, 0.5, transductive=True)
    with pytest.warns(UserWarning, match="model selection"):
        fresh = make_manifest("toy", None, CLASSES, _samples(), seed=5, split_protocol=protocol,
                              train_per=0.5, transductive=True)
    assert manifest == fresh  # adding the partition to a 70/10/20 manifest re-cuts it the same way
    assert manifest["unlabelled_source"] == "test" and manifest["val"] == manifest["test"]
    assert manifest["unlabelled"] == list(range(len(manifest["test"])))
    assert manifest["labelled"] == list(range(len(manifest["train"])))
    assert sorted(_paths(manifest, "train") + _paths(manifest, "test")) == sorted(p for p, _ in _samples())
    with pytest.raises(DmlrsError, match="--train-per"):
        make_manifest("toy", None, CLASSES, _samples(), transductive=True)
    with pytest.raises(DmlrsError, match="--train-per"):
        add_semi_supervised(manifest, 0.0)
    with pytest.raises(DmlrsError, match=r"\(0, 1\) with --transductive"):
        make_manifest("toy", None, CLASSES, _samples(), train_per=1.0, transductive=True)


def test_stratified_transductive_counts():
    with pytest.warns(UserWarning):
        manifest = make_manifest("toy", None, CLASSES, _samples(), seed=5, split_protocol="stratified",
                                 train_per=0.2, transductive=True)
    # max(1, round half up(n * 0.2)) labelled per class, lists sorted by (label, stem)
    assert Counter(lab for _, lab in manifest["train"]) == {0: 4, 1: 1, 2: 1}
    for key in ("train", "test"):
        assert manifest[key] == sorted(manifest[key], key=lambda p: (p[1], stem_key(p[0])))


def test_unknown_protocol_is_refused():
    with pytest.raises(DmlrsError, match="--split-protocol 'clever'"):
        make_manifest("toy", None, CLASSES, _samples(), split_protocol="clever")
