"""The argument parser of an entry script, read from its file, and a row's resolved settings.

The harness runs scripts, it never imports them to train: this module only executes a script
file's top level (its imports and flag definitions; ``main()`` is not called) to build the same
parser the script builds, so a row's flags resolve exactly as the script resolves them (types,
defaults, the paper defaults that depend on the dataset). It is the one place in ``dmlrs/`` that
reads ``train_*/main.py``.
"""
from __future__ import annotations

import argparse
import functools
import importlib.util
from pathlib import Path

from dmlrs import cli, config_file
from dmlrs.errors import DmlrsError
from dmlrs.reproduce.rows import Row


@functools.lru_cache(maxsize=None)
def _module(script: Path):
    if not script.is_file():
        raise DmlrsError(f"script not found: {script}")
    spec = importlib.util.spec_from_file_location(f"dmlrs_script_{script.parent.name}", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # top level only: the __main__ block does not run
    return module


def script_parser(script: str | Path) -> argparse.ArgumentParser:
    """The parser ``train_X/main.py`` builds (same flags, types, defaults)."""
    module = _module(Path(script).resolve())
    return cli.make_parser(module.__doc__, module.add_arguments, getattr(module, "DEFAULTS", None))


def method_of(script: str | Path) -> str:
    """``train_SNCA_CE/main.py`` -> ``SNCA_CE`` (the method name its run folders carry)."""
    return Path(script).parent.name.removeprefix("train_")


def resolved_args(row: Row, extra: list[str] | None = None) -> dict:
    """Every setting the row's script would run with (``--config row`` + ``extra``), with the
    dataset-dependent defaults (weights, batch size, lr) filled in as the script fills them."""
    script = row.script_path()
    module = _module(script.resolve())
    parser = script_parser(script)
    argv = config_file.expand_argv(parser, ["--config", str(row.path), *(extra or [])], script=row.script)
    args = parser.parse_args(argv)
    cli.resolve_dataset_defaults(args, getattr(module, "PAPER_BATCH_SIZE", cli.PAPER_BATCH_SIZE),
                                 getattr(module, "DEFAULT_LR", cli.PAPER_LR))
    return vars(args)
