"""python -m dmlrs.report: generated run folders -> rows, mean +- std over seeds, the paper's numbers
and the differences, right in Markdown, CSV and LaTeX."""
import csv
import io
import json
import math

import pytest

from dmlrs.report.__main__ import main
from dmlrs.reproduce.rows import load_row
from dmlrs.reproduce.scripts import resolved_args
from tests.engine.scripts import REPO

CDNE_ROW = """paper: cdne
row: nwpu_mb_32
title: "CDNE (MB), 32 bits, NWPU-RESISC45"
script: train_CDNE/main.py
args:
  dataset: NWPU-RESISC45
  dim: 32
  memory: bank
paper_results:
  hamming.mAP@100: 99.83
  knn_acc: 95.5
source: "Table I"
"""
SOFTMAX_ROW = """paper: snca_ce
row: aid_softmax
title: "Softmax baseline, AID"
script: train_SNCA_CE/main.py
args:
  dataset: AID
  lambda_: 0
paper_results: {}
source: "paper"
claim: "SNCA-CE beats it"
"""
#: per CDNE seed: (hamming mAP@100, kNN accuracy, mAP) as fractions, as test_metrics.json holds them
CDNE_SEEDS = {1: (0.90, 0.50, 0.301), 2: (0.92, 0.60, 0.402), 3: (0.97, 0.70, 0.503)}


def mean_std(values):
    """float64 loops: mean and the sample standard deviation, in percent."""
    values = [100.0 * v for v in values]
    mean = 0.0
    for v in values:
        mean += v
    mean /= len(values)
    square = 0.0
    for v in values:
        square += (v - mean) ** 2
    return mean, math.sqrt(square / (len(values) - 1))


def write_run(folder, method, args, metrics):
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"method": method, "args": args}))
    (folder / "test_metrics.json").write_text(json.dumps(metrics))


@pytest.fixture
def runs(tmp_path):
    """A configs folder with two rows, and run folders: 3 seeds of the CDNE row at 5 epochs, one CDNE
    run on another dataset, a softmax run without --config, a run outside every row."""
    for name in ("train_CDNE", "train_SNCA_CE"):
        (tmp_path / name).symlink_to(REPO / name)
    for paper, name, text in (("cdne", "nwpu_mb_32", CDNE_ROW), ("snca_ce", "aid_softmax", SOFTMAX_ROW)):
        (tmp_path / "configs" / paper).mkdir(parents=True)
        (tmp_path / "configs" / paper / f"{name}.yaml").write_text(text)
    cdne = load_row(tmp_path / "configs" / "cdne" / "nwpu_mb_32.yaml")
    softmax = load_row(tmp_path / "configs" / "snca_ce" / "aid_softmax.yaml")
    out = tmp_path / "runs"
    for seed, (hamming, knn, m_ap) in CDNE_SEEDS.items():
        args = {**resolved_args(cdne, ["--epochs", "5"]), "seed": seed}
        write_run(out / f"cdne{seed}", "CDNE", args, {"knn_acc": knn, "retrieval": {"mAP": m_ap, "P@10": 0.5},
                                                      "hamming": {"mAP@100": hamming, "mAP": 0.5, "P@H<=2": 0.3}})
    args = resolved_args(cdne, ["--dataset", "AID"])
    write_run(out / "cdne_aid", "CDNE", args, {"knn_acc": 0.25, "hamming": {"mAP@100": 0.4}})
    args = {**resolved_args(softmax), "config": None}  # started without --config: matched by its settings
    write_run(out / "nested" / "softmax", "SNCA_CE", args, {"knn_acc": 0.8, "retrieval": {"mAP": 0.6}})
    args = {**resolved_args(softmax, ["--lambda_", "0.5"]), "config": None}
    write_run(out / "other", "SNCA_CE", args, {"knn_acc": 0.7})
    return tmp_path


def report(runs, capsys, *extra):
    assert main([str(runs / "runs"), "--configs", str(runs / "configs"), *extra]) == 0
    return capsys.readouterr().out


def md_rows(text):
    return {line.split(" | ")[0].lstrip("| "): [c.strip() for c in line.strip("|\n ").split(" | ")]
            for line in text.splitlines() if line.startswith("| ") and not line.startswith("| row")}


