"""End to end: a script run (and --evaluate) leaves the pictures in the run folder and TensorBoard;
t-RNSL logs the clean fraction of the kept samples and plots the pruning rounds; a picture that
fails never costs the report."""
import json

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from dmlrs.data import build_data
from dmlrs.visualize import curves
from tests.engine.scripts import FAST, only_run_dir, read_json, run_script
from tests.visualize.pictures import assert_png

PICTURES = {"retrieval_gallery.png", "embedding_tsne.png", "ap_per_class.png", "precision_recall.png"}
PICTURES_ON = [flag for flag in FAST if flag != "--no-pictures"]  # FAST turns them off: they cost ~3 s a run
WITH_TENSORBOARD = [flag for flag in PICTURES_ON if flag != "--no-tensorboard"]
NOISE = ["--noiseType", "symmetric", "--noiseRate", "0.5"]


@pytest.fixture(scope="module")
def snca_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    argv = ["--dataset", "demo", "--epochs", "1", "--steps-per-epoch", "2", "--out", str(out), *WITH_TENSORBOARD]
    assert run_script("SNCA_CE", argv) == 0
    return only_run_dir(out)


def test_a_run_leaves_its_pictures_in_the_run_folder_and_tensorboard(snca_run):
    assert (snca_run / "test_metrics.json").is_file()
    assert {p.name for p in (snca_run / "pictures").iterdir()} == PICTURES
    for name in PICTURES:
        assert_png(snca_run / "pictures" / name)
    events = EventAccumulator(str(snca_run / "tb"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    assert {f"pictures/{name[:-4]}" for name in PICTURES} <= set(events.Tags()["images"])
    assert "val/knn_acc" in events.Tags()["scalars"]  # the training curves are there too
    assert "sprite" in (snca_run / "tb" / "projector_config.pbtxt").read_text()


def test_evaluate_draws_the_pictures_and_no_pictures_turns_them_off(snca_run, tmp_path, capsys):
    best = str(snca_run / "checkpoints" / "best.pt")
    assert run_script("SNCA_CE", ["--evaluate", best, "--out", str(tmp_path / "eval"), *PICTURES_ON]) == 0
    evaluated = only_run_dir(tmp_path / "eval")
    assert {p.name for p in (evaluated / "pictures").iterdir()} == PICTURES
    assert f"pictures: 4 in {evaluated / 'pictures'}" in capsys.readouterr().out
    assert run_script("SNCA_CE", ["--evaluate", best, "--out", str(tmp_path / "off"), *FAST, "--no-pictures"]) == 0
    off = only_run_dir(tmp_path / "off")
    assert (off / "test_metrics.json").is_file() and not (off / "pictures").exists()


def test_trnsl_logs_and_plots_the_clean_fraction_of_the_kept_samples(tmp_path, monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise RuntimeError("plotting failed")

    monkeypatch.setattr(curves, "plot_precision_recall", broken)  # one picture fails: the run still succeeds
    out = tmp_path / "runs"
    argv = ["--dataset", "demo", "--epochs", "3", "--steps-per-epoch", "2", "--start_prune", "2",
            "--prune-every", "1", "--eval-every", "3", "--out", str(out), *PICTURES_ON, *NOISE]
    assert run_script("tRNSL", argv) == 0
    run_dir = only_run_dir(out)
    printed = capsys.readouterr().out
    assert "warning: could not make precision_recall.png (RuntimeError: plotting failed)" in printed
    assert read_json(run_dir / "test_metrics.json")["retrieval"]["mAP"] >= 0  # written before the pictures
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]

    # independent count: the noisy and clean training labels, and the weights the run ended with
    data = build_data("demo", img_size=32, noise_type="symmetric", noise_rate=0.5, seed=42)
    noisy, clean = data.train_labels.tolist(), data.train_clean_labels.tolist()
    weights = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["method"]["rnsl.weights"].tolist()
    kept = [n for n in range(len(weights)) if weights[n] == 1.0]
    assert 0 < len(kept) < len(weights) and rows[-1]["kept_fraction"] == pytest.approx(len(kept) / len(weights))
    assert rows[-1]["kept_clean_fraction"] == sum(1 for n in kept if noisy[n] == clean[n]) / len(kept)
    # before the first refresh (epoch 2) every sample is kept: the clean fraction of all training labels
    assert rows[0]["kept_fraction"] == 1.0
    assert rows[0]["kept_clean_fraction"] == sum(1 for a, b in zip(noisy, clean) if a == b) / len(noisy)

    pictures = {p.name for p in (run_dir / "pictures").iterdir()}
    assert pictures == PICTURES - {"precision_recall.png"} | {"trnsl_pruning.png"}
    assert_png(run_dir / "pictures" / "trnsl_pruning.png")
