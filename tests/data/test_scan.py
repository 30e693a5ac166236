"""scan_dataset on tiny generated folders: layouts, aliases, generic folders, every error, checks."""
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dmlrs.data.fixtures import write_fake_dataset, write_image_folder
from dmlrs.data.scan import _count_warnings, candidate_roots, find_duplicates, scan_dataset
from dmlrs.data.specs import DATASET_SPECS
from dmlrs.errors import DmlrsError

ROOT_IN_LAYOUT = {  # dataset -> (official layout root, named layout root), relative to --data
    "UCMD": ("UCMerced_LandUse/Images", "UCMD"),
    "AID": ("AID", "AID"),
    "NWPU-RESISC45": ("NWPU-RESISC45", "NWPU-RESISC45"),
    "PatternNet": ("PatternNet/images", "PatternNet"),
}


def _expected_samples(root, classes):
    """(relative path, label) for every image file, built with explicit loops and sorted."""
    expected = []
    for label, name in enumerate(classes):
        for file in (root / name).iterdir():
            expected.append((f"{name}/{file.name}", label))
    return sorted(expected)


@pytest.fixture(scope="module")
def ucmd_data(tmp_path_factory):
    return write_fake_dataset(tmp_path_factory.mktemp("ucmd"), "UCMD", per_class=1, size=4)


@pytest.mark.parametrize("layout", ["official", "named", "direct"])
@pytest.mark.parametrize("name", list(DATASET_SPECS))
def test_every_dataset_in_every_layout(tmp_path, name, layout):
    spec = DATASET_SPECS[name]
    data = write_fake_dataset(tmp_path, name, layout=layout, per_class=1, size=4)
    index = scan_dataset(name, data)
    relative_root = {"official": ROOT_IN_LAYOUT[name][0], "named": ROOT_IN_LAYOUT[name][1], "direct": "."}[layout]
    assert index.root.resolve() == (tmp_path / relative_root).resolve()
    assert index.name == name and index.spec is spec
    assert index.classes == list(spec.classes)
    assert index.samples == _expected_samples(index.root, index.classes)
    assert all(rel.endswith(spec.extension) for rel, _ in index.samples)
    assert index.skipped == [] and index.duplicates == []
    assert any("differ from the official" in w for w in index.warnings)  # 1 image per class, a subset


@pytest.mark.parametrize("alias", ["ucmerced", "UCM", "UCMD", "UC_Merced", "UCMERCED", "uc_merced"])
def test_every_ucmd_alias(ucmd_data, alias):
    index = scan_dataset(alias, ucmd_data, verify="none")
    assert index.name == "UCMD" and len(index.samples) == 21


@pytest.mark.parametrize("alias", ["NWPU45", "nwpu-resisc45", "RESISC45", "nwpu", "aid", "PATTERNNET"])
def test_other_aliases(tmp_path, alias):
    data = write_fake_dataset(tmp_path, alias, layout="direct", per_class=1, size=4)
    assert scan_dataset(alias, data, verify="none").name in {"NWPU-RESISC45", "AID", "PatternNet"}


def test_data_may_be_the_unpacked_archive_folder(ucmd_data):
    index = scan_dataset("ucmerced", ucmd_data / "UCMerced_LandUse", verify="none")
    assert index.root == ucmd_data / "UCMerced_LandUse" / "Images"


def test_named_folder_is_matched_ignoring_case(tmp_path):
    write_fake_dataset(tmp_path / "tmp", "UCMD", layout="direct", per_class=1, size=4)
    (tmp_path / "tmp").rename(tmp_path / "UCMerced")  # "ucmerced" is an alias
    assert scan_dataset("UCMD", tmp_path, verify="none").root == tmp_path / "UCMerced"


def test_candidate_order_is_documented_order(tmp_path):
    spec = DATASET_SPECS["UCMD"]
    assert candidate_roots(spec, tmp_path) == [
        tmp_path / "UCMerced_LandUse/Images", tmp_path / "Images", tmp_path / "UCMD",
        tmp_path / "ucmerced", tmp_path / "UCM", tmp_path / "UC_Merced", tmp_path,
    ]


