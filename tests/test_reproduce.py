"""python -m dmlrs.reproduce: exact commands (--dry-run), skipping finished rows, resuming
unfinished ones, failures, interruption, unknown names; one real row end to end on demo data."""
import json
import shlex
import sys
from pathlib import Path

import pytest

from dmlrs.reproduce.__main__ import main
from tests.engine.scripts import FAST, REPO, read_json

#: a stand-in for train_X/main.py: writes a run folder like a script does; FAKE_MODE in the
#: row's args picks what it does (finish, fail with status 3, stop as on Ctrl-C with 130)
FAKE_SCRIPT = '''
import argparse, json, sys
from pathlib import Path
import yaml
p = argparse.ArgumentParser()
for flag in ("--config", "--out", "--resume", "--data", "--seed", "--epochs"):
    p.add_argument(flag)
a = p.parse_args()
args = yaml.safe_load(open(a.config))["args"]
run = Path(a.out) / "FAKE" / "demo" / f"seed{a.seed}"
run.mkdir(parents=True, exist_ok=True)
with open(Path(a.out).resolve().parents[2] / "calls.txt", "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
(run / "config.json").write_text(json.dumps({"method": "FAKE", "args": {"seed": int(a.seed or 42)}}))
mode = args.get("mode", "finish")
if mode == "finish" or (mode == "fail_once" and (run / "failed").exists()):
    (run / "test_metrics.json").write_text("{}")
    sys.exit(0)
(run / "failed").write_text("")
sys.exit(130 if mode == "interrupt" else 3)
'''


def row_text(paper, name, script, args):
    lines = [f"paper: {paper}", f"row: {name}", f'title: "{name} title"', f"script: {script}", "args:"]
    lines += [f"  {k}: {v}" for k, v in args.items()]
    lines += ["paper_results:", "  knn_acc: 90.0", 'source: "test"']
    return "\n".join(lines) + "\n"


@pytest.fixture
def fake_repo(tmp_path):
    """tmp/configs/fake/<row>.yaml + tmp/train_FAKE/main.py."""
    (tmp_path / "train_FAKE").mkdir()
    (tmp_path / "train_FAKE" / "main.py").write_text(FAKE_SCRIPT)
    folder = tmp_path / "configs" / "fake"
    folder.mkdir(parents=True)
    for name, mode in (("a_row", "finish"), ("b_row", "fail_once"), ("c_row", "finish")):
        (folder / f"{name}.yaml").write_text(row_text("fake", name, "train_FAKE/main.py", {"mode": mode}))
    return tmp_path


def calls(repo: Path) -> list[list[str]]:
    path = repo / "calls.txt"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_dry_run_prints_exact_commands_and_runs_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    out = tmp_path / "out"
    code = main(["cdne", "--rows", "nwpu_mb_32", "nwpu_mu_*", "--dry-run", "--data", str(tmp_path), "--out", str(out),
                 "--seeds", "1", "2", "--extra", "--epochs", "2", "--img-size", "64"])
    assert code == 0 and not out.exists()
    lines = capsys.readouterr().out.splitlines()
    comments, commands = lines[0::2], [shlex.split(line) for line in lines[1::2]]
    assert len(commands) == 2 * 5 and all(c.startswith("# row ") for c in comments)
    assert comments[0] == "# row 1/10 cdne/nwpu_mb_32 seed 1: CDNE (MB), 32 bits, NWPU-RESISC45"
    assert commands[0] == [sys.executable, "train_CDNE/main.py", "--config", "configs/cdne/nwpu_mb_32.yaml",
                           "--out", str(out / "cdne" / "nwpu_mb_32"), "--resume", "auto", "--data", str(tmp_path),
                           "--seed", "1", "--epochs", "2", "--img-size", "64"]
    assert [c[3] for c in commands[2::2]] == [f"configs/cdne/nwpu_mu_{b}.yaml" for b in (16, 32, 64, 128)]


