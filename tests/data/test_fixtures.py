"""Fake datasets: the promised files, layouts and extensions; seeded; classes visibly different."""
import colorsys

import numpy as np
import pytest
from PIL import Image

from dmlrs.data.fixtures import write_fake_dataset, write_image_folder
from dmlrs.data.specs import DATASET_SPECS
from dmlrs.errors import DmlrsError


def _files(folder):
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize("layout,where", [("official", "UCMerced_LandUse/Images"), ("named", "UCMD"), ("direct", ".")])
def test_layouts_put_class_folders_where_promised(tmp_path, layout, where):
    data = write_fake_dataset(tmp_path, "ucmerced", layout=layout, per_class=2, size=4)
    assert data == tmp_path
    class_root = tmp_path / where
    assert _files(class_root) == list(DATASET_SPECS["UCMD"].classes)
    assert _files(class_root / "beach") == ["beach_000.tif", "beach_001.tif"]


@pytest.mark.parametrize("name", list(DATASET_SPECS))
def test_official_extension_and_size(tmp_path, name):
    spec = DATASET_SPECS[name]
    write_fake_dataset(tmp_path, name, classes=spec.classes[:2], per_class=1, size=5)
    folder = tmp_path / spec.archive_layout / spec.classes[1]
    (file,) = folder.iterdir()
    assert file.suffix == spec.extension
    with Image.open(file) as image:
        assert (image.mode, image.size) == ("RGB", (5, 5))


def test_classes_counts_and_extension_options(tmp_path):
    write_fake_dataset(tmp_path, "AID", layout="direct", per_class={"Beach": 3, "Pond": 1}, ext=".png")
    assert _files(tmp_path) == ["Beach", "Pond"]
    assert _files(tmp_path / "Beach") == ["beach_000.png", "beach_001.png", "beach_002.png"]
    assert len(_files(tmp_path / "Pond")) == 1


def test_write_image_folder(tmp_path):
    root = write_image_folder(tmp_path / "g", {"x": 2, "y": 0}, size=3, ext=".bmp")
    assert root == tmp_path / "g"
    assert _files(root / "x") == ["x_000.bmp", "x_001.bmp"] and _files(root / "y") == []


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        write_image_folder(tmp_path / name, {"k": 2}, size=4, seed=seed)
    read = {name: [(tmp_path / name / "k" / f).read_bytes() for f in ("k_000.png", "k_001.png")] for name in "abc"}
    assert read["a"] == read["b"]
    assert read["a"][0] != read["c"][0]
    assert read["a"][0] != read["a"][1]  # images within a class differ too


def test_classes_are_told_apart_by_their_tint(tmp_path):
    """Nearest-tint rule over mean colours (explicit loops) recovers every class of NWPU's 45.

    Adjacent tints are ~20 grey levels apart; the mean of 256 noisy pixels is off by ~1.9.
    """
    spec = DATASET_SPECS["NWPU-RESISC45"]
    write_fake_dataset(tmp_path, "NWPU", layout="direct", per_class=2, ext=".png")  # default 16x16
    tints = [np.array(colorsys.hsv_to_rgb(i / 45, 1.0, 1.0)) * 255 for i in range(45)]
    for label, name in enumerate(spec.classes):
        for file in (tmp_path / name).iterdir():
            pixels = np.asarray(Image.open(file), dtype=np.float64)
            mean = pixels.reshape(-1, 3).mean(axis=0)
            noise_mean = np.full(3, 127.5)
            distances = [np.linalg.norm(mean - (0.6 * tint + 0.4 * noise_mean)) for tint in tints]
            assert int(np.argmin(distances)) == label


def test_bad_arguments(tmp_path):
    with pytest.raises(DmlrsError, match="unknown dataset"):
        write_fake_dataset(tmp_path, "imagenet")
    with pytest.raises(DmlrsError, match="layout"):
        write_fake_dataset(tmp_path, "AID", layout="flat")