def test_root_with_most_class_folders_wins_then_earliest(tmp_path):
    write_fake_dataset(tmp_path, "UCMD", layout="named", classes=["beach", "river"], per_class=1, size=4)
    write_fake_dataset(tmp_path, "UCMD", layout="official", per_class=1, size=4)
    assert scan_dataset("UCMD", tmp_path, verify="none").root == tmp_path / "UCMerced_LandUse/Images"
    write_fake_dataset(tmp_path, "UCMD", layout="named", per_class=1, size=4)  # now a tie: official first
    assert scan_dataset("UCMD", tmp_path, verify="none").root == tmp_path / "UCMerced_LandUse/Images"


# ------------------------------------------------------------------ errors for known datasets


def test_known_dataset_without_data_asks_for_it():
    with pytest.raises(DmlrsError, match="--data"):
        scan_dataset("AID", None)


def test_data_folder_that_does_not_exist(tmp_path):
    with pytest.raises(DmlrsError) as info:
        scan_dataset("AID", tmp_path / "nope")
    assert str(tmp_path / "nope") in str(info.value) and DATASET_SPECS["AID"].url in str(info.value)


def test_dataset_not_found_lists_tried_paths_and_download(tmp_path):
    (tmp_path / "UCMerced_LandUse" / "Images").mkdir(parents=True)
    with pytest.raises(DmlrsError) as info:
        scan_dataset("ucmerced", tmp_path)
    message = str(info.value)
    for tried in candidate_roots(DATASET_SPECS["UCMD"], tmp_path):
        assert str(tried) in message
    assert DATASET_SPECS["UCMD"].url in message


def test_missing_classes_are_listed(tmp_path):
    spec = DATASET_SPECS["UCMD"]
    present = [c for c in spec.classes if c not in ("beach", "river", "runway")]
    data = write_fake_dataset(tmp_path, "UCMD", classes=present, per_class=1, size=4)
    with pytest.raises(DmlrsError) as info:
        scan_dataset("UCMD", data)
    assert "3 of the 21" in str(info.value)
    assert "beach, river, runway" in str(info.value)


def test_missing_class_with_wrong_case_gets_a_hint(tmp_path):
    data = write_fake_dataset(tmp_path, "AID", layout="direct", per_class=1, size=4)
    (data / "Airport").rename(data / "airport")
    with pytest.raises(DmlrsError, match="'airport' should be named 'Airport'"):
        scan_dataset("AID", data)


def test_empty_class_is_named(tmp_path):
    data = write_fake_dataset(tmp_path, "UCMD", layout="direct", per_class=1, size=4)
    for file in (data / "forest").iterdir():
        file.unlink()
    (data / "forest" / "notes.txt").write_text("no images here")
    with pytest.raises(DmlrsError, match="empty class folders .*: forest\\."):
        scan_dataset("UCMD", data)


def test_extra_folders_and_other_extensions_are_warnings(tmp_path):
    data = write_fake_dataset(tmp_path, "UCMD", layout="direct", per_class=1, size=4, ext=".png")
    (data / "not_a_class").mkdir()
    index = scan_dataset("UCMD", data)
    assert "not_a_class" not in index.classes
    assert any("not_a_class" in w and "not UCMD classes" in w for w in index.warnings)
    assert any("21 images are not .tif" in w for w in index.warnings)
    assert any("not 256x256" in w and "4x4: 21" in w for w in index.warnings)


def test_count_warning_names_the_differing_classes(tmp_path):
    spec = DATASET_SPECS["UCMD"]
    counts = {name: 1 for name in spec.classes}
    counts["harbor"] = 2
    index = scan_dataset("UCMD", write_fake_dataset(tmp_path, "UCMD", per_class=counts, size=4))
    assert index.class_counts() == counts
    (warning,) = [w for w in index.warnings if "official UCMD counts" in w]
    first_five = ", ".join(f"{name} {counts[name]}/100" for name in spec.classes[:5])
    assert f"21 of 21 classes differ from the official UCMD counts (found/official): {first_five}, ... (21 in all)" \
        in warning
    assert "22 images vs 2100" in warning


