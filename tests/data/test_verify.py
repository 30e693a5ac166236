"""Image verification: ``python -m dmlrs.data`` decodes every image by default, lists every bad file
(exit status 2, or 0 with --skip-corrupt), checks in parallel, and remembers decoded files in a
cache keyed by (path, size, mtime_ns) that is ignored with a note when unusable."""
import json
import os
from pathlib import Path

import pytest

from dmlrs.data import build_data
from dmlrs.data.__main__ import main
from dmlrs.data.fixtures import truncate_file, write_fake_dataset, write_image_folder
from dmlrs.data.scan import CorruptImagesError, scan_dataset
from dmlrs.data.verify import PARALLEL_MIN_FILES, available_cores, cache_dir, cache_file, check_images
from dmlrs.errors import DmlrsError


@pytest.fixture
def aid(tmp_path):
    """A fake AID (30 classes x 2 images of 64 x 64, big enough for a truncated JPEG to keep its header)."""
    return write_fake_dataset(tmp_path / "data", "AID", layout="official", per_class=2, size=64)


def _run(args, capsys):
    status = main(args)
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_truncated_jpeg_fails_the_default_check(aid, capsys):
    bad = truncate_file(aid / "AID" / "Beach" / "beach_001.jpg")
    args = ["--dataset", "AID", "--data", str(aid), "--no-progress"]
    status, out, err = _run(args + ["--verify", "header"], capsys)  # the quick mode cannot see it
    assert status == 0 and "60 images" in out
    status, out, err = _run(args, capsys)  # default: full decode
    assert status == 2 and out == ""
    lines = err.splitlines()
    assert lines[0].startswith(f"unreadable: {bad} (OSError: image file is truncated")
    assert lines[-1].startswith(f"error: corrupt image {bad} (") and "--skip-corrupt" in lines[-1]
    assert len(lines) == 2 and "Traceback" not in err


def test_every_bad_file_is_listed_and_skip_corrupt_leaves_them_out(aid, capsys):
    bad = [truncate_file(aid / "AID" / "Beach" / "beach_001.jpg"),
           aid / "AID" / "Airport" / "airport_000.jpg", aid / "AID" / "Port" / "port_001.jpg"]
    bad[1].write_bytes(b"not an image")
    bad[2].write_bytes(b"")
    args = ["--dataset", "AID", "--data", str(aid), "--no-progress"]
    status, _, err = _run(args, capsys)
    assert status == 2
    listed = [line for line in err.splitlines() if line.startswith("unreadable: ")]
    assert sorted(line.split(" (")[0] for line in listed) == sorted(f"unreadable: {p}" for p in bad)
    last = err.splitlines()[-1]
    assert last.startswith(f"error: 3 corrupt images under {aid / 'AID'}: Airport/airport_000.jpg (")
    assert "Beach/beach_001.jpg (OSError: image file is truncated" in last and "Port/port_001.jpg (" in last
    status, out, _ = _run(args + ["--skip-corrupt"], capsys)
    assert status == 0 and "57 images" in out and "left out 3 corrupt images" in out
    assert sorted(line.split(" (")[0] for line in out.splitlines() if line.startswith("skipped: ")) == \
        sorted(f"skipped: {p}" for p in bad)


def test_second_check_is_served_by_the_cache(aid, capsys, private_verification_cache):
    args = ["--dataset", "AID", "--data", str(aid), "--no-progress"]
    status, out, _ = _run(args, capsys)
    assert status == 0 and "checked: decoded 60 images" in out
    path = cache_file(aid / "AID")
    assert path.parent.parent == private_verification_cache and path.is_file()
    entries = json.loads(path.read_text())["files"]
    assert len(entries) == 60 and entries["Beach/beach_000.jpg"][2:] == ["ok", "RGB", 64, 64]
    status, out, _ = _run(args, capsys)
    assert status == 0 and "checked: all 60 images unchanged since the last full check (cache " in out
    assert "none decoded" in out
    assert not list(path.parent.glob("*.tmp"))  # written atomically


def test_a_changed_file_is_decoded_again(aid):
    root = aid / "AID"
    relpaths = sorted(f"{c.name}/{f.name}" for c in root.iterdir() for f in c.iterdir())
    assert check_images(root, relpaths, decode=True).checked == 60
    same_size = root / "Beach" / "beach_000.jpg"
    stat = same_size.stat()
    os.utime(same_size, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))  # touched: mtime differs
    port = root / "Port" / "port_000.jpg"
    port_mtime = port.stat().st_mtime_ns
    truncate_file(port)
    os.utime(port, ns=(port_mtime, port_mtime))  # same mtime, other size
    report = check_images(root, relpaths, decode=True)
    assert report.checked == 2 and report.cached == 58
    (bad,) = [rel for rel, result in zip(relpaths, report.results) if not result.ok]
    assert bad == "Port/port_000.jpg"
    again = check_images(root, relpaths, decode=True)
    assert again.checked == 1 and not again.results[relpaths.index(bad)].ok  # bad files are always re-decoded


