"""configs/<paper>/<row>.yaml: every row loads, names an existing script whose parser accepts its
args (parse only, nothing runs), and holds the paper's numbers under metric paths."""
import importlib.util
import math

import pytest

from dmlrs.errors import DmlrsError
from dmlrs.reproduce.rows import default_configs_dir, is_metric_path, load_row, load_rows
from dmlrs.reproduce.scripts import resolved_args

CONFIGS = default_configs_dir()
ROWS = load_rows(CONFIGS)


def generator():
    spec = importlib.util.spec_from_file_location("configs_generate", CONFIGS / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_committed_files_are_what_the_generator_writes():
    expected = generator().expected_files(CONFIGS)
    assert len(expected) >= 60
    for path, text in expected.items():
        assert path.read_text(encoding="utf-8") == text, f"{path}: run python configs/generate.py"


@pytest.mark.parametrize("row", ROWS, ids=[r.key for r in ROWS])
def test_every_row_parses_with_its_scripts_parser(row):
    assert row.script_path().is_file()
    assert row.paper == row.path.parent.name and row.name == row.path.stem
    assert row.title and row.source
    assert row.paper_results or row.claim, "a row holds the paper's numbers or its claim"
    for key, value in row.paper_results.items():
        assert is_metric_path(key) and 0 <= value <= 100, key
    args = resolved_args(row)  # raises on a key the script does not have or a value it refuses
    assert args["config"] == str(row.path)


def test_the_rows_of_the_issue_are_there():
    names = {row.key for row in ROWS}
    for dataset in ("nwpu", "aid", "ucmd"):
        for variant in ("snca_ce_mb", "snca_ce_mu", "snca_mb", "snca_mu", "softmax"):
            assert f"snca_ce/{dataset}_{variant}" in names
        assert {f"hr_s2dml/{dataset}_mnce_bnm", f"hr_s2dml/{dataset}_mnce"} <= names
    for variant in ("mb", "mu"):
        for bits in (16, 32, 64, 128):
            assert f"cdne/nwpu_{variant}_{bits}" in names
    for dataset in ("aid", "nwpu"):
        for noise in ("sym", "dep"):
            for rate in (10, 30, 50, 70):
                assert {f"trnsl/{dataset}_trnsl_{noise}_{rate}", f"trnsl/{dataset}_nsl_{noise}_{rate}"} <= names
    for dataset in ("ucmd", "patternnet"):
        for model in ("resnet50", "vgg16"):
            assert f"srl/{dataset}_{model}" in names


def row(key):
    return next(r for r in ROWS if r.key == key)


def test_baselines_resolve_to_the_intended_losses():
    assert resolved_args(row("snca_ce/aid_softmax"))["lambda_"] == 0.0
    snca_only = resolved_args(row("snca_ce/aid_snca_mu"))  # SNCA alone: the MU script without its CE term
    assert (snca_only["ce_weight"], snca_only["lambda_"], snca_only["ema"]) == (0.0, 1.0, 0.999)
    assert row("snca_ce/aid_snca_mu").script == "train_SNCA_CE_MC/main.py"
    assert snca_only["select_metric"] == "knn_acc"
    nsl = resolved_args(row("trnsl/nwpu_nsl_dep_50"))
    assert nsl["truncated"] is False and nsl["q"] == 1e-6 and nsl["noiseType"] == "pairflip"
    assert nsl["noiseRate"] == 0.5 and nsl["dataset"] == "NWPU-RESISC45"
    trnsl = resolved_args(row("trnsl/nwpu_trnsl_dep_50"))
    assert trnsl["truncated"] is True and trnsl["q"] == 0.7
    assert resolved_args(row("hr_s2dml/aid_mnce"))["bnm_weight"] == 0.0
    srl = resolved_args(row("srl/patternnet_vgg16"))
    assert srl["model"] == "vgg16" and srl["lr"] == 0.01  # SRL's own default lr
    assert resolved_args(row("cdne/nwpu_mu_16"))["dim"] == 16


def test_nsl_row_is_the_normalized_softmax_loss():
    """--q 1e-6 without truncation: L_q(p) = -expm1(q log p) / q against -log p in float64."""
    import torch

    from dmlrs.losses.trnsl import box_cox_loss

    log_p = torch.linspace(-50, -1e-6, 1001, dtype=torch.float64)
    value = box_cox_loss(log_p, 1e-6)
    assert torch.allclose(value, -log_p, rtol=5e-5, atol=0)
    # gradient: p^q d(-log p): within the same bound
    assert math.exp(1e-6 * -50) > 1 - 5e-5


def test_published_numbers_are_the_papers():
    assert row("cdne/nwpu_mb_32").paper_results == {"hamming.mAP@100": 99.83}
    assert row("cdne/nwpu_mu_128").paper_results == {"hamming.mAP@100": 99.96}
    assert row("snca_ce/nwpu_snca_ce_mu").paper_results == {"knn_acc": 94.1}
    assert not row("snca_ce/aid_snca_ce_mb").paper_results and row("snca_ce/aid_snca_ce_mb").claim
    srl = row("srl/ucmd_resnet50").paper_results
    assert srl["retrieval.mAP"] == 98.78 and srl["retrieval.P@100"] == 48.96 and srl["retrieval.R@25"] == 49.71
    assert "retrieval.R@25" not in row("srl/ucmd_vgg16").paper_results


@pytest.mark.parametrize("path,ok", [
    ("knn_acc", True), ("knn_acc_clean_gallery", True), ("retrieval.mAP", True), ("retrieval.mAP@R", True),
    ("retrieval.P@10", True), ("retrieval_leave_one_out.R@50", True), ("hamming.mAP@100", True),
    ("hamming.P@H<=2", True), ("AP_per_class.Airport", True),
    ("mAP", False), ("retrieval.P@0", False), ("retrieval.P@k", False), ("hamming.R@10", False),
    ("retrieval.mAP@100", False), ("knn", False), ("foo.mAP", False)])
def test_metric_paths(path, ok):
    assert is_metric_path(path) is ok


def test_bad_row_files_are_one_error_naming_the_file(tmp_path):
    folder = tmp_path / "cdne"
    folder.mkdir()
    good = (CONFIGS / "cdne" / "nwpu_mb_32.yaml").read_text()
    (folder / "nwpu_mb_32.yaml").write_text(good.replace("hamming.mAP@100", "hamming.MAP"))
    with pytest.raises(DmlrsError, match=r"nwpu_mb_32.yaml: paper_results key 'hamming.MAP'"):
        load_row(folder / "nwpu_mb_32.yaml")
    (folder / "other.yaml").write_text(good)
    with pytest.raises(DmlrsError, match=r"other.yaml: .*must be the folder name 'cdne' / the file stem 'other'"):
        load_row(folder / "other.yaml")
    (folder / "nwpu_mb_32.yaml").write_text(good.replace("source:", "sauce:"))
    with pytest.raises(DmlrsError, match=r"nwpu_mb_32.yaml: not a reproduction row, it lacks source"):
        load_row(folder / "nwpu_mb_32.yaml")
