"""``--config FILE``: flags from YAML/JSON, typed by the parser, overridden by the command line."""
import json

import pytest

from dmlrs import cli, config_file
from dmlrs.errors import DmlrsError
from tests.engine.scripts import FAST, load_script, only_run_dir, read_json


def parser_of(name: str):
    module = load_script(name)
    return cli.make_parser(module.__doc__, module.add_arguments, module.DEFAULTS)


def parse(name: str, argv: list[str]):
    parser = parser_of(name)
    return parser.parse_args(config_file.expand_argv(parser, argv))


def write(path, text: str):
    path.write_text(text, encoding="utf-8")
    return path


def test_values_are_typed_by_the_parser_and_the_command_line_overrides(tmp_path):
    conf = write(tmp_path / "c.yaml", "dataset: AID\nlambda_: 0\nbatch-size: 32\nlr: 0.05\nmodel: ResNet50\n")
    args = parse("SNCA_CE", ["--config", str(conf), "--lr", "0.2"])
    assert args.dataset == "AID" and args.lambda_ == 0.0 and isinstance(args.lambda_, float)
    assert args.batch_size == 32 and isinstance(args.batch_size, int)
    assert args.model == "resnet50"  # the flag's own type (str.lower)
    assert args.lr == 0.2  # command line wins
    assert args.config == str(conf)  # recorded with the other arguments
    # the file alone; --config=FILE spelling
    assert parse("SNCA_CE", [f"--config={conf}"]).lr == 0.05


def test_underscore_and_dash_spellings_and_destination_names(tmp_path):
    conf = write(tmp_path / "c.yaml", "batch_size: 16\nnum-workers: 0\nnoise-type: pairflip\nnoiseRate: 0.3\n")
    args = parse("tRNSL", ["--config", str(conf)])
    assert (args.batch_size, args.num_workers, args.noiseType, args.noiseRate) == (16, 0, "pairflip", 0.3)


def test_booleans_for_store_true_and_store_false_flags(tmp_path):
    conf = write(tmp_path / "c.yaml", "amp: true\ndeterministic: false\nno-truncation: true\nno-nesterov: false\n")
    args = parse("tRNSL", ["--config", str(conf)])
    assert args.amp is True and args.deterministic is False
    assert args.truncated is False and args.nesterov is True
    # by destination name (a run's config.json): the value the attribute gets
    conf = write(tmp_path / "d.yaml", "truncated: false\nnesterov: true\nprogress: false\n")
    args = parse("tRNSL", ["--config", str(conf)])
    assert args.truncated is False and args.nesterov is True and args.progress is False
    with pytest.raises(DmlrsError, match=r"c2.yaml: 'amp' is a switch: write true or false"):
        parse("tRNSL", ["--config", str(write(tmp_path / "c2.yaml", "amp: 1\n"))])


def test_json_and_the_args_mapping_of_a_row_file(tmp_path):
    conf = write(tmp_path / "c.json", json.dumps({"args": {"dataset": "UCMD", "dim": 64}, "paper": "x",
                                                  "paper_results": {"retrieval.mAP": 90.0}}))
    args = parse("CDNE", ["--config", str(conf)])
    assert args.dataset == "UCMD" and args.dim == 64


def test_unknown_key_names_the_file_the_key_and_near_flags(tmp_path):
    conf = write(tmp_path / "c.yaml", "dataset: AID\nlamda: 0.5\n")
    with pytest.raises(DmlrsError) as info:
        parse("SNCA_CE", ["--config", str(conf)])
    message = str(info.value)
    assert str(conf) in message and "'lamda'" in message and "lambda" in message and "\n" not in message


def test_a_value_the_flag_refuses_names_the_file_and_key(tmp_path):
    conf = write(tmp_path / "c.yaml", "lr: -1\n")
    with pytest.raises(DmlrsError, match=r"c.yaml: 'lr': must be a finite number > 0, got -1"):
        parse("SNCA_CE", ["--config", str(conf)])
    conf = write(tmp_path / "d.yaml", "model: alexnet\n")
    with pytest.raises(DmlrsError, match=r"d.yaml: 'model' must be one of .*resnet18"):
        parse("SNCA_CE", ["--config", str(conf)])
    conf = write(tmp_path / "e.yaml", "dim: [1, 2]\n")
    with pytest.raises(DmlrsError, match=r"e.yaml: 'dim' must be a single value"):
        parse("SNCA_CE", ["--config", str(conf)])


def test_bad_yaml_bad_json_and_missing_files_name_the_file(tmp_path):
    conf = write(tmp_path / "bad.yaml", "dataset: AID\nlr: [0.1\n")
    with pytest.raises(DmlrsError, match=r"bad.yaml: not valid YAML \(line \d+, column \d+"):
        parse("SNCA_CE", ["--config", str(conf)])
    conf = write(tmp_path / "bad.json", '{"lr": 0.1,}')
    with pytest.raises(DmlrsError, match=r"bad.json: not valid JSON \(line 1"):
        parse("SNCA_CE", ["--config", str(conf)])
    with pytest.raises(DmlrsError, match=r"nothere.yaml: file not found"):
        parse("SNCA_CE", ["--config", str(tmp_path / "nothere.yaml")])
    with pytest.raises(DmlrsError, match=r"list.yaml: must hold a mapping"):
        parse("SNCA_CE", ["--config", str(write(tmp_path / "list.yaml", "- dataset\n"))])


def test_script_prints_one_error_line_and_creates_nothing(tmp_path, capsys):
    conf = write(tmp_path / "c.yaml", "lamda: 1\n")
    out = tmp_path / "runs"
    assert load_script("SNCA_CE").main(["--config", str(conf), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --config") and "lamda" in err[0]
    assert not out.exists()


def test_a_row_of_another_script_is_refused_with_the_command_that_runs_it(tmp_path, capsys):
    conf = write(tmp_path / "row.yaml", "script: train_CDNE/main.py\nargs:\n  dataset: demo\n")
    assert load_script("SNCA_CE").main(["--config", str(conf)]) == 2
    assert "run python train_CDNE/main.py --config" in capsys.readouterr().err


def test_resolved_values_and_the_file_land_in_config_json_and_a_run_config_is_a_config(tmp_path):
    conf = write(tmp_path / "c.yaml", "args:\n  dataset: demo\n  epochs: 1\n  steps-per-epoch: 1\n  lambda_: 0\n")
    out = tmp_path / "runs"
    assert load_script("SNCA_CE").main(["--config", str(conf), *FAST, "--out", str(out)]) == 0
    saved = read_json(only_run_dir(out) / "config.json")["args"]
    assert saved["config"] == str(conf) and saved["lambda_"] == 0.0 and saved["steps_per_epoch"] == 1
    # the run's own config.json as --config gives the same settings back
    again = parse("SNCA_CE", ["--config", str(only_run_dir(out) / "config.json")])
    for key in ("lambda_", "steps_per_epoch", "img_size", "dim", "batch_size", "nesterov", "weights"):
        assert getattr(again, key) == saved[key], key


def test_the_config_path_is_not_part_of_the_run_fingerprint():
    """--resume auto finds a run whatever file (or none) gave it its settings: they are in args."""
    from dmlrs.engine import run_folder

    base = {"lr": 0.1, "dataset": "AID", "lambda_": 0.0}
    assert run_folder.fingerprint(base) == run_folder.fingerprint({**base, "config": "configs/snca_ce/aid_softmax.yaml"})
    assert run_folder.fingerprint(base) == run_folder.fingerprint({**base, "config": None})