def test_official_counts_give_no_count_warning():
    for spec in DATASET_SPECS.values():
        assert _count_warnings(spec, spec.expected_counts) == []
        fewer = dict(spec.expected_counts, **{spec.classes[-1]: 1})
        assert len(_count_warnings(spec, fewer)) == 1


def test_unknown_verify_mode(ucmd_data):
    with pytest.raises(DmlrsError, match="--verify"):
        scan_dataset("UCMD", ucmd_data, verify="quick")


# ------------------------------------------------------------------ generic folders


def test_unknown_name_that_is_no_folder(tmp_path):
    with pytest.raises(DmlrsError) as info:
        scan_dataset("imagenet", tmp_path)
    message = str(info.value)
    for name in ("UCMD", "ucmerced", "AID", "NWPU-RESISC45", "RESISC45", "PatternNet"):
        assert name in message
    assert "folder" in message and str(tmp_path / "imagenet") in message


def test_generic_folder_classes_sorted_and_files_filtered(tmp_path):
    root = tmp_path / "scenes"
    write_image_folder(root, {"zebra": 2, "Apple": 1, "mango": 1}, size=4)  # not in sorted order
    Image.new("RGB", (4, 4)).save(root / "mango" / "UPPER.JPG")
    Image.new("RGB", (4, 4)).save(root / "mango" / "Mixed.Png")
    Image.new("RGB", (4, 4)).save(root / "mango" / "x.TIFF", format="TIFF")
    Image.new("RGB", (4, 4)).save(root / "mango" / "y.jpeg")
    Image.new("RGB", (4, 4)).save(root / "mango" / "z.bmp")
    Image.new("RGB", (4, 4)).save(root / "mango" / "w.WebP")
    (root / "mango" / "readme.txt").write_text("x")
    (root / "mango" / "Thumbs.db").write_bytes(b"\0")
    (root / "mango" / ".DS_Store").write_bytes(b"\0")
    (root / "mango" / "nested").mkdir()
    (root / ".ipynb_checkpoints").mkdir()
    (root / "notes.md").write_text("not a class")
    index = scan_dataset(root, None)
    assert index.name == "scenes" and index.spec is None and index.root == root
    assert index.classes == ["Apple", "mango", "zebra"]
    mango = sorted(rel for rel, label in index.samples if label == 1)
    assert mango == sorted(f"mango/{n}" for n in
                           ["mango_000.png", "UPPER.JPG", "Mixed.Png", "x.TIFF", "y.jpeg", "z.bmp", "w.WebP"])
    assert index.samples == sorted(index.samples)
    assert [label for rel, label in index.samples if rel.startswith("zebra/")] == [2, 2]
    (warning,) = [w for w in index.warnings if "not images" in w]
    assert "3 entries" in warning and "mango/nested/" in warning


def test_generic_folder_by_name_under_data(tmp_path):
    write_image_folder(tmp_path / "my_scenes", {"a": 1, "b": 1}, size=4)
    index = scan_dataset("my_scenes", tmp_path)
    assert index.root == tmp_path / "my_scenes" and index.classes == ["a", "b"]


def test_listing_order_does_not_matter(tmp_path, monkeypatch):
    root = write_image_folder(tmp_path / "d", {"b": 3, "a": 2, "c": 1}, size=4)
    forward = scan_dataset(root, None)
    original = Path.iterdir
    monkeypatch.setattr(Path, "iterdir", lambda self: iter(sorted(original(self), reverse=True)))
    backward = scan_dataset(root, None)
    assert (backward.classes, backward.samples) == (forward.classes, forward.samples)


