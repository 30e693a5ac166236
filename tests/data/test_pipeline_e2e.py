"""(f) The input pipelines end to end, through the entry scripts on tiny generated folders.

* ``--input-pipeline cached`` and ``pil`` train, validate and report; with ``--deterministic``
  they give IDENTICAL runs (every metrics.jsonl line but throughput, and the test report): the
  cache holds PIL's resized pixels and the batched ops reproduce PIL bit for bit with the same
  parameters, drawn from the same per-draw seeds. Covered: the labelled stream, HR-S2DML's
  unlabelled stream (its image tensor carries its plan), the t-RNSL refresh (augmented training
  images embedded by the evaluator), SRL's C x K batches; with and without loader workers.
* Exact resume with the cached pipeline: a run killed with SIGKILL mid-epoch (after an optimizer
  step) and inside validation, then ``--resume auto``, ends like the uninterrupted run.
"""
from __future__ import annotations

import signal

import pytest

from tests.engine.scripts import FAST, only_run_dir, read_json, run_script, tiny_folder
from tests.engine.test_faults import argv_for, assert_same_run, rows, run_killed

EXTRA = {
    "SNCA_CE": [],
    "MNCE_BNM": ["--train_per", "0.5"],
    "tRNSL": ["--noiseType", "symmetric", "--noiseRate", "0.2", "--start_prune", "1", "--prune-every", "1"],
    "SRL": ["--classes-per-batch", "2", "--images-per-class", "4"],
}


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    return tiny_folder(tmp_path_factory.mktemp("data"))


def run(name, scenes, out, pipeline, workers, *extra):
    argv = ["--dataset", str(scenes), "--epochs", "2", "--steps-per-epoch", "2", "--out", str(out),
            "--deterministic", "--input-pipeline", pipeline, *FAST, "--num_workers", str(workers), *EXTRA[name],
            *extra]
    assert run_script(name, argv) == 0
    return only_run_dir(out)


@pytest.mark.parametrize("name,workers", [("SNCA_CE", 0), ("MNCE_BNM", 0), ("MNCE_BNM", 2), ("tRNSL", 2),
                                          ("SRL", 0)])
def test_cached_and_pil_pipelines_give_identical_runs(name, workers, scenes, tmp_path, capsys):
    cached = run(name, scenes, tmp_path / "cached", "cached", workers)
    pil = run(name, scenes, tmp_path / "pil", "pil", workers)
    out = capsys.readouterr().out
    assert "image cache" in out  # the summary says which cache file was used
    assert read_json(cached / "config.json")["args"]["input_pipeline"] == "cached"
    assert read_json(pil / "config.json")["args"]["input_pipeline"] == "pil"
    assert rows(cached) == rows(pil) and len(rows(cached)) == 2
    assert read_json(cached / "test_metrics.json") == read_json(pil / "test_metrics.json")


def test_cached_is_the_default_of_the_scripts(scenes, tmp_path):
    argv = ["--dataset", str(scenes), "--epochs", "1", "--steps-per-epoch", "1", "--out", str(tmp_path), *FAST]
    assert run_script("SNCA_CE", argv) == 0
    assert read_json(only_run_dir(tmp_path) / "config.json")["args"]["input_pipeline"] == "cached"


@pytest.mark.parametrize("name,workers,kills", [
    ("SNCA_CE", 2, [("step", 3), ("validate", 1)]),
    ("MNCE_BNM", 0, [("step", 4), ("save", 2)]),
])
def test_cached_pipeline_resumes_exactly_after_kills(name, workers, kills, scenes, tmp_path, capsys):
    extra = ["--input-pipeline", "cached", *EXTRA[name]]
    reference_out = tmp_path / "reference"
    assert run_script(name, argv_for(scenes, reference_out, *extra, "--num_workers", "0")) == 0
    reference = only_run_dir(reference_out)
    out = tmp_path / "killed"
    for number, point in enumerate(kills):
        argv = argv_for(scenes, out, *extra, *(["--resume", "auto"] if number else []))
        result = run_killed(name, argv, point, workers)
        assert result.returncode == -signal.SIGKILL, (point, result.stderr[-2000:])
    capsys.readouterr()
    assert run_script(name, argv_for(scenes, out, *extra, "--resume", "auto", "--num_workers", str(workers))) == 0
    assert "resumed from" in capsys.readouterr().out
    assert_same_run(only_run_dir(out), reference, f"{name}: kills {kills}, --num_workers {workers}")