def test_header_check_reports_what_the_last_full_check_found(aid):
    bad = truncate_file(aid / "AID" / "Beach" / "beach_001.jpg")
    # 2 images per class leave the validation split empty: check_splits=False builds it anyway
    build_data("AID", aid, check_splits=False)  # header check: passes, no cache yet
    with pytest.raises(CorruptImagesError):
        scan_dataset("AID", aid, verify="full")
    with pytest.raises(DmlrsError) as info:
        build_data("AID", aid)  # the training default now knows the file cannot be decoded
    assert str(bad) in str(info.value) and "found by the last full check" in str(info.value)
    bundle = build_data("AID", aid, skip_corrupt=True, check_splits=False)
    assert bundle.skipped == ["Beach/beach_001.jpg"] and len(bundle.manifest["file_sizes"]) == 59
    without_cache = build_data("AID", aid, use_cache=False, check_splits=False)  # header only
    assert without_cache.num_classes == 30


def test_parallel_check_equals_the_serial_one(tmp_path):
    n = PARALLEL_MIN_FILES + 6
    root = write_image_folder(tmp_path / "f", {"a": n // 2, "b": n - n // 2}, size=64, ext=".jpg")
    truncate_file(root / "a" / "a_003.jpg")
    (root / "b" / "b_010.jpg").write_bytes(b"junk")
    relpaths = sorted(f"{c.name}/{f.name}" for c in root.iterdir() for f in c.iterdir())
    serial = check_images(root, relpaths, decode=True, workers=1, use_cache=False)
    parallel = check_images(root, relpaths, decode=True, workers=2, use_cache=False)
    assert parallel.workers == 2 and serial.workers == 1 and parallel.checked == serial.checked == n
    assert parallel.results == serial.results
    assert [rel for rel, r in zip(relpaths, parallel.results) if not r.ok] == ["a/a_003.jpg", "b/b_010.jpg"]
    header = check_images(root, relpaths, decode=False, workers=2, use_cache=False)
    assert [rel for rel, r in zip(relpaths, header.results) if not r.ok] == ["b/b_010.jpg"]


def test_cache_location(monkeypatch, tmp_path):
    monkeypatch.setenv("DMLRS_CACHE", str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("DMLRS_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "dmlrs"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "dmlrs"
    monkeypatch.chdir(tmp_path)
    assert cache_file("data/AID") == cache_file(tmp_path / "data" / "AID") != cache_file(tmp_path / "data")
    assert cache_file("data/AID").parent == tmp_path / "home" / ".cache" / "dmlrs" / "verified"
    assert available_cores() >= 1


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", json.dumps({"version": 99, "files": {}}), "\xff\xfe"])
def test_unreadable_cache_is_ignored_with_a_note(aid, content):
    root = aid / "AID"
    relpaths = ["Beach/beach_000.jpg", "Port/port_000.jpg"]
    path = cache_file(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content, encoding="latin-1")
    report = check_images(root, relpaths, decode=True)
    assert all(r.ok for r in report.results) and report.checked == 2
    (note,) = report.notes
    assert note.startswith(f"ignored the unreadable verification cache {path} (") and "\n" not in note
    assert json.loads(path.read_text())["version"] == 1  # replaced by a good one
    assert check_images(root, relpaths, decode=True).checked == 0


def test_cache_folder_that_cannot_be_written_is_skipped_with_a_note(aid, monkeypatch, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("DMLRS_CACHE", str(blocker / "cache"))  # cannot be created, even by root
    status, out, _ = _run(["--dataset", "AID", "--data", str(aid), "--no-progress"], capsys)
    assert status == 0
    (note,) = [line for line in out.splitlines() if "verification cache" in line]
    assert note.startswith(f"checked: could not write the verification cache {blocker / 'cache'}")
    assert "DMLRS_CACHE" in note


def test_no_cache_flag_neither_reads_nor_writes(aid, capsys, private_verification_cache):
    status, out, _ = _run(["--dataset", "AID", "--data", str(aid), "--no-progress", "--no-cache"], capsys)
    assert status == 0 and "decoded 60 images" in out
    assert not list(Path(private_verification_cache).rglob("*.json"))
