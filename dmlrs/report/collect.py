"""Find finished runs and group them by reproduction row.

A run folder is one with ``test_metrics.json`` and ``config.json``. It belongs to a row when it
was started from the row's file (``--config configs/<paper>/<row>.yaml``, recorded in
``config.json``) or, for a run started without ``--config``, when its method is the row's script
and it has every setting the row file sets (dataset, ``--lambda_``, ``--dim`` ...). A run that
changed one of those (e.g. ``--dataset AID`` on an NWPU-RESISC45 row) is not that row: it is
listed on its own, without the paper's numbers. Runs of one row with the same other settings
(seeds apart) form one group (mean +- std); settings that differ from the row's (a shorter
``--epochs``, ``--img-size``, ``--weights none`` ...) are listed with the group.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

from dmlrs import config_file
from dmlrs.cli import dataset_label
from dmlrs.cli_checks import effective_image_size
from dmlrs.errors import DmlrsError
from dmlrs.reproduce.rows import Row, load_row
from dmlrs.reproduce.scripts import method_of, resolved_args, script_parser

#: settings that do not change what a run computes or only say where it ran (not compared)
NOT_COMPARED = frozenset({"resume", "evaluate", "out", "num_workers", "progress", "tensorboard", "device", "data",
                          "save_every_steps", "skip_nonfinite", "log_every", "input_pipeline", "config", "seed",
                          "eval_every", "imgEXT", "pictures"})

#: settings a script resolves while it runs (None in the row: the run's value is its default)
RESOLVED_IN_RUN = frozenset({"classes_per_batch"})


@dataclass
class Run:
    path: Path
    method: str
    args: dict
    metrics: dict


@dataclass
class Group:
    """Runs of one row (or of one setting outside every row) with the same settings, seeds apart."""
    paper: str
    label: str
    runs: list[Run]
    row: Row | None = None  # set when the runs ARE the row: the paper's numbers apply
    differences: dict = field(default_factory=dict)  # setting -> (row's value, the runs' value)

    @property
    def paper_results(self) -> dict:
        return self.row.paper_results if self.row is not None else {}


def find_runs(paths: list[str | Path], warn=None) -> list[Run]:
    """Every run folder with ``test_metrics.json`` below ``paths`` (or given directly)."""
    warn = warn or (lambda message: print(message, file=sys.stderr))
    folders = []
    for path in map(Path, paths):
        if not path.exists():
            raise DmlrsError(f"{path}: not found; pass run folders or folders that hold them")
        found = [path.parent] if path.is_file() else sorted(p.parent for p in path.rglob("test_metrics.json"))
        folders += [f for f in found if f not in folders]
    if not folders:
        raise DmlrsError(f"no test_metrics.json below {', '.join(map(str, paths))}: no finished run to report")
    runs = []
    for folder in folders:
        try:
            config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
            metrics = json.loads((folder / "test_metrics.json").read_text(encoding="utf-8"))
            args = dict(config["args"])
            args["epochs"] = _trained_epochs(folder) or args.get("epochs")
            runs.append(Run(folder, str(config["method"]), args, metrics))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            warn(f"skipped {folder}: no readable config.json / test_metrics.json ({exc})")
    return runs


def _trained_epochs(folder: Path) -> int | None:
    """The epochs the run trained (``metrics.jsonl``): config.json keeps the first ``--epochs``
    of a run that was resumed with another."""
    try:
        lines = (folder / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
        return max(int(json.loads(line)["epoch"]) for line in lines if line.strip())
    except (OSError, ValueError, KeyError, TypeError):
        return None


def metric_value(metrics: dict, path: str) -> float | None:
    """The value at ``group.metric`` (or a top-level key) of a test_metrics dict, else None."""
    node = metrics
    group, dot, name = path.partition(".")
    for part in ((group, name) if dot else (path,)):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return float(node) if isinstance(node, (int, float)) and not isinstance(node, bool) else None


def _normalised(args: dict) -> dict:
    args = dict(args)
    if "dataset" in args and args["dataset"] is not None:
        args["dataset"] = dataset_label(str(args["dataset"]))
    if "img_size" in args and "dataset" in args:
        args["img_size"] = effective_image_size(argparse.Namespace(img_size=args["img_size"],
                                                                   dataset=args["dataset"]))
    return args


def _same(a, b) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        try:
            return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
        except (TypeError, ValueError):
            return False
    return a == b


class RowMatcher:
    """Which row a run is, with the row settings resolved by the row's own script parser."""

    def __init__(self, rows: list[Row]):
        self.rows = rows
        self.by_key = {row.key: row for row in rows}
        self._resolved: dict[str, tuple[dict, set]] = {}

    def settings(self, row: Row) -> tuple[dict, set]:
        """``(every setting of the row, the destinations its file sets)``."""
        if row.key not in self._resolved:
            defining = config_file.dests_in_file(script_parser(row.script_path()), row.path)
            self._resolved[row.key] = (_normalised(resolved_args(row)), defining)
        return self._resolved[row.key]

    def differences(self, row: Row, run: Run) -> tuple[dict, dict]:
        """``(differences in settings the row file sets, other differences)``: key -> (row, run)."""
        wanted, defining = self.settings(row)
        have = _normalised(run.args)
        own, other = {}, {}
        for key, value in wanted.items():
            if key in NOT_COMPARED or key not in have or (value is None and key in RESOLVED_IN_RUN):
                continue  # not in the run: an older dmlrs
            if not _same(value, have[key]):
                (own if key in defining else other)[key] = (value, have.get(key))
        return own, other

    def started_from(self, run: Run) -> Row | None:
        """The row whose file the run was started with (``--config``), if it is a row file."""
        config = run.args.get("config")
        if not config:
            return None
        path = Path(str(config))
        row = self.by_key.get(f"{path.parent.name}/{path.stem}")
        if row is None and path.is_file():
            try:
                row = load_row(path)
            except DmlrsError:
                return None
        return row if row is not None and method_of(row.script) == run.method else None

    def match(self, run: Run) -> tuple[Row | None, dict, dict]:
        """``(row, own differences, other differences)``: own is empty when the run IS the row."""
        row = self.started_from(run)
        if row is not None:
            return (row, *self.differences(row, run))
        best = None
        for candidate in self.rows:
            if method_of(candidate.script) != run.method:
                continue
            own, other = self.differences(candidate, run)
            if not own:
                specificity = len(self.settings(candidate)[1])
                if best is None or specificity > best[0]:
                    best = (specificity, candidate, other)
        return (best[1], {}, best[2]) if best is not None else (None, {}, {})


