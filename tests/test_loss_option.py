"""--loss / --loss-args / --miner on the scripts: one-line errors before any work, help text, and
the paper's term configured by its flags or by --loss-args alike."""
import sys
from pathlib import Path

import pytest

from dmlrs import cli
from dmlrs.loss_option import check_loss_arguments, loss_choice
from tests.engine.scripts import FAST, SCRIPTS, load_script, run_script

ACCEPTING = ("SNCA_CE", "SNCA_CE_MC", "SRL")
REPO = Path(__file__).resolve().parents[1]


def parse(name, *argv):
    module = load_script(name)
    parser = cli.make_parser(module.__doc__, module.add_arguments, module.DEFAULTS)
    return module, parser, parser.parse_args(list(argv))


def refused(name, argv, tmp_path, capsys) -> str:
    """Run a script that must refuse ``argv``: exit 2, one ``error:`` line, nothing created."""
    out = tmp_path / "runs"
    assert run_script(name, [*argv, *FAST, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert not out.exists()  # refused before the data scan and the run folder
    return err.strip()


@pytest.mark.parametrize("name", ACCEPTING)
def test_unknown_loss_is_one_line(name, tmp_path, capsys):
    err = refused(name, ["--loss", "tripplet"], tmp_path, capsys)
    assert "--loss: unknown loss 'tripplet'" in err and "norm_softmax" in err and "pml:ClassName" in err


def test_bad_loss_args_key_is_one_line_listing_the_valid_keys(tmp_path, capsys):
    err = refused("SNCA_CE", ["--loss", "pml:TripletMarginLoss", "--loss-args", "margn=0.1"], tmp_path, capsys)
    assert err.startswith("error: --loss-args: pml:TripletMarginLoss has no option 'margn'; it takes: margin=0.05")
    err = refused("SRL", ["--loss-args", "alpah=1.0"], tmp_path, capsys)
    assert "srl has no option 'alpah'; it takes: alpha=1.2 (float), margin=0.4 (float)" in err


def test_missing_optional_extra_is_one_line_with_the_install_command(tmp_path, capsys, monkeypatch):
    for module in ("pytorch_metric_learning", "pytorch_metric_learning.losses", "pytorch_metric_learning.miners"):
        monkeypatch.setitem(sys.modules, module, None)  # as if pytorch-metric-learning were not installed
    err = refused("SRL", ["--loss", "pml:ProxyNCALoss"], tmp_path, capsys)
    assert err == ('error: --loss: pml:ProxyNCALoss needs pytorch-metric-learning, an optional extra that is not '
                   'installed; install it with: pip install -e ".[pml]" (or: pip install pytorch-metric-learning)')


@pytest.mark.parametrize("name,argv,message", [
    ("SRL", ["--loss", "snca"], "--loss: snca needs memory (the memory bank), memory_labels (the memory bank's "
                                "slot labels), which train_SRL/main.py does not have"),
    ("SNCA_CE", ["--loss", "bnm"], "'bnm' cannot replace a metric-learning term"),
    ("SNCA_CE", ["--loss", "norm_softmax", "--margin", "0.1"],
     "--margin sets the snca term, which --loss norm_softmax replaces; give norm_softmax's options with --loss-args"),
    ("SRL", ["--loss", "pml:TripletMarginLoss", "--alpha", "1.0", "--lambda_", "2"],
     "--alpha, --lambda_ set the srl term, which --loss pml:TripletMarginLoss replaces"),
    ("SNCA_CE_MC", ["--temperature", "0.1", "--loss-args", "temperature=0.2"],
     "--temperature and --loss-args temperature=... both set the snca term's temperature"),
    ("SNCA_CE", ["--miner", "pml:TripletMarginMiner"], "miners work with pytorch-metric-learning losses"),
    ("SNCA_CE", ["--loss", "pml:TripletMarginLoss", "--miner", "TripletMarginMiner"],
     "--miner: unknown miner 'TripletMarginMiner': miners come from pytorch-metric-learning, name them pml:"),
    ("SNCA_CE", ["--loss", "pml:TripletMarginLoss", "--miner-args", "margin=0.1"], "--miner-args without --miner"),
    ("SNCA_CE", ["--loss", "pml:TripletMarginLoss", "--miner", "pml:TripletMarginMiner", "--miner-args", "x=1"],
     "--miner-args: pml:TripletMarginMiner has no option 'x'; it takes: margin=0.2 (float), type_of_triplets"),
    ("SRL", ["--loss", "pml:TripletLoss"], "no loss 'TripletLoss'; close: "),
])
def test_refusals_before_any_work(name, argv, message, tmp_path, capsys):
    assert message in refused(name, argv, tmp_path, capsys)


def test_loss_args_configure_the_papers_term_like_its_flags():
    for argv in (["--temperature", "0.1"], ["--loss-args", "temperature=0.1"], ["--loss", "snca", "--temperature",
                                                                                 "0.1"]):
        module, parser, args = parse("SNCA_CE", *argv)
        check_loss_arguments(args, {"temperature"} if "--temperature" in argv else set(), module.LOSS_TERM)
        choice = loss_choice(args, module.LOSS_TERM)
        assert (choice.name, dict(choice.options)) == ("snca", {"temperature": 0.1, "margin": 0.0})
    module, parser, args = parse("SRL", "--loss", "pml:TripletMarginLoss", "--loss-args", "margin=0.2,swap=true",
                                 "--miner", "pml:TripletMarginMiner", "--miner-args", "type_of_triplets=semihard")
    choice = loss_choice(args, module.LOSS_TERM)
    assert dict(choice.options) == {"margin": 0.2, "swap": True}
    assert (choice.miner, dict(choice.miner_options)) == ("pml:TripletMarginMiner", {"type_of_triplets": "semihard"})


def test_scripts_give_a_loss_what_their_method_has():
    from dmlrs.methods.snca_ce import SNCACE
    from dmlrs.methods.srl import SRL

    for name in ("SNCA_CE", "SNCA_CE_MC"):
        assert load_script(name).LOSS_TERM.context == SNCACE.LOSS_CONTEXT
    assert load_script("SRL").LOSS_TERM.context == SRL.LOSS_CONTEXT


def test_help_says_which_scripts_take_loss_and_why_the_others_do_not():
    for name in SCRIPTS:
        help_text = " ".join(parse(name)[1].format_help().split())
        if name in ACCEPTING:
            assert "Accepted by train_SNCA_CE, train_SNCA_CE_MC and train_SRL" in help_text
            for other in ("train_MNCE_BNM", "train_CDNE", "train_tRNSL"):
                assert other in help_text
            assert "--loss-args" in help_text and "--miner" in help_text
        else:
            assert "--loss" not in help_text


def test_baseline_configs_name_losses_their_script_accepts():
    """configs/*/baseline_*.yaml: every flag exists and the loss resolves, as a run would check it."""
    import yaml

    from dmlrs import cli_checks

    files = sorted((REPO / "configs").glob("*/baseline_*.yaml"))
    assert len(files) >= 8
    for path in files:
        config = yaml.safe_load(path.read_text())
        name = config["script"].split("/")[0].removeprefix("train_")
        argv = [item for key, value in config["args"].items() for item in (f"--{key}", str(value))]
        module, parser, args = parse(name, *argv)
        check_loss_arguments(args, cli_checks.explicit_dests(parser, argv), module.LOSS_TERM)
        assert args.loss.startswith("pml:") and config["paper_results"]["retrieval.mAP"] > 90, path
