"""``--config FILE``: a script's flags from a YAML or JSON file.

The file holds a mapping of flag names (without leading dashes) to values::

    dataset: AID           # --dataset AID
    lambda_: 0             # --lambda_ 0
    batch-size: 128        # -b / --batch-size / --batch_size: any spelling of the flag, - or _
    amp: true              # store_true flags take true/false
    no-truncation: true    # so do store_false flags, under their flag name

or, as the reproduction rows in ``configs/<paper>/<row>.yaml`` do, such a mapping under ``args:``
(the other keys of such a file, ``paper``, ``title``, ``paper_results`` ..., describe the row and
are not flags). A run's own ``config.json`` works too: its ``args`` are the resolved flags, keyed
by their destination names (``nesterov: false`` for ``--no-nesterov``), and ``null`` leaves a flag
at its default.

Every key is checked against the script's parser (an unknown key is one error naming the file,
the key and the flags it resembles) and every value goes through the flag's own argparse type
and choices (an out-of-range value names the file and the key). The file is then turned into
command-line tokens placed BEFORE the real ones, so a flag given on the command line overrides
the file and the values are typed exactly as typed flags are; the resolved values land in the
run's ``config.json`` with the rest of the arguments, and ``--config`` records the file's path.
"""
from __future__ import annotations

import argparse
import difflib
import json
from pathlib import Path

from dmlrs.errors import DmlrsError

FLAG = "--config"
#: a key only a run's own config.json has (beside "args")
RUN_CONFIG_KEY = "fingerprint"


def config_path_in(argv: list[str]) -> str | None:
    """The value of the last ``--config`` in ``argv`` (``--config FILE`` or ``--config=FILE``)."""
    found = None
    for i, token in enumerate(argv):
        if token == "--":
            break
        if token == FLAG:
            if i + 1 >= len(argv):
                raise DmlrsError(f"{FLAG} needs a file: {FLAG} FILE.yaml (or .json)")
            found = argv[i + 1]
        elif token.startswith(FLAG + "="):
            found = token[len(FLAG) + 1:]
    return found


def read_mapping(path: str | Path) -> dict:
    """The file's mapping (YAML, or JSON for ``.json``), one error naming the file if it cannot be
    read or parsed or is not a mapping."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DmlrsError(f"{FLAG} {path}: file not found") from None
    except IsADirectoryError:
        raise DmlrsError(f"{FLAG} {path}: is a folder; pass a .yaml or .json file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DmlrsError(f"{FLAG} {path}: cannot read it ({getattr(exc, 'strerror', None) or exc})") from None
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DmlrsError(f"{FLAG} {path}: not valid JSON (line {exc.lineno}, column {exc.colno}: "
                             f"{exc.msg})") from None
    else:
        data = _load_yaml(text, path)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise DmlrsError(f"{FLAG} {path}: must hold a mapping of flag names to values (e.g. 'dataset: AID'), "
                         f"not a {type(data).__name__}")
    return data


def _load_yaml(text: str, path: Path):
    try:
        import yaml
    except ImportError:  # pragma: no cover - PyYAML is in requirements.txt
        raise DmlrsError(f"{FLAG} {path}: reading YAML needs PyYAML (pip install pyyaml); or write the "
                         "file as JSON (.json)") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise DmlrsError(f"{FLAG} {path}: not valid YAML ({where}{problem})") from None


def flag_values(data: dict, path: str | Path) -> dict:
    """The flag mapping of a loaded file: its ``args:`` mapping if it has one, else the file."""
    if "args" in data:
        args = data["args"]
        if args is None:
            return {}
        if not isinstance(args, dict):
            raise DmlrsError(f"{FLAG} {path}: 'args' must be a mapping of flag names to values, not a "
                             f"{type(args).__name__}")
        return args
    return data


def _lookup(parser: argparse.ArgumentParser) -> tuple[dict, dict]:
    """``(by flag spelling without dashes, by destination)`` -> action, for the optional flags."""
    by_flag, by_dest = {}, {}
    for action in parser._actions:
        if not action.option_strings or isinstance(action, argparse._HelpAction):
            continue
        for option in action.option_strings:
            if option.startswith("--"):
                by_flag[option[2:]] = action
        by_dest.setdefault(action.dest, action)
    return by_flag, by_dest


def _find(key: str, by_flag: dict, by_dest: dict) -> tuple[argparse.Action | None, bool]:
    """``(action, named by its flag)`` for a key; ``-`` and ``_`` are interchangeable."""
    for spelling in (key, key.replace("_", "-"), key.replace("-", "_")):
        if spelling in by_flag:
            return by_flag[spelling], True
    for spelling in (key, key.replace("-", "_")):
        if spelling in by_dest:
            return by_dest[spelling], False
    return None, False


def _long_option(action: argparse.Action) -> str:
    return next(s for s in action.option_strings if s.startswith("--"))


def _unknown(key: str, path, by_flag: dict) -> DmlrsError:
    names = sorted(set(by_flag))
    near = difflib.get_close_matches(key, names, n=3, cutoff=0.6)
    near += [n for n in difflib.get_close_matches(key.replace("_", "-"), names, n=3, cutoff=0.6) if n not in near]
    hint = (f"did you mean {', '.join(near[:3])}?" if near
            else "the keys are the script's flags without leading dashes (--help lists them)")
    return DmlrsError(f"{FLAG} {path}: unknown key '{key}': this script has no flag --{key}; {hint}")


def _check_value(action: argparse.Action, key: str, value, path):
    """``value`` through the flag's type and choices; one error naming the file and key."""
    text = str(value)
    if isinstance(value, (list, dict)):
        raise DmlrsError(f"{FLAG} {path}: '{key}' must be a single value, not a {type(value).__name__}")
    if isinstance(value, bool):
        raise DmlrsError(f"{FLAG} {path}: '{key}' takes a value ({_long_option(action)} VALUE), not "
                         f"{str(value).lower()}")
    if action.type is not None:
        try:
            converted = action.type(text)
        except (argparse.ArgumentTypeError, TypeError, ValueError) as exc:
            raise DmlrsError(f"{FLAG} {path}: '{key}': {exc}") from None
    else:
        converted = text
    if action.choices is not None and converted not in action.choices:
        raise DmlrsError(f"{FLAG} {path}: '{key}' must be one of {', '.join(map(str, action.choices))}, got "
                         f"{text!r}")
    return text