def _frozen(differences: dict) -> tuple:
    return tuple(sorted((k, json.dumps(v[1], sort_keys=True, default=str)) for k, v in differences.items()))


def group_runs(runs: list[Run], rows: list[Row]) -> list[Group]:
    """Groups in the rows' order (then runs outside every row, in folder order)."""
    matcher = RowMatcher(rows)
    groups: dict[tuple, Group] = {}
    for run in runs:
        row, own, other = matcher.match(run)
        if row is not None and not own:
            key = ("row", row.key, _frozen(other))
            group = groups.setdefault(key, Group(row.paper, row.title, [], row=row, differences=other))
        elif row is not None:
            changed = {**own, **other}
            label = f"{row.title}, run with " + ", ".join(f"{k} {format_setting(v[1])}" for k, v in sorted(own.items()))
            key = ("changed", row.key, _frozen(changed))
            group = groups.setdefault(key, Group(row.paper, label, [], differences=changed))
        else:
            args = _normalised(run.args)
            settings = {k: v for k, v in args.items() if k not in NOT_COMPARED}
            key = ("other", run.method, json.dumps(settings, sort_keys=True, default=str))
            group = groups.setdefault(key, Group("other", f"{run.method}, {args.get('dataset')}", []))
        group.runs.append(run)
    order = {row.key: i for i, row in enumerate(rows)}
    kinds = {"row": 0, "changed": 1, "other": 2}
    ranked = sorted(groups.items(), key=lambda item: (order.get(item[0][1], len(order)), kinds[item[0][0]]))
    return [group for _, group in ranked]


def format_setting(value) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)
