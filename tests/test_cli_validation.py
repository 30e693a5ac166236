"""Bad input anywhere ends with ONE ``error: ...`` line on stderr that names the flag or file, exit
status 2, no traceback, and nothing lost: refused before any work (no run folder is created) and no
existing file is rewritten (see dmlrs/cli_checks.py and the per-method checks in train_*/main.py)."""
import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from dmlrs import cli_checks
from dmlrs.data.fixtures import write_image_folder
from tests.engine.scripts import FAST, run_script, tiny_folder

RUNTIME = ["--num_workers", "0", "--no-progress", "--no-tensorboard"]


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    return tiny_folder(tmp_path_factory.mktemp("data"))  # 4 classes x 10 images -> 7 train images each


def exit_status(name: str, argv: list[str]) -> int:
    """The script's exit status: its return value, or argparse's SystemExit code."""
    try:
        return run_script(name, argv)
    except SystemExit as exc:
        return exc.code


def one_error_line(capsys, *names: str) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    for name in names:
        assert name in lines[0], (name, lines[0])
    return lines[0]


def train_argv(scenes, out, *extra):
    return ["--dataset", str(scenes), "--epochs", "1", "--steps-per-epoch", "1", "--out", str(out), *FAST, *extra]


# --------------------------------------------------------------------------- bad flags
#: (script, extra flags, text the error line must contain). All refused before the data scan.
BAD_FLAGS = [
    ("SNCA_CE", ["--lr", "nan"], "--lr"),
    ("SNCA_CE", ["--lr", "-0.1"], "--lr"),
    ("SNCA_CE", ["--lr", "inf"], "--lr"),
    ("SNCA_CE", ["--momentum", "1"], "--momentum"),
    ("SNCA_CE", ["--momentum", "-0.9"], "--momentum"),
    ("SNCA_CE", ["--momentum", "0"], "--no-nesterov"),
    ("SNCA_CE", ["--weight-decay", "-1e-4"], "--weight-decay"),
    ("SNCA_CE", ["--weight-decay", "inf"], "--weight-decay"),
    ("SNCA_CE", ["--lr-gamma", "0"], "--lr-gamma"),
    ("SNCA_CE", ["--lr-gamma", "1.5"], "--lr-gamma"),
    ("SNCA_CE", ["--lr-step", "0"], "--lr-step"),
    ("SNCA_CE", ["--epochs", "0"], "--epochs"),
    ("SNCA_CE", ["-b", "0"], "--batch-size"),
    ("SNCA_CE", ["-b", "1"], "-b 1"),  # 32 px: a 1x1 final map, batch norm cannot train on one image
    ("SNCA_CE", ["--img-size", "4"], "--img-size"),
    ("SNCA_CE", ["--model", "vgg16", "--img-size", "16"], "--img-size"),
    ("SNCA_CE", ["--dim", "0"], "--dim"),
    ("SNCA_CE", ["--eval-every", "0"], "--eval-every"),
    ("SNCA_CE", ["--steps-per-epoch", "-1"], "--steps-per-epoch"),
    ("SNCA_CE", ["--num_workers", "-1"], "--num_workers"),
    ("SNCA_CE", ["--seed", "-1"], "--seed"),
    ("SNCA_CE", ["--seed", str(2**32)], "--seed"),
    ("SNCA_CE", ["--temperature", "0"], "--temperature"),
    ("SNCA_CE", ["--temperature", "nan"], "--temperature"),
    ("SNCA_CE", ["--margin", "-0.1"], "--margin"),
    ("SNCA_CE", ["--lambda_", "inf"], "--lambda_"),
    ("SNCA_CE", ["--memory-momentum", "1"], "--memory-momentum"),
    ("SNCA_CE_MC", ["--ema", "1"], "--ema"),
    ("SNCA_CE_MC", ["--ema", "-0.5"], "--ema"),
    ("SNCA_CE", ["--ce-weight", "-1"], "--ce-weight"),
    ("SNCA_CE_MC", ["--lambda_", "0", "--ce-weight", "0"], "--ce-weight 0"),
    ("CDNE", ["--ce-weight", "-1"], "--ce-weight"),
    ("CDNE", ["--quant-weight", "nan"], "--quant-weight"),
    ("CDNE", ["--lambda_", "0", "--ce-weight", "0", "--quant-weight", "0"], "--quant-weight"),
    ("MNCE_BNM", ["--train_per", "1.0"], "--train_per"),
    ("MNCE_BNM", ["--train_per", "0"], "--train_per"),
    ("MNCE_BNM", ["--margin", "1.6"], "--margin"),
    ("MNCE_BNM", ["--bnm-weight", "-1"], "--bnm-weight"),
    ("tRNSL", ["--noiseRate", "1.0"], "--noiseRate"),
    ("tRNSL", ["--q", "0"], "--q"),
    ("tRNSL", ["--q", "1.5"], "--q"),
    ("tRNSL", ["--k", "1"], "--k"),
    ("tRNSL", ["--start_prune", "0"], "--start_prune"),
    ("SRL", ["--images-per-class", "1"], "--images-per-class"),
    ("SRL", ["--classes-per-batch", "1"], "--classes-per-batch"),
    ("SRL", ["--alpha", "0"], "--alpha"),
    ("SRL", ["--alpha", "2.5"], "--alpha"),
    ("SRL", ["--margin", "1.2"], "--alpha"),
    ("SNCA_CE", ["--device", "tpu"], "--device"),
    ("SNCA_CE", ["--device", "cuda:99"], "--device"),
    ("SNCA_CE", ["--weights", "no_such_weights.pt"], "--weights"),
    ("SNCA_CE", ["--split-file", "no_such_split.json"], "no_such_split.json"),
    ("SNCA_CE", ["--resume", "a.pt", "--evaluate", "b.pt"], "--evaluate"),
    ("SNCA_CE", ["--evaluate", "no_such.pt"], "--evaluate"),
]


