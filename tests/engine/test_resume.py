"""Interrupt, resume, evaluate: a resumed run ends exactly where an uninterrupted one does."""
import json
import signal

import pytest

from dmlrs.engine.trainer import Trainer
from tests.engine.scripts import FAST, only_run_dir, read_json, run_script, tiny_folder


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    return tiny_folder(tmp_path_factory.mktemp("data"))


def argv_for(scenes, out, *extra):
    return ["--dataset", str(scenes), "--epochs", "3", "--steps-per-epoch", "2", "--out", str(out),
            "--deterministic", "--lr-step", "1", *FAST, *extra]


def sigint_after_first_epoch(monkeypatch):
    """Make every Trainer raise a real SIGINT right after its first epoch."""
    original_init = Trainer.__init__

    def init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        self.epoch_end_callbacks.append(lambda t: signal.raise_signal(signal.SIGINT) if t.epoch == 1 else None)

    monkeypatch.setattr(Trainer, "__init__", init)


def sigint_during_step(monkeypatch, step):
    """Raise a real SIGINT inside the given 1-based optimizer step of the run."""
    original_step, count = Trainer._step, {"n": 0}

    def _step(self, batch):
        count["n"] += 1
        if count["n"] == step:
            signal.raise_signal(signal.SIGINT)
        return original_step(self, batch)

    monkeypatch.setattr(Trainer, "_step", _step)


@pytest.mark.parametrize("name,when", [("SNCA_CE", "after epoch 1"), ("SNCA_CE_MC", "after epoch 1"),
                                       ("SNCA_CE", "mid-epoch")])
def test_interrupted_and_resumed_run_matches_uninterrupted(name, when, scenes, tmp_path, monkeypatch):
    straight = tmp_path / "straight"
    assert run_script(name, argv_for(scenes, straight)) == 0

    resumed = tmp_path / "resumed"
    with monkeypatch.context() as patch:
        if when == "mid-epoch":
            sigint_during_step(patch, 3)  # epoch 2, step 1: last.pt holds the first half of epoch 2
        else:
            sigint_after_first_epoch(patch)
        assert run_script(name, argv_for(scenes, resumed)) == 130  # stopped cleanly, last.pt written
    run_dir = only_run_dir(resumed)
    assert not (run_dir / "test_metrics.json").exists()
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 1
    assert run_script(name, argv_for(scenes, resumed, "--resume", "auto")) == 0
    assert only_run_dir(resumed) == run_dir  # continued in the same folder

    assert read_json(run_dir / "test_metrics.json") == read_json(only_run_dir(straight) / "test_metrics.json")
    epochs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    reference = [json.loads(line) for line in (only_run_dir(straight) / "metrics.jsonl").read_text().splitlines()]
    strip = lambda rows: [{k: v for k, v in row.items() if k != "images_per_second"} for row in rows]  # noqa: E731
    assert strip(epochs) == strip(reference)


def test_resuming_a_finished_run_only_reevaluates(scenes, tmp_path):
    out = tmp_path / "runs"
    assert run_script("SNCA_CE", argv_for(scenes, out)) == 0
    run_dir = only_run_dir(out)
    before = (run_dir / "metrics.jsonl").read_text()
    report = read_json(run_dir / "test_metrics.json")
    (run_dir / "test_metrics.json").unlink()
    assert run_script("SNCA_CE", argv_for(scenes, out, "--resume", str(run_dir / "checkpoints" / "last.pt"))) == 0
    assert (run_dir / "metrics.jsonl").read_text() == before  # no epoch trained again
    assert read_json(run_dir / "test_metrics.json") == report


def test_evaluate_reproduces_the_report_from_the_run_settings(scenes, tmp_path):
    out = tmp_path / "runs"
    assert run_script("SNCA_CE", argv_for(scenes, out)) == 0
    run_dir = only_run_dir(out)
    # only --evaluate (+ runtime flags): model, dim, image size... come from the run's config.json
    argv = ["--evaluate", str(run_dir / "checkpoints" / "best.pt"), "--out", str(tmp_path / "eval"),
            "--num_workers", "0", "--no-progress", "--no-tensorboard"]
    assert run_script("SNCA_CE", argv) == 0
    evaluated = only_run_dir(tmp_path / "eval")
    assert read_json(evaluated / "test_metrics.json") == read_json(run_dir / "test_metrics.json")


def test_bad_checkpoint_and_missing_data_are_one_line_errors(scenes, tmp_path, capsys):
    garbage = tmp_path / "broken.pt"
    garbage.write_bytes(b"not a checkpoint")
    assert run_script("SNCA_CE", argv_for(scenes, tmp_path / "r", "--evaluate", str(garbage))) == 2
    assert "broken.pt" in capsys.readouterr().err
    assert run_script("SNCA_CE", argv_for(tmp_path / "nowhere", tmp_path / "r")) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "nowhere" in err and "Traceback" not in err


def test_resume_auto_finds_a_run_made_before_a_flag_existed(scenes, tmp_path, capsys):
    """A run whose config.json lacks flags added to dmlrs later (here --sync-bn and --no-pictures,
    left at their defaults now) is still the run --resume auto continues; one made with another
    value of a flag it does record is not."""
    out = tmp_path / "runs"
    argv = ["--dataset", str(scenes), "--epochs", "1", "--steps-per-epoch", "1", "--out", str(out), *FAST]
    assert run_script("SNCA_CE", argv) == 0
    run_dir = only_run_dir(out)
    config = read_json(run_dir / "config.json")
    for newer in ("sync_bn", "pictures"):
        del config["args"][newer]
    config.pop("fingerprint")
    (run_dir / "config.json").write_text(json.dumps(config))
    capsys.readouterr()
    argv_2 = list(argv)
    argv_2[argv_2.index("--epochs") + 1] = "2"
    assert run_script("SNCA_CE", [*argv_2, "--resume", "auto"]) == 0
    printed = capsys.readouterr().out
    assert f"resumed from {run_dir / 'checkpoints' / 'last.pt'} after epoch 1" in printed
    assert only_run_dir(out) == run_dir
    assert run_script("SNCA_CE", [*argv_2, "--resume", "auto", "--lr", "0.05"]) == 0
    assert "no earlier run with these settings" in capsys.readouterr().out
