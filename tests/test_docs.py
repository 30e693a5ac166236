"""The fidelity page and the README name only flags that exist, and the README links the page."""
import re
from pathlib import Path

from dmlrs import cli
from tests.engine.scripts import SCRIPTS, load_script

REPO = Path(__file__).resolve().parents[1]


def all_option_strings() -> set[str]:
    options = set()
    for name in SCRIPTS:
        module = load_script(name)
        parser = cli.make_parser(module.__doc__, module.add_arguments, module.DEFAULTS)
        options |= {option for action in parser._actions for option in action.option_strings}
    return options


def flags(text: str) -> set[str]:
    return set(re.findall(r"(?<![\w-])--[a-zA-Z][\w-]*", text))


def test_every_flag_named_in_the_fidelity_page_and_the_readme_script_sections_exists():
    options = all_option_strings()
    readme = (REPO / "README.md").read_text()
    texts = {"docs/fidelity.md": (REPO / "docs/fidelity.md").read_text(),
             "README splits": readme[readme.index("**Splits.**"):readme.index("**Pretrained weights.**")],
             "README scripts": readme[readme.index("## The scripts"):readme.index("### Run folders")]}
    for where, text in texts.items():
        named = flags(text)
        assert named and named <= options, (where, sorted(named - options))


def test_readme_method_table_links_the_fidelity_page():
    readme = (REPO / "README.md").read_text()
    table = readme[readme.index("| script | method"):readme.index("**Datasets:**")]
    assert "(docs/fidelity.md)" in table
