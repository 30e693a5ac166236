"""Every entry script end to end on a tiny generated folder: train, validate, checkpoint, report."""
import json

import pytest
import torch

from tests.engine.scripts import FAST, SCRIPTS, only_run_dir, read_json, run_script, tiny_folder

EXTRA = {
    "SNCA_CE": [],
    "SNCA_CE_MC": [],
    "MNCE_BNM": ["--train_per", "0.5"],
    "CDNE": ["--dim", "16", "--memory", "momentum"],
    "tRNSL": ["--noiseType", "symmetric", "--noiseRate", "0.2", "--start_prune", "1", "--prune-every", "1"],
    "SRL": ["--classes-per-batch", "2", "--images-per-class", "4"],
}


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    return tiny_folder(tmp_path_factory.mktemp("data"))


@pytest.mark.parametrize("name", SCRIPTS)
def test_script_trains_and_writes_the_run_folder(name, scenes, tmp_path):
    out = tmp_path / "runs"
    argv = ["--dataset", str(scenes), "--epochs", "2", "--steps-per-epoch", "2", "--out", str(out),
            *FAST, *EXTRA[name]]
    assert run_script(name, argv) == 0
    run_dir = only_run_dir(out)
    assert run_dir.parent.name == "scenes" and run_dir.parent.parent.name == name
    config = read_json(run_dir / "config.json")
    assert config["args"]["epochs"] == 2 and config["environment"]["torch"] == torch.__version__
    assert read_json(run_dir / "split.json")["classes"] == [f"class_{c}" for c in range(4)]
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [1, 2]
    assert all("knn_acc" in line["val"] for line in lines)
    assert all(torch.isfinite(torch.tensor(v)) for line in lines for v in line["train"].values())
    report = read_json(run_dir / "test_metrics.json")
    assert 0 <= report["knn_acc"] <= 1 and 0 <= report["retrieval"]["mAP"] <= 1
    assert set(report["AP_per_class"]) == {f"class_{c}" for c in range(4)}
    assert "mAP" in report["retrieval_leave_one_out"]
    assert ("hamming" in report) == (name == "CDNE")
    assert ("knn_acc_clean_gallery" in report) == (name == "tRNSL")
    last = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    best = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True)
    assert last["epoch"] == 2 and best["epoch"] == best["best_epoch"] in (1, 2)
    assert {"method", "model", "optimizer", "scheduler", "scaler", "rng", "manifest_hash"} <= set(last)


def test_method_specific_paper_defaults():
    from tests.engine.scripts import load_script

    def parsed(name, *argv):
        from dmlrs import cli

        module = load_script(name)
        return cli.make_parser(module.__doc__, module.add_arguments, module.DEFAULTS).parse_args(list(argv))

    assert parsed("MNCE_BNM").margin == 0.5 and parsed("MNCE_BNM").train_per == 0.2
    assert parsed("SNCA_CE").temperature == 0.05 and parsed("SNCA_CE").memory_momentum == 0.5
    assert parsed("SRL").model == "resnet50" and parsed("SRL").alpha == 1.2
    assert parsed("CDNE").dim == 64 and parsed("CDNE").memory == "bank"
    args = parsed("SNCA_CE", "--data", "D", "--dataset", "ucmerced", "--imgEXT", "tif", "-b", "32")
    assert (args.data, args.dataset, args.batch_size, args.epochs) == ("D", "ucmerced", 32, 130)


@pytest.mark.parametrize("dataset, batch_size, weights, lr", [("demo", 64, "none", 0.01), ("AID", 256, "imagenet", 0.1)])
def test_dataset_dependent_defaults_are_resolved_into_the_arguments(dataset, batch_size, weights, lr):
    from dmlrs import cli
    from tests.engine.scripts import load_script

    module = load_script("SNCA_CE")
    parser = cli.make_parser(module.__doc__, module.add_arguments, module.DEFAULTS)
    args = parser.parse_args(["--dataset", dataset])
    cli.resolve_dataset_defaults(args)
    assert (args.batch_size, args.weights, args.lr) == (batch_size, weights, lr)
    args = parser.parse_args(["--dataset", dataset, "-b", "8", "--weights", "w.pth", "--lr", "0.5"])
    cli.resolve_dataset_defaults(args)
    assert (args.batch_size, args.weights, args.lr) == (8, "w.pth", 0.5)


def test_amp_channels_last_and_tensorboard_on_cpu(scenes, tmp_path):
    out = tmp_path / "runs"
    argv = ["--dataset", str(scenes), "--epochs", "1", "--steps-per-epoch", "2", "--out", str(out),
            *[a for a in FAST if a != "--no-tensorboard"], "--amp", "--channels-last"]
    assert run_script("SNCA_CE", argv) == 0  # bf16 autocast on CPU; losses switch back to fp32
    run_dir = only_run_dir(out)
    (line,) = [json.loads(text) for text in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert set(line["train"]) == {"loss", "snca", "ce"} and line["memory_momentum"] == 0.5
    assert all(torch.isfinite(torch.tensor(v)) for v in line["train"].values())
    assert list((run_dir / "tb").glob("events.out.tfevents.*"))