@pytest.mark.parametrize("name, extra, named", BAD_FLAGS, ids=[f"{n}{' '.join(e)}" for n, e, _ in BAD_FLAGS])
def test_a_bad_flag_is_one_error_before_any_work(name, extra, named, scenes, tmp_path, capsys):
    out = tmp_path / "runs"
    assert exit_status(name, train_argv(scenes, out, *extra)) == 2
    one_error_line(capsys, named)
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_on_a_machine_without_it_is_one_error_before_any_work(scenes, tmp_path, capsys):
    out = tmp_path / "runs"
    assert exit_status("SNCA_CE", train_argv(scenes, out, "--device", "cuda")) == 2
    one_error_line(capsys, "--device cuda", "--device cpu")
    assert not out.exists()


def test_an_out_folder_that_is_a_file_is_one_error(scenes, tmp_path, capsys):
    out = tmp_path / "runs"
    out.write_text("a file")
    assert exit_status("SNCA_CE", train_argv(scenes, out)) == 2
    one_error_line(capsys, "--out")
    assert out.read_text() == "a file"


#: checks that need the class counts: after the data scan, before the run folder
BAD_FOR_THE_DATA = [
    ("MNCE_BNM", ["--train_per", "0.95"], ["--train_per", "unlabelled pool"]),  # 7 train images: all labelled
    ("MNCE_BNM", ["--transductive", "--train_per", "0.05"], ["--train_per", "'class_0'", "0.1"]),  # int(0.5) = 0
    ("SRL", ["--images-per-class", "8"], ["--images-per-class", "'class_0'", "--images-per-class 7"]),
    ("SRL", ["--classes-per-batch", "5"], ["--classes-per-batch 5"]),
    ("SNCA_CE", ["--select-metric", "hamming_P@20"], ["--select-metric"]),
]


@pytest.mark.parametrize("name, extra, named", BAD_FOR_THE_DATA, ids=[" ".join(e) for _, e, _ in BAD_FOR_THE_DATA])
def test_a_flag_the_data_cannot_satisfy_is_one_error_before_training(name, extra, named, scenes, tmp_path, capsys):
    out = tmp_path / "runs"
    assert exit_status(name, train_argv(scenes, out, *extra)) == 2
    one_error_line(capsys, *named)
    assert not out.exists()


def test_srl_notes_that_b_only_sets_the_evaluation_batch(scenes, tmp_path, capsys):
    argv = train_argv(scenes, tmp_path / "runs", "--classes-per-batch", "2", "--images-per-class", "2")
    assert run_script("SRL", argv) == 0  # FAST passes -b 8, SRL trains on 2 x 2
    captured = capsys.readouterr()
    assert "-b 8 only sets the evaluation batch size" in captured.out and "2 x 2" in captured.out
    assert "error" not in captured.err


@pytest.mark.parametrize("text, ok", [("0.5", True), ("0", True), ("1", False), ("nan", False), ("inf", False),
                                      ("-inf", False), ("x", False)])
