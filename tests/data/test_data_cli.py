"""``python -m dmlrs.data``: summary output, problems reported, exit codes, no tracebacks."""
import shutil
import subprocess
import sys

import pytest

from dmlrs.data.__main__ import main
from dmlrs.data.fixtures import write_fake_dataset


def test_demo_needs_no_data(capsys):
    assert main(["--dataset", "demo"]) == 0
    out = capsys.readouterr().out
    assert "10 classes, 600 images" in out and "train 420 / val 60 / test 120" in out
    assert "stripes_horizontal" in out and "problems found: none" in out


@pytest.fixture
def fake_aid(tmp_path):
    data = write_fake_dataset(tmp_path, "AID", layout="official", per_class=3, size=8)
    industrial = data / "AID" / "Industrial"
    shutil.copyfile(industrial / "industrial_000.jpg", industrial / "industrial_009.jpg")
    return data


def test_reports_classes_split_duplicates_and_counts(fake_aid, capsys):
    assert main(["--dataset", "AID", "--data", str(fake_aid), "--seed", "1", "--split-protocol", "stratified"]) == 0
    out = capsys.readouterr().out
    assert "dataset AID: 30 classes, 91 images" in out and "split protocol stratified, seed 1" in out
    assert "train 31 / val 30 / test 30" in out  # 3 -> 1/1/1 per class; Industrial 4 -> 2/1/1
    assert "Industrial/industrial_000.jpg == Industrial/industrial_009.jpg" in out
    assert "official AID counts" in out and "problems found: " in out and "problems found: none" not in out


def test_original_protocol_is_the_default(fake_aid, capsys):
    assert main(["--dataset", "AID", "--data", str(fake_aid)]) == 0
    out = capsys.readouterr().out
    assert "split protocol original, seed 42" in out
    # int(0.7 * 3), int(0.8 * 3) = 2, 2 -> 2/0/1 per class; Industrial 4: int(2.8), int(3.2) = 2, 3 -> 2/1/1
    assert "train 60 / val 1 / test 30" in out and "val split has no images of 29 class(es)" in out


def test_corrupt_image_is_an_error_unless_skipped(fake_aid, capsys):
    bad = fake_aid / "AID" / "Beach" / "beach_000.jpg"
    bad.write_bytes(b"not a jpeg at all")
    assert main(["--dataset", "AID", "--data", str(fake_aid), "--verify", "full"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"unreadable: {bad} (") and "\nerror: " in err and "beach_000.jpg" in err.splitlines()[-1]
    assert main(["--dataset", "AID", "--data", str(fake_aid), "--skip-corrupt"]) == 0
    out = capsys.readouterr().out
    assert "90 images" in out and f"skipped: {bad} (" in out


def test_missing_data_flag_fails_cleanly(capsys):
    assert main(["--dataset", "AID"]) == 2
    assert "--data" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main([])  # --dataset is required: argparse usage error
    assert info.value.code == 2


def test_module_entry_point_exit_status_without_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "dmlrs.data", "--dataset", "AID", "--data", str(tmp_path / "nowhere")],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and "Traceback" not in result.stderr and result.stdout == ""


def test_the_check_does_not_import_torch():
    """``python -m dmlrs.data`` starts in a fraction of a second: torch is only imported by build_data."""
    code = ("import sys, dmlrs.data.__main__, dmlrs.data.build, dmlrs.data.verify, dmlrs.data.splits\n"
            "from dmlrs.data import prepare_data, load_manifest\n"
            "assert 'torch' not in sys.modules and 'torchvision' not in sys.modules, 'torch imported'\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