def test_dry_run_of_every_row(capsys):
    assert main(["all", "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 * len(list((REPO / "configs").glob("*/*.yaml")))


@pytest.mark.parametrize("argv,wanted", [
    (["nope"], ["error: unknown paper 'nope'; choose all or one of: snca_ce, hr_s2dml, cdne, trnsl, srl"]),
    (["srl", "--rows", "ucmd_resnet18"], ["error: --rows: no row 'ucmd_resnet18' in srl; valid rows: ", "ucmd_resnet50",
                                          "ucmd_vgg16", "patternnet_resnet50", "patternnet_vgg16"]),
])
def test_unknown_paper_or_row_is_one_error_listing_the_valid_ones(argv, wanted, capsys):
    assert main(argv + ["--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(wanted[0]) and all(name in err[0] for name in wanted[1:])


def test_runs_rows_in_order_skips_finished_ones_and_reruns_failed_ones(fake_repo, capsys, monkeypatch):
    monkeypatch.chdir(fake_repo)
    out = fake_repo / "out"
    argv = ["fake", "--configs", str(fake_repo / "configs"), "--out", str(out)]
    assert main(argv) == 1  # b_row fails (status 3), c_row still runs
    text = capsys.readouterr().out
    assert "row 1/3 fake/a_row: running ..." in text and "row 1/3 fake/a_row: done in" in text
    assert "row 2/3 fake/b_row: FAILED (exit status 3)" in text and "row 3/3 fake/c_row: done in" in text
    assert "1 of 3 rows failed (fake/b_row)" in text
    assert [c[1] for c in calls(fake_repo)] == ["configs/fake/a_row.yaml", "configs/fake/b_row.yaml",
                                                "configs/fake/c_row.yaml"]
    assert calls(fake_repo)[0] == ["--config", "configs/fake/a_row.yaml", "--out", "out/fake/a_row", "--resume", "auto"]
    # again: the finished rows are skipped, the unfinished one resumes and now finishes
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "row 1/3 fake/a_row: already finished (out/fake/a_row/FAKE/demo/seedNone), skipped" in text
    assert "row 2/3 fake/b_row: running (unfinished run found: out/fake/b_row/FAKE/demo/seedNone) ..." in text
    assert "all 3 rows finished" in text
    assert len(calls(fake_repo)) == 4
    # seeds: a finished run of another seed does not count
    assert main(argv + ["--rows", "a_row", "--seeds", "42", "7"]) == 0
    text = capsys.readouterr().out
    assert "row 1/2 fake/a_row seed 42: already finished" in text and "row 2/2 fake/a_row seed 7: running" in text
    assert calls(fake_repo)[-1][-2:] == ["--seed", "7"]


def test_an_interrupted_row_stops_the_whole_run(fake_repo, capsys, monkeypatch):
    monkeypatch.chdir(fake_repo)
    folder = fake_repo / "configs" / "fake"
    folder.joinpath("b_row.yaml").write_text(row_text("fake", "b_row", "train_FAKE/main.py", {"mode": "interrupt"}))
    assert main(["fake", "--configs", str(fake_repo / "configs"), "--out", "out"]) == 130
    text = capsys.readouterr().out
    assert "row 2/3 fake/b_row: interrupted after" in text and "run the same command again to resume it" in text
    assert "c_row" not in text


def test_a_real_row_end_to_end_then_skipped(tmp_path, capsys, monkeypatch):
    """train_SNCA_CE on the demo data through --config; the second call skips it."""
    monkeypatch.chdir(REPO)
    folder = tmp_path / "configs" / "snca_ce"
    folder.mkdir(parents=True)
    folder.joinpath("demo_softmax.yaml").write_text(row_text("snca_ce", "demo_softmax", "train_SNCA_CE/main.py",
                                                             {"dataset": "demo", "lambda_": 0}))
    # the row's script path is relative to the configs folder's parent: give it the real script
    (tmp_path / "train_SNCA_CE").symlink_to(REPO / "train_SNCA_CE")
    out = tmp_path / "out"
    argv = ["snca_ce", "--configs", str(tmp_path / "configs"), "--out", str(out),
            "--extra", *FAST, "--epochs", "1", "--steps-per-epoch", "1", "--no-pictures"]
    assert main(argv) == 0
    runs = list(out.glob("snca_ce/demo_softmax/SNCA_CE/demo/*/test_metrics.json"))
    assert len(runs) == 1
    config = read_json(runs[0].parent / "config.json")["args"]
    assert config["lambda_"] == 0.0 and config["config"].endswith("demo_softmax.yaml") and config["epochs"] == 1
    capsys.readouterr()
    assert main(argv) == 0
    assert "already finished" in capsys.readouterr().out
    assert len(list(out.glob("snca_ce/demo_softmax/SNCA_CE/demo/*/config.json"))) == 1


def test_missing_data_folder_is_refused_for_a_run_but_not_for_a_dry_run(tmp_path, capsys):
    missing = str(tmp_path / "elsewhere")  # e.g. the cluster's data path, printed here
    assert main(["cdne", "--rows", "nwpu_mb_32", "--dry-run", "--data", missing]) == 0
    assert f"--data {missing}" in capsys.readouterr().out
    assert main(["cdne", "--rows", "nwpu_mb_32", "--data", missing, "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.strip() == (f"error: --data {missing}: folder not found "
                                               "(--dry-run prints the commands anyway)")