def test_markdown_mean_std_paper_and_difference(runs, capsys):
    text = report(runs, capsys)
    rows = md_rows(text)
    header = next(line for line in text.splitlines() if line.startswith("| row") and "Hamming" in line)
    names = [c.strip() for c in header.strip("| ").split(" | ")]
    assert names[:5] == ["row", "n", "Hamming mAP@100 ours", "Hamming mAP@100 paper", "Hamming mAP@100 diff"]
    line = dict(zip(names, rows["CDNE (MB), 32 bits, NWPU-RESISC45"]))
    mean, std = mean_std([h for h, _, _ in CDNE_SEEDS.values()])
    assert line["n"] == "3"
    assert line["Hamming mAP@100 ours"] == f"{mean:.2f} ± {std:.2f}" == "93.00 ± 3.61"
    assert line["Hamming mAP@100 paper"] == "99.83"
    assert line["Hamming mAP@100 diff"] == f"{mean - 99.83:+.2f}" == "-6.83"
    mean, std = mean_std([k for _, k, _ in CDNE_SEEDS.values()])
    assert line["kNN acc ours"] == f"{mean:.2f} ± {std:.2f}" == "60.00 ± 10.00"
    assert line["kNN acc diff"] == "-35.50"
    assert line["mAP"] == "{:.2f} ± {:.2f}".format(*mean_std([m for _, _, m in CDNE_SEEDS.values()]))
    # the run on another dataset is not the row: own line, no paper numbers
    changed = dict(zip(names, rows["CDNE (MB), 32 bits, NWPU-RESISC45, run with dataset AID"]))
    assert changed["n"] == "1" and changed["Hamming mAP@100 ours"] == "40.00"
    assert changed["Hamming mAP@100 paper"] == "-" and changed["Hamming mAP@100 diff"] == "-"
    # settings that differ from the row, the source, the claim, the definitions
    assert ("- settings that differ from the row's (CDNE (MB), 32 bits, NWPU-RESISC45): epochs 5 (row: 130)\n"
            in text)
    assert "- paper numbers (CDNE (MB), 32 bits, NWPU-RESISC45): Table I" in text
    assert "- no published number (Softmax baseline, AID); the paper's claim: SNCA-CE beats it" in text
    assert "- Hamming mAP@k: binary codes" in text and "- mAP: each test image queries the train split" in text
    assert "- P@k:" not in text  # only the metrics shown are defined
    # matched by its settings (no --config); a run outside every row is listed apart
    assert rows["Softmax baseline, AID"][:4] == ["Softmax baseline, AID", "1", "80.00", "60.00"]
    assert "### Runs outside the reproduction rows" in text and rows["SNCA_CE, AID"][:3] == ["SNCA_CE, AID", "1", "70.00"]


def test_csv_numbers(runs, capsys):
    table = list(csv.DictReader(io.StringIO(report(runs, capsys, "--format", "csv"))))
    got = {(r["label"], r["metric"]): r for r in table}
    line = got["CDNE (MB), 32 bits, NWPU-RESISC45", "hamming.mAP@100"]
    mean, std = mean_std([h for h, _, _ in CDNE_SEEDS.values()])
    assert line["row"] == "nwpu_mb_32" and line["paper"] == "cdne" and line["runs"] == "3"
    assert float(line["ours_mean"]) == pytest.approx(mean, abs=1e-4)
    assert float(line["ours_std"]) == pytest.approx(std, abs=1e-4)
    assert float(line["paper_value"]) == 99.83
    assert float(line["difference"]) == pytest.approx(mean - 99.83, abs=1e-4)
    assert line["settings_differ"] == "epochs=5 (row: 130)"
    single = got["Softmax baseline, AID", "knn_acc"]
    assert single["ours_mean"] == "80.0000" and single["ours_std"] == "" and single["paper_value"] == ""


def test_latex(runs, capsys):
    text = report(runs, capsys, "--format", "latex", "--paper", "cdne")
    assert text.count(r"\begin{tabular}") == 1 and r"\toprule" in text and r"\bottomrule" in text
    mean, std = mean_std([h for h, _, _ in CDNE_SEEDS.values()])
    line = next(l for l in text.splitlines() if l.startswith("CDNE (MB), 32 bits, NWPU-RESISC45 &"))
    cells = [c.strip() for c in line.removesuffix(r"\\").split("&")]
    assert cells[1:5] == ["3", rf"{mean:.2f} $\pm$ {std:.2f}", "99.83", f"{mean - 99.83:+.2f}"]
    assert r"Hamming mAP@100 $\Delta$" in text and r"P@H$\leq$2" in text and "Softmax" not in text


def test_epochs_trained_come_from_metrics_jsonl(runs, capsys):
    """A run resumed with another --epochs keeps its first value in config.json; metrics.jsonl
    says how far it trained."""
    for seed in CDNE_SEEDS:
        lines = [json.dumps({"epoch": e, "val": {}}) for e in (1, 2, 3)]
        (runs / "runs" / f"cdne{seed}" / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    text = report(runs, capsys)
    assert "(CDNE (MB), 32 bits, NWPU-RESISC45): epochs 3 (row: 130)" in text


def test_out_file_and_errors(runs, tmp_path, capsys):
    target = tmp_path / "t" / "table.md"
    assert main([str(runs / "runs"), "--configs", str(runs / "configs"), "--out", str(target)]) == 0
    assert "| CDNE (MB), 32 bits" in target.read_text()
    capsys.readouterr()
    empty = tmp_path / "empty"
    empty.mkdir()
    for argv, wanted in (([str(empty)], "error: no test_metrics.json below"),
                         ([str(tmp_path / "nothere")], "error: "),
                         ([str(runs / "runs"), "--paper", "xyz"], "error: --paper xyz: unknown; choose one of")):
        assert main(argv + ["--configs", str(runs / "configs")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(wanted), err