def test_folder_without_class_folders(tmp_path):
    with pytest.raises(DmlrsError, match="no class folders"):
        scan_dataset(tmp_path, None)
    Image.new("RGB", (4, 4)).save(tmp_path / "loose.png")
    with pytest.raises(DmlrsError, match="directly holds 1 images"):
        scan_dataset(tmp_path, None)


# ------------------------------------------------------------------ corrupt files, modes, duplicates


@pytest.fixture
def folder(tmp_path):
    return write_image_folder(tmp_path / "f", {"a": 2, "b": 2}, size=8, ext=".jpg")


def test_corrupt_file_error_and_skip(folder):
    (folder / "a" / "bad.jpg").write_bytes(b"definitely not a jpeg")
    with pytest.raises(DmlrsError) as info:
        scan_dataset(folder, None)
    assert str(folder / "a" / "bad.jpg") in str(info.value) and "--skip-corrupt" in str(info.value)
    index = scan_dataset(folder, None, skip_corrupt=True)
    assert index.skipped == ["a/bad.jpg"]
    assert "a/bad.jpg" not in [rel for rel, _ in index.samples] and len(index.samples) == 4
    assert any("left out 1 corrupt" in w for w in index.warnings)
    assert len(scan_dataset(folder, None, verify="none").samples) == 5  # not opened at all


def test_truncated_file_needs_full_verification(folder):
    path = folder / "b" / "b_000.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:-400])
    assert len(scan_dataset(folder, None, verify="header").samples) == 4  # the header is intact
    with pytest.raises(DmlrsError, match="b_000.jpg"):
        scan_dataset(folder, None, verify="full")
    index = scan_dataset(folder, None, verify="full", skip_corrupt=True)
    assert index.skipped == ["b/b_000.jpg"] and len(index.samples) == 3


def test_class_whose_every_image_is_corrupt(folder):
    for file in (folder / "b").iterdir():
        file.write_bytes(b"junk")
    with pytest.raises(DmlrsError, match="empty class folders .*: b\\."):
        scan_dataset(folder, None, skip_corrupt=True)


def test_non_rgb_modes_are_reported(folder):
    Image.new("L", (4, 4)).save(folder / "a" / "gray.png")
    Image.new("RGBA", (4, 4)).save(folder / "b" / "alpha.png")
    Image.new("RGBA", (4, 4)).save(folder / "b" / "alpha2.png")
    (warning,) = [w for w in scan_dataset(folder, None).warnings if "non-RGB" in w]
    assert "L: 1" in warning and "RGBA: 2" in warning


def _reference_duplicates(root, relative_paths):
    """Every later byte-identical copy paired with the first path equal to it (explicit loops)."""
    pairs = []
    ordered = sorted(relative_paths)
    for j, later in enumerate(ordered):
        for first in ordered[:j]:
            if (root / first).read_bytes() == (root / later).read_bytes():
                pairs.append((first, later))
                break
    return sorted(pairs)


def test_duplicates_match_slow_reference(folder):
    shutil.copy(folder / "a" / "a_000.jpg", folder / "a" / "a_copy.jpg")
    shutil.copy(folder / "a" / "a_000.jpg", folder / "b" / "across_classes.jpg")
    # same size, different bytes: must not be reported
    Image.new("RGB", (4, 4), (1, 2, 3)).save(folder / "a" / "p.bmp")
    Image.new("RGB", (4, 4), (3, 2, 1)).save(folder / "b" / "q.bmp")
    assert (folder / "a" / "p.bmp").stat().st_size == (folder / "b" / "q.bmp").stat().st_size
    index = scan_dataset(folder, None, check_duplicates=True)
    relative = [rel for rel, _ in index.samples]
    assert index.duplicates == _reference_duplicates(folder, relative)
    assert index.duplicates == [("a/a_000.jpg", "a/a_copy.jpg"), ("a/a_000.jpg", "b/across_classes.jpg")]
    assert find_duplicates(folder, relative) == index.duplicates
    assert any("2 byte-identical" in w for w in index.warnings)
    assert scan_dataset(folder, None).duplicates == []  # only on request
