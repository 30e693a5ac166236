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


def parsed(name, *argv):
    from dmlrs import cli
    from tests.engine.scripts import load_script

    module = load_script(name)
    return cli.make_parser(module.__doc__, module.add_arguments, module.DEFAULTS).parse_args(list(argv))


#: the original scripts' defaults (jiankang1991/SNCA_CE, CDNE, HR-S2DML, RNSL), written out here
ORIGINAL_DEFAULTS = {
    "SNCA_CE": {"temperature": 0.05, "margin": 0.0, "lambda_": 1.0, "memory_momentum": 0.5, "dim": 128,
                "model": "resnet18", "epochs": 130, "select_metric": "knn_acc"},
    "SNCA_CE_MC": {"temperature": 0.05, "margin": 0.0, "lambda_": 1.0, "ema": 0.999, "ema_bn": "train",
                   "dim": 128},
    "CDNE": {"temperature": 0.05, "margin": 0.0, "lambda_": 1.0, "ce_weight": 1.0, "quant_weight": 1.0,
             "dim": 128, "memory": "bank", "memory_momentum": 0.5, "ema": 0.999, "ema_bn": "train",
             "code_activation": "none", "select_metric": "hamming_P@20"},
    "MNCE_BNM": {"temperature": 0.05, "margin": 0.5, "train_per": 0.2, "bnm_weight": 1.0,
                 "bnm_form": "original", "transductive": False, "dim": 128},
    "tRNSL": {"temperature": 0.05, "noiseType": "symmetric", "noiseRate": 0.5, "q": 0.7, "k": 0.5,
              "start_prune": 40, "prune_every": 10, "refresh_images": "augmented", "truncated": True},
    "SRL": {"model": "resnet50", "alpha": 1.2, "margin": 0.4, "temperature": 10.0, "lambda_": 1.0,
            "images_per_class": 4},
}


@pytest.mark.parametrize("name", SCRIPTS)
def test_script_defaults_are_the_original_code_s(name):
    args = vars(parsed(name))
    assert {key: args[key] for key in ORIGINAL_DEFAULTS[name]} == ORIGINAL_DEFAULTS[name]
    assert (args["lr_step"], args["lr_gamma"], args["momentum"], args["weight_decay"], args["nesterov"]) \
        == (30, 0.5, 0.9, 1e-4, True)


def test_only_the_methods_that_have_them_take_temperature_and_margin():
    assert "margin" not in vars(parsed("tRNSL"))
    with pytest.raises(SystemExit):
        parsed("tRNSL", "--margin", "0.1")
    for name in ("SRL", "CDNE", "SNCA_CE", "MNCE_BNM"):
        assert parsed(name, "--margin", "0.25").margin == 0.25


def test_srl_has_one_flag_per_setting():
    args = parsed("SRL", "--margin", "0.3", "--temperature", "5", "--lambda_", "0.5")
    assert (args.margin, args.temperature, args.lambda_) == (0.3, 5.0, 0.5)
    for retired in ("--srl-margin", "--srl-T", "--srl-lambda"):
        with pytest.raises(SystemExit):
            parsed("SRL", retired, "1")


def test_original_flag_spellings_keep_working():
    args = parsed("SNCA_CE", "--data", "D", "--dataset", "ucmerced", "--imgEXT", "tif", "-b", "32",
                  "--m-mementum", "0.7", "--lambda_", "2")
    assert (args.data, args.dataset, args.batch_size, args.epochs) == ("D", "ucmerced", 32, 130)
    assert (args.memory_momentum, args.lambda_) == (0.7, 2.0)
    args = parsed("tRNSL", "--noiseType", "pairflip", "--noiseRate", "0.3", "--start_prune", "40")
    assert (args.noiseType, args.noiseRate, args.start_prune) == ("pairflip", 0.3, 40)


@pytest.mark.parametrize("name", SCRIPTS)
def test_help_shows_each_method_flag_with_its_default(name, capsys):
    from dmlrs import cli
    from tests.engine.scripts import load_script

    module = load_script(name)
    parser = cli.make_parser(module.__doc__, module.add_arguments, module.DEFAULTS)
    help_text = parser.format_help()
    assert "docs/fidelity.md" in help_text
    method_group = next(g for g in parser._action_groups if g.title.startswith("method"))
    for action in method_group._group_actions:
        entry = parser._get_formatter()._format_action(action)
        assert "default" in entry, entry