def test_argparse_types_refuse_nan_and_inf(text, ok):
    import argparse

    convert = cli_checks.fraction_below_one
    if ok:
        assert convert(text) == float(text)
    else:
        with pytest.raises(argparse.ArgumentTypeError):
            convert(text)
    for positive in (cli_checks.positive_float, cli_checks.non_negative_float):
        with pytest.raises(argparse.ArgumentTypeError):
            positive("nan")
        with pytest.raises(argparse.ArgumentTypeError):
            positive("inf")


@pytest.mark.parametrize("model, smallest", sorted(cli_checks.MIN_IMAGE_SIZE.items()))
def test_the_smallest_image_size_of_each_backbone_trains(model, smallest):
    """The minimum that check_arguments enforces is real: a train-mode batch of 2 goes forward and
    backward at that size (VGG16: and not one pixel below)."""
    from dmlrs.models import build_model

    net = build_model(model, 8, weights="none", num_classes=3).train()
    out = net(torch.randn(2, 3, smallest, smallest))
    (out["embedding"].sum() + out["logits"].sum()).backward()
    if model == "vgg16":
        with pytest.raises(RuntimeError):
            net(torch.randn(2, 3, smallest - 1, smallest - 1))


# --------------------------------------------------------------------------- bad run files
@pytest.fixture(scope="module")
def trained(scenes, tmp_path_factory):
    """One finished SNCA_CE run and one CDNE run: {method: run folder}."""
    out = tmp_path_factory.mktemp("trained")
    runs = {}
    for name in ("SNCA_CE", "CDNE"):
        assert run_script(name, train_argv(scenes, out)) == 0
        (runs[name],) = sorted((out / name).glob("*/*/config.json"))
        runs[name] = runs[name].parent
    return runs


