"""Classes too small for the 70/10/20 cut: a split with no image at all stops a training script
before any work with one ``error:`` line (exit status 2) that names the dataset, the empty split,
the images per class the protocol needs and what to do; a split that misses only some classes
is allowed (the original protocol cuts 3 images into 2/0/1) and listed among the problems."""
import json
from pathlib import Path

import pytest

from dmlrs.data import build_data, save_manifest
from dmlrs.data.fixtures import write_image_folder
from dmlrs.data.splits import DEFAULT_FRACTIONS, smallest_class_for, split_counts
from dmlrs.errors import DmlrsError
from tests.engine.scripts import FAST, run_script
from tests.test_cli_validation import one_error_line, train_argv


def folder(tmp_path: Path, name: str, sizes: dict[str, int]) -> Path:
    return write_image_folder(tmp_path / name, sizes, size=24, ext=".png")


def refused(capsys, scenes: Path, out: Path, *extra: str) -> str:
    """Run SNCA_CE; it must exit 2 with one error line and create nothing under ``out``."""
    assert run_script("SNCA_CE", train_argv(scenes, out, *extra)) == 2
    assert not out.exists()
    return one_error_line(capsys)


def test_an_empty_validation_split_is_one_error_before_training(tmp_path, capsys):
    scenes = folder(tmp_path, "six", {f"class_{c}": 6 for c in range(3)})  # int(4.2), int(4.8): 4/0/2
    line = refused(capsys, scenes, tmp_path / "out")
    assert line.startswith(f"error: dataset six ({scenes}): the validation split is empty: the original split "
                           "protocol cuts each class of n images at int(0.7 n) and int(0.8 n), ")
    assert "a validation image from 7 images on (and with 4 or 5)" in line
    assert "the 3 classes here have 6 images each" in line
    assert line.endswith("add images to the classes (at least 7 per class), or use --split-protocol stratified "
                         "(it gives a validation image from 3 images on)")
    # the advice holds: the stratified protocol cuts 6 images into 4/1/1
    bundle = build_data(str(scenes), img_size=8, split_protocol="stratified")
    assert [len(bundle.train), len(bundle.val), len(bundle.test)] == [12, 3, 3]


def test_empty_validation_and_test_splits_are_named_together(tmp_path, capsys):
    scenes = folder(tmp_path, "pairs", {"a": 2, "b": 1})  # stratified: 2/0/0 and 1/0/0
    line = refused(capsys, scenes, tmp_path / "out", "--split-protocol", "stratified")
    assert "the validation and test splits are empty: the stratified split protocol" in line
    assert "a validation image from 3 images on and a test image from 3 images on" in line
    assert "the 2 classes here have 1 or 2 images; add images to the classes (at least 3 per class)" in line
    assert "--split-protocol original" not in line  # 2 -> 1/0/1, 1 -> 0/0/1: no validation image either


def test_an_empty_training_split_is_named(tmp_path, capsys):
    scenes = folder(tmp_path, "singles", {"a": 1, "b": 1, "c": 1})  # original: 0/0/1
    line = refused(capsys, scenes, tmp_path / "out")
    assert "the training and validation splits are empty" in line
    assert "a training image from 2 images on and a validation image from 7 images on" in line
    assert "have 1 image each" in line and "at least 7 per class" in line


def test_a_split_file_without_validation_images_is_refused(tmp_path, capsys):
    scenes = folder(tmp_path, "six", {f"class_{c}": 6 for c in range(2)})
    split = save_manifest(build_data(str(scenes), img_size=8, check_splits=False).manifest, tmp_path / "split.json")
    assert json.loads(split.read_text())["val"] == []
    line = refused(capsys, scenes, tmp_path / "out", "--split-file", str(split))
    assert f"the validation split is empty in split file {split}" in line and "omit --split-file" in line


def test_classes_missing_from_some_splits_are_allowed_and_reported(tmp_path, capsys):
    """1 image -> 0/0/1, 3 -> 2/0/1, 6 -> 4/0/2 (original); the two 10-image classes fill every split."""
    scenes = folder(tmp_path, "mixed", {"a": 1, "b": 3, "c": 6, "d": 10, "e": 10})
    out = tmp_path / "out"
    assert run_script("SNCA_CE", ["--dataset", str(scenes), "--epochs", "1", "--steps-per-epoch", "1",
                                  "--out", str(out), *FAST]) == 0
    printed = capsys.readouterr().out
    assert "the train split has no images of 1 class(es) (original split protocol, classes too small): a" in printed
    assert "the val split has no images of 3 class(es) (original split protocol, classes too small): a, b, c" \
        in printed
    report = json.loads(next(out.rglob("test_metrics.json")).read_text())
    assert set(report["AP_per_class"]) == {"b", "c", "d", "e"}  # class a has no training (gallery) image
    assert report["retrieval"]["num_queries"] == 7 and report["retrieval"]["num_queries_without_relevant"] == 1
    assert 0.0 <= report["retrieval"]["mAP"] <= 1.0 and 0.0 <= report["knn_acc"] <= 1.0


def _original_parts(n: int) -> tuple[int, int, int]:
    """The original code's cut, written out: int(0.7 n) / int(0.8 n)."""
    cut1, cut2 = int(0.7 * n), int(0.8 * n)
    return cut1, cut2 - cut1, n - cut2


@pytest.mark.parametrize("protocol", ["original", "stratified"])
@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_smallest_class_for_matches_a_scan_of_every_class_size(protocol, split):
    parts = _original_parts if protocol == "original" else (lambda n: split_counts(n, DEFAULT_FRACTIONS))
    position = ("train", "val", "test").index(split)
    has = [n for n in range(1, 500) if parts(n)[position] > 0]
    needed, exceptions = smallest_class_for(split, protocol)
    assert all(n in has for n in range(needed, 500))
    assert needed - 1 not in has and [n for n in has if n < needed] == exceptions
    assert (needed, exceptions) == {("original", "train"): (2, []), ("original", "val"): (7, [4, 5]),
                                    ("original", "test"): (1, []), ("stratified", "train"): (1, []),
                                    ("stratified", "val"): (3, []), ("stratified", "test"): (3, [])}[protocol, split]


def test_a_zero_fraction_never_fills_its_split():
    assert smallest_class_for("val", "original", (0.8, 0.0, 0.2)) == (None, [])
    with pytest.raises(DmlrsError, match="fractions"):
        smallest_class_for("val", "original", (0.8, 0.3, 0.2))