@pytest.mark.parametrize("dataset, batch_size, weights, lr", [("demo", 64, "none", 0.01), ("AID", 256, "imagenet", 0.1)])
def test_dataset_dependent_defaults_are_resolved_into_the_arguments(dataset, batch_size, weights, lr):
    from dmlrs import cli

    args = parsed("SNCA_CE", "--dataset", dataset)
    cli.resolve_dataset_defaults(args)
    assert (args.batch_size, args.weights, args.lr) == (batch_size, weights, lr)
    args = parsed("SNCA_CE", "--dataset", dataset, "-b", "8", "--weights", "w.pth", "--lr", "0.5")
    cli.resolve_dataset_defaults(args)
    assert (args.batch_size, args.weights, args.lr) == (8, "w.pth", 0.5)


def test_training_from_scratch_lowers_the_default_lr_and_says_so():
    from dmlrs import cli

    args = parsed("SNCA_CE", "--dataset", "AID", "--weights", "none")
    notes = cli.resolve_dataset_defaults(args)
    assert args.lr == 0.01 and len(notes) == 1 and "--weights none" in notes[0] and "0.01" in notes[0]
    args = parsed("SNCA_CE", "--dataset", "AID", "--weights", "w.pth")
    assert cli.resolve_dataset_defaults(args) == [] and args.lr == 0.1
    args = parsed("SNCA_CE", "--dataset", "AID", "--weights", "none", "--lr", "0.1")
    assert cli.resolve_dataset_defaults(args) == [] and args.lr == 0.1


def test_mnce_bnm_batch_is_the_original_128():
    from dmlrs import cli

    args = parsed("MNCE_BNM", "--dataset", "AID")
    cli.resolve_dataset_defaults(args, paper_batch_size=128)
    assert args.batch_size == 128
    from tests.engine.scripts import load_script

    assert load_script("MNCE_BNM").PAPER_BATCH_SIZE == 128


def test_num_workers_default_is_at_most_the_core_count(monkeypatch):
    from dmlrs import cli

    monkeypatch.setattr(cli, "available_cores", lambda: 2)
    assert cli.default_num_workers() == 2
    monkeypatch.setattr(cli, "available_cores", lambda: 64)
    assert cli.default_num_workers() == 8  # the original scripts' value
    assert parsed("SNCA_CE").num_workers <= cli.available_cores()


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


def test_srl_lr_is_scaled_to_its_batch_of_32():
    from dmlrs import cli
    from tests.engine.scripts import load_script

    module = load_script("SRL")
    for weights in ("imagenet", "none"):
        args = parsed("SRL", "--dataset", "AID", "--weights", weights)
        assert cli.resolve_dataset_defaults(args, paper_lr=module.DEFAULT_LR) == [] and args.lr == 0.01


def test_srl_uses_all_classes_when_the_dataset_has_fewer_than_c(scenes, tmp_path, capsys):
    out = tmp_path / "runs"
    argv = ["--dataset", str(scenes), "--epochs", "1", "--steps-per-epoch", "1", "--out", str(out), *FAST]
    assert run_script("SRL", argv) == 0
    assert "using --classes-per-batch 4" in capsys.readouterr().out
    assert read_json(only_run_dir(out) / "config.json")["args"]["classes_per_batch"] == 4
    assert run_script("SRL", argv + ["--classes-per-batch", "5"]) == 2  # asked for explicitly: refused
    assert "--classes-per-batch 5 is larger than the 4 classes" in capsys.readouterr().err


def test_original_pairflip_on_a_dataset_without_tables_is_one_clear_error(scenes, tmp_path, capsys):
    argv = ["--dataset", str(scenes), "--epochs", "1", "--out", str(tmp_path / "runs"), *FAST,
            "--noiseType", "pairflip", "--noiseRate", "0.3"]
    assert run_script("tRNSL", argv) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("error: --noiseType pairflip")
    assert "--noiseType cyclic" in error[0] and "--noiseType symmetric" in error[0]