def tokens_from_file(parser: argparse.ArgumentParser, path: str | Path) -> list[str]:
    """The file as command-line tokens (``--flag=value``), checked against ``parser``."""
    data = read_mapping(path)
    values = flag_values(data, path)
    by_flag, by_dest = _lookup(parser)
    tokens: list[str] = []
    for key, value in values.items():
        key = str(key).lstrip("-")
        if key == FLAG[2:]:
            if RUN_CONFIG_KEY in data:
                continue  # a run's config.json records the file it was started from
            raise DmlrsError(f"{FLAG} {path}: a config file cannot name another config file ('{key}')")
        action, by_name = _find(key, by_flag, by_dest)
        if action is None:
            raise _unknown(key, path, by_flag)
        option = _long_option(action)
        if value is None:
            continue  # null: the flag's default (a run's config.json records unset flags as null)
        if action.nargs == 0:  # store_true / store_false / store_const
            if not isinstance(value, bool):
                raise DmlrsError(f"{FLAG} {path}: '{key}' is a switch: write true or false, not {value!r}")
            # by flag name: true = give the flag; by destination: the value the flag sets
            if (value if by_name else value == action.const):
                tokens.append(option)
            continue
        tokens.append(f"{option}={_check_value(action, key, value, path)}")
    return tokens


def dests_in_file(parser: argparse.ArgumentParser, path: str | Path) -> set[str]:
    """The destinations (``args`` attribute names) of the flags the file sets."""
    by_flag, by_dest = _lookup(parser)
    found = set()
    for key in flag_values(read_mapping(path), path):
        action, _ = _find(str(key).lstrip("-"), by_flag, by_dest)
        if action is not None:
            found.add(action.dest)
    return found


def expand_argv(parser: argparse.ArgumentParser, argv: list[str], script: str | None = None) -> list[str]:
    """``argv`` with the ``--config`` file's flags put in front (the command line wins). ``script``
    (``train_X/main.py``): refuse a row file whose ``script:`` names another script."""
    path = config_path_in(argv)
    if path is None:
        return list(argv)
    if script is not None:
        check_script(path, script)
    return tokens_from_file(parser, path) + list(argv)


def check_script(path: str | Path, script: str) -> None:
    """A row file naming another script (``script: train_X/main.py``) is refused with the command
    that runs it."""
    data = read_mapping(path)
    named = data.get("script") if "args" in data else None
    if named is None:
        return
    if Path(str(named)).parent.name != Path(script).parent.name:
        raise DmlrsError(f"{FLAG} {path} is a row of {named}, not of {script}: run python {named} {FLAG} {path}")