def copy_run(run_dir: Path, to: Path) -> Path:
    """A copy of a run folder (checkpoints hard-linked: the test must not change them anyway)."""
    shutil.copytree(run_dir, to, copy_function=lambda s, d: os.link(s, d) if s.endswith(".pt") else shutil.copy2(s, d))
    return to


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def edit_config(run: Path, change) -> None:
    path = run / "config.json"
    config = json.loads(path.read_text())
    change(config)
    path.write_text(json.dumps(config))


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.unlink()  # a hard link: write a new file instead of truncating the shared one
    path.write_bytes(data[: len(data) // 2])


def lone_checkpoint(run: Path) -> Path:
    """best.pt alone in a folder (no config.json, no split.json next to it)."""
    lone = run.parent / "lone" / "checkpoints"
    lone.mkdir(parents=True)
    os.link(run / "checkpoints" / "best.pt", lone / "best.pt")
    return lone / "best.pt"


def five_classes(run: Path) -> Path:
    return write_image_folder(run.parent / "five", {f"class_{c}": 10 for c in range(5)}, size=24, ext=".png")


# (id, method of the run, how to damage it -> (script, flags, texts the error names))
def _invalid_json(run):
    (run / "config.json").write_text('{"method": "SNCA_CE", "args": {')
    return "SNCA_CE", ["--evaluate", run / "checkpoints" / "best.pt"], ["config.json", "not valid JSON"]


def _invalid_json_resume(run):
    (run / "config.json").write_text("\x00\x01 not json")
    return "SNCA_CE", ["--resume", run / "checkpoints" / "last.pt"], ["config.json", "not valid JSON"]


def _not_an_object(run):
    (run / "config.json").write_text("[1, 2, 3]")
    return "SNCA_CE", ["--evaluate", run / "checkpoints" / "best.pt"], ["config.json", '"args"']


def _no_args(run):
    (run / "config.json").write_text('{"method": "SNCA_CE"}')
    return "SNCA_CE", ["--resume", run / "checkpoints" / "last.pt"], ["config.json", '"args"']


def _bad_value(run):
    edit_config(run, lambda c: c["args"].update(lr=-1))
    return "SNCA_CE", ["--evaluate", run / "checkpoints" / "best.pt"], ["config.json", "--lr", "-1"]


def _bad_seed(run):
    edit_config(run, lambda c: c["args"].update(seed=-1))
    return "SNCA_CE", ["--resume", run / "checkpoints" / "last.pt"], ["config.json", "--seed"]


def _bad_choice(run):
    edit_config(run, lambda c: c["args"].update(model="alexnet"))
    return "SNCA_CE", ["--evaluate", run / "checkpoints" / "best.pt"], ["config.json", "--model", "alexnet"]


def _bad_kind(run):
    edit_config(run, lambda c: c["args"].update(amp="yes"))
    return "SNCA_CE", ["--evaluate", run / "checkpoints" / "best.pt"], ["config.json", "--amp"]


def _other_method_evaluate(run):
    return "SNCA_CE", ["--evaluate", run / "checkpoints" / "best.pt"], ["CDNE", "SNCA_CE", "train_CDNE/main.py"]


def _other_method_resume(run):
    return "SNCA_CE_MC", ["--resume", run / "checkpoints" / "last.pt"], ["CDNE", "SNCA_CE_MC", "train_CDNE/main.py"]


def _other_dim(run):
    return "SNCA_CE", ["--evaluate", run / "checkpoints" / "best.pt", "--dim", "32"], ["best.pt", "--dim"]


def _other_dim_resume(run):
    return "SNCA_CE", ["--resume", run / "checkpoints" / "last.pt", "--dim", "32"], ["last.pt", "--dim"]


def _other_backbone(run):
    return "SNCA_CE", ["--evaluate", run / "checkpoints" / "best.pt", "--model", "resnet50"], \
        ["best.pt", "resnet18", "--model"]


def _other_class_count(run):
    flags = ["--evaluate", lone_checkpoint(run), "--dataset", five_classes(run), *FAST]
    return "SNCA_CE", flags, ["best.pt", "4 classes", "5"]


def _truncated_evaluate(run):
    truncate(run / "checkpoints" / "best.pt")
    return "SNCA_CE", ["--evaluate", run / "checkpoints" / "best.pt"], ["best.pt", "damaged"]


def _truncated_resume(run):
    truncate(run / "checkpoints" / "last.pt")
    return "SNCA_CE", ["--resume", run / "checkpoints" / "last.pt"], ["last.pt", "damaged"]


def _weights_only(run):
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    (run / "checkpoints" / "last.pt").unlink()
    torch.save({"method": state["method"], "epoch": state["epoch"]}, run / "checkpoints" / "last.pt")
    return "SNCA_CE", ["--resume", run / "checkpoints" / "last.pt"], ["last.pt", "--evaluate"]


def _corrupt_split(run):
    (run / "split.json").write_text('{"version": 1, "classes": [')
    return "SNCA_CE", ["--resume", run / "checkpoints" / "last.pt"], ["split.json"]


def _corrupt_split_file(run):
    (run / "split.json").write_text("[]")
    return "SNCA_CE", ["--evaluate", run / "checkpoints" / "best.pt", "--split-file", run / "split.json"], \
        ["split.json"]


BAD_RUN_FILES = [
    ("SNCA_CE", _invalid_json), ("SNCA_CE", _invalid_json_resume), ("SNCA_CE", _not_an_object),
    ("SNCA_CE", _no_args), ("SNCA_CE", _bad_value), ("SNCA_CE", _bad_seed), ("SNCA_CE", _bad_choice),
    ("SNCA_CE", _bad_kind), ("CDNE", _other_method_evaluate), ("CDNE", _other_method_resume),
    ("SNCA_CE", _other_dim), ("SNCA_CE", _other_dim_resume), ("SNCA_CE", _other_backbone),
    ("SNCA_CE", _other_class_count), ("SNCA_CE", _truncated_evaluate), ("SNCA_CE", _truncated_resume),
    ("SNCA_CE", _weights_only), ("SNCA_CE", _corrupt_split), ("SNCA_CE", _corrupt_split_file),
]


@pytest.mark.parametrize("method, damage", BAD_RUN_FILES, ids=[d.__name__.strip("_") for _, d in BAD_RUN_FILES])
def test_a_bad_run_file_is_one_error_and_nothing_is_overwritten(method, damage, trained, tmp_path, capsys):
    run = copy_run(trained[method], tmp_path / "work" / "run")
    script, flags, named = damage(run)
    before = snapshot(tmp_path / "work")
    out = tmp_path / "out"
    assert exit_status(script, [str(f) for f in flags] + ["--out", str(out), *RUNTIME]) == 2
    one_error_line(capsys, *named)
    assert snapshot(tmp_path / "work") == before  # no file rewritten, none added (no report, no checkpoint)
    assert not out.exists()  # no run folder for the refused command


def test_the_undamaged_run_still_evaluates(trained, tmp_path, capsys):
    """The control for the cases above: the same command on the intact copy succeeds."""
    run = copy_run(trained["SNCA_CE"], tmp_path / "work" / "run")
    argv = ["--evaluate", str(run / "checkpoints" / "best.pt"), "--out", str(tmp_path / "out"), *RUNTIME]
    assert run_script("SNCA_CE", argv) == 0
    assert list((tmp_path / "out").glob("SNCA_CE/*/*/test_metrics.json"))
