"""docs/adding_a_loss.md is a test: its loss file, registry line, training command, error example
and reference test are taken from the page and run as written, with no other change to dmlrs."""
import importlib.util
import json
import re
import shlex
import sys
from pathlib import Path

import pytest

from dmlrs.losses import LOSSES
from tests.engine.scripts import FAST, only_run_dir, read_json, run_script

PAGE = Path(__file__).resolve().parents[2] / "docs" / "adding_a_loss.md"


def code_blocks() -> dict[str, str]:
    """The page's ```python blocks, keyed by the `path` named on the line above each."""
    pattern = r"`(?P<path>[\w/.]+\.py)`[^\n]*\n\n```python\n(?P<code>.*?)```"
    return {m["path"]: m["code"] for m in re.finditer(pattern, PAGE.read_text(), flags=re.S)}


def page_command(prefix: str) -> list[str]:
    """The arguments of the page's first command line that starts with ``prefix``."""
    line = next(line for line in PAGE.read_text().splitlines() if line.startswith(prefix))
    return shlex.split(line)[2:]


@pytest.fixture
def example(tmp_path, monkeypatch):
    """The page's loss file as a throwaway module ``dmlrs.losses.cosine_margin``, registered with
    the page's registry line (as the one-line edit of dmlrs/losses/__init__.py would)."""
    blocks = code_blocks()
    path = tmp_path / "cosine_margin.py"
    path.write_text(blocks["dmlrs/losses/cosine_margin.py"])
    spec = importlib.util.spec_from_file_location("dmlrs.losses.cosine_margin", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setitem(sys.modules, "dmlrs.losses.cosine_margin", module)
    (name, class_name), = re.findall(r'^\s+"(\w+)": (\w+),$', blocks["dmlrs/losses/__init__.py"], flags=re.M)
    monkeypatch.setitem(LOSSES, name, getattr(module, class_name))
    return name, module


def test_the_page_example_is_about_thirty_lines_with_a_docstring():
    code = code_blocks()["dmlrs/losses/cosine_margin.py"]
    assert code.startswith('"""') and 25 <= len(code.splitlines()) <= 45


def test_the_page_reference_test_passes(example):
    namespace = {}
    exec(compile(code_blocks()["tests/losses/test_cosine_margin.py"], "test_cosine_margin.py", "exec"), namespace)
    tests = [value for key, value in namespace.items() if key.startswith("test_")]
    assert len(tests) == 2
    for test in tests:
        test()


def test_the_page_command_trains_the_new_loss_in_place_of_snca(example, tmp_path):
    name, _ = example
    argv = page_command("python train_SNCA_CE/main.py --dataset demo --loss")
    assert argv[argv.index("--loss") + 1] == name
    out = tmp_path / "runs"
    assert run_script("SNCA_CE", [*argv, *FAST, "--epochs", "1", "--steps-per-epoch", "2", "--out", str(out)]) == 0
    run_dir = only_run_dir(out)
    train = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0])["train"]
    assert set(train) == {"loss", name, "ce", "pull", "push"}  # no snca: the new loss is the term
    assert train[name] == pytest.approx(train["pull"] + train["push"], rel=1e-5)
    assert train["loss"] == pytest.approx(train[name] + train["ce"], rel=1e-5)  # lambda_ 1 weights it
    config = read_json(run_dir / "config.json")["args"]
    assert config["loss"] == name and config["loss_args"] == "margin=0.3"


def test_the_page_error_example_is_what_the_script_prints(example, tmp_path, capsys):
    lines = PAGE.read_text().splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("$ python train_SNCA_CE/main.py"))
    argv = shlex.split(lines[at][2:])[2:]
    assert run_script("SNCA_CE", [*argv, "--out", str(tmp_path / "runs")]) == 2
    assert capsys.readouterr().err.strip() == lines[at + 1]
    assert not (tmp_path / "runs").exists()  # refused before any work
