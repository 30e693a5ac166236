"""The reproduction rows: ``configs/<paper>/<row>.yaml``, one file per published table row.

A row file names the script, its flags (``args:``, read by ``--config``), the paper's numbers for
the row in percent (``paper_results:``, keys are paths in ``test_metrics.json``) and their
source, or the paper's claim where its table was not available::

    paper: cdne                          # = folder name
    row: nwpu_mb_32                      # = file stem
    title: "CDNE (MB), 32 bits, NWPU-RESISC45"
    script: train_CDNE/main.py           # relative to the repository root
    args: {dataset: NWPU-RESISC45, dim: 32, memory: bank}
    paper_results: {hamming.mAP@100: 99.83}
    source: "Kang et al., JSTARS 2020, Table I (MAP with R = 100)"
    claim: "..."                         # optional

``configs/generate.py`` writes the published rows; other files in the same format (e.g.
baseline rows) are read the same way.
"""
from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from pathlib import Path

from dmlrs.config_file import read_mapping
from dmlrs.errors import DmlrsError

#: the papers in the order their rows run and are reported; other folders follow, sorted
PAPER_ORDER = ("snca_ce", "hr_s2dml", "cdne", "trnsl", "srl")
REQUIRED = ("paper", "row", "title", "script", "args", "paper_results", "source")
OPTIONAL = ("claim",)

#: metric paths of test_metrics.json (dmlrs/engine/evaluation.py): "<group>.<metric>" or a top-level key
_RANKED = r"mAP|mAP@R|[PR]@[1-9]\d*"
METRIC_PATTERNS = {
    None: r"knn_acc|knn_acc_clean_gallery",
    "retrieval": _RANKED,
    "retrieval_leave_one_out": _RANKED,
    "hamming": r"mAP|mAP@[1-9]\d*|P@[1-9]\d*|P@H<=\d+",
    "AP_per_class": r".+",
}


def is_metric_path(path: str) -> bool:
    """Whether ``path`` names a metric of ``test_metrics.json`` (``knn_acc``, ``retrieval.P@10``,
    ``hamming.mAP@100``, ``AP_per_class.<class>`` ...)."""
    group, _, metric = path.partition(".") if "." in path else (None, "", path)
    pattern = METRIC_PATTERNS.get(group)
    return pattern is not None and re.fullmatch(pattern, metric) is not None


def repo_root() -> Path:
    return Path(__file__).resolve().parents[2]


def default_configs_dir() -> Path:
    return repo_root() / "configs"


@dataclass(frozen=True)
class Row:
    paper: str
    name: str
    title: str
    script: str
    args: dict
    paper_results: dict
    source: str
    path: Path
    claim: str | None = None
    extra: dict = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.paper}/{self.name}"

    def script_path(self, root: Path | None = None) -> Path:
        return (root or self.path.parent.parent.parent) / self.script


def load_row(path: str | Path) -> Row:
    """One row file, checked: every required key, paper = folder name, row = file stem, a
    mapping of flags, paper numbers under metric paths."""
    path = Path(path)
    data = read_mapping(path)
    missing = [k for k in REQUIRED if k not in data]
    if missing:
        raise DmlrsError(f"{path}: not a reproduction row, it lacks {', '.join(missing)} (see configs/generate.py)")
    if data["paper"] != path.parent.name or data["row"] != path.stem:
        raise DmlrsError(f"{path}: paper {data['paper']!r} / row {data['row']!r} must be the folder name "
                         f"{path.parent.name!r} / the file stem {path.stem!r}")
    if not isinstance(data["args"], dict):
        raise DmlrsError(f"{path}: 'args' must be a mapping of flag names to values")
    results = data["paper_results"] or {}
    if not isinstance(results, dict):
        raise DmlrsError(f"{path}: 'paper_results' must be a mapping of metric paths to numbers in percent")
    for key, value in results.items():
        if not is_metric_path(str(key)):
            raise DmlrsError(f"{path}: paper_results key {key!r} is not a metric of test_metrics.json (e.g. "
                             "knn_acc, retrieval.mAP, retrieval.P@10, hamming.mAP@100)")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise DmlrsError(f"{path}: paper_results {key!r} must be a number in percent, got {value!r}")
    extra = {k: v for k, v in data.items() if k not in REQUIRED + OPTIONAL}
    return Row(paper=data["paper"], name=data["row"], title=str(data["title"]), script=str(data["script"]),
               args=dict(data["args"]), paper_results={str(k): float(v) for k, v in results.items()},
               source=str(data["source"]), path=path, claim=data.get("claim"), extra=extra)


def _natural(text: str) -> list:
    """Sort key with numbers in order: nwpu_mb_16 before nwpu_mb_128."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def paper_names(configs: Path) -> list[str]:
    found = {p.name for p in configs.iterdir() if p.is_dir() and any(p.glob("*.yaml"))} if configs.is_dir() else set()
    return [p for p in PAPER_ORDER if p in found] + sorted(found - set(PAPER_ORDER))


def load_rows(configs: Path | None = None) -> list[Row]:
    """Every row below ``configs`` (default: the repository's ``configs/``), papers in
    :data:`PAPER_ORDER`, rows in natural order."""
    configs = Path(configs) if configs is not None else default_configs_dir()
    if not configs.is_dir():
        raise DmlrsError(f"no configs folder at {configs}; pass --configs DIR (the folder with <paper>/<row>.yaml)")
    rows = []
    for paper in paper_names(configs):
        rows += [load_row(p) for p in sorted((configs / paper).glob("*.yaml"), key=lambda p: _natural(p.stem))]
    return rows


def select(rows: list[Row], paper: str, patterns: list[str] | None = None) -> list[Row]:
    """The rows of ``paper`` (``all``: every paper) whose name or ``paper/name`` matches one of
    ``patterns`` (shell wildcards allowed); one error listing the valid names otherwise."""
    papers = list(dict.fromkeys(r.paper for r in rows))
    if paper != "all" and paper not in papers:
        raise DmlrsError(f"unknown paper {paper!r}; choose all or one of: {', '.join(papers)}")
    chosen = [r for r in rows if paper == "all" or r.paper == paper]
    if not patterns:
        return chosen
    picked, unmatched = [], []
    for pattern in patterns:
        hits = [r for r in chosen if fnmatch.fnmatchcase(r.name, pattern) or fnmatch.fnmatchcase(r.key, pattern)]
        if not hits:
            unmatched.append(pattern)
        picked += [r for r in hits if r not in picked]
    if unmatched:
        names = ", ".join(r.name if paper != "all" else r.key for r in chosen)
        raise DmlrsError(f"--rows: no row {', '.join(map(repr, unmatched))} in {paper}; valid rows: {names}")
    return [r for r in chosen if r in picked]
