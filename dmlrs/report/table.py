"""Render grouped runs as the papers' tables: ours (mean +- std over runs) beside the paper's
numbers and the difference, in Markdown, CSV or LaTeX, with the metric definitions below.

All numbers are percent. ``ours`` is the mean over the n runs of a group and, for n >= 2, the
sample standard deviation (n - 1 in the denominator); ``diff`` = ours (mean) - paper, in points.
"""
from __future__ import annotations

import csv
import io
import statistics
from dataclasses import dataclass

from dmlrs.report.collect import Group, format_setting, metric_value

#: the columns of each paper's table (those without any value are dropped); the papers' own
#: metrics first, then the ones every dmlrs report has
LAYOUT = {
    "snca_ce": ("knn_acc", "retrieval.mAP", "retrieval.P@5", "retrieval.P@10", "retrieval.P@50", "retrieval.P@100"),
    "hr_s2dml": ("knn_acc", "retrieval.mAP", "retrieval.P@5", "retrieval.P@10", "retrieval.P@50", "retrieval.P@100"),
    "cdne": ("hamming.mAP@100", "hamming.mAP", "hamming.P@H<=2", "knn_acc", "retrieval.mAP"),
    "trnsl": ("knn_acc", "knn_acc_clean_gallery", "retrieval.mAP", "retrieval.P@10", "retrieval.P@100"),
    "srl": ("retrieval.mAP", "retrieval.P@5", "retrieval.P@10", "retrieval.P@50", "retrieval.P@100",
            "retrieval.P@1000", "retrieval.R@25", "retrieval.R@40", "retrieval.R@50", "retrieval.R@100",
            "retrieval.R@130", "retrieval.R@160", "retrieval.R@180"),
}
DEFAULT_LAYOUT = ("knn_acc", "retrieval.mAP", "retrieval.P@10", "retrieval.P@100", "hamming.mAP@100")
PAPER_TITLES = {"snca_ce": "SNCA-CE (Kang et al., TGRS 2020)", "hr_s2dml": "HR-S2DML (Kang et al., Remote Sensing 2020)",
                "cdne": "CDNE (Kang et al., JSTARS 2020)", "trnsl": "t-RNSL (Kang et al., TGRS 2021)",
                "srl": "SRL (Zhao, Yuan, Zhao, ISPRS IJGI 2020)", "other": "Runs outside the reproduction rows"}
#: short column names
NAMES = {"knn_acc": "kNN acc", "knn_acc_clean_gallery": "kNN acc (clean gallery)"}
GROUP_NAMES = {"retrieval": "", "retrieval_leave_one_out": "LOO ", "hamming": "Hamming "}

DEFINITIONS = {
    "knn_acc": "kNN acc: accuracy of the 10 nearest train images' vote, weighted by 1 / Euclidean distance "
               "(the papers' classifier), for the test images.",
    "knn_acc_clean_gallery": "kNN acc (clean gallery): the same vote with the clean training labels (label-noise "
                             "runs; kNN acc uses the noisy labels a user has).",
    "mAP": "mAP: each test image queries the train split ranked by cosine similarity; AP = (1/R) sum_i P(i) rel(i) "
           "over the whole ranking, R = the query's relevant (same-class) gallery images; mean over queries.",
    "P@k": "P@k: relevant images among the top k, divided by k (as the papers: a class with fewer than k gallery "
           "images caps it at R/k, e.g. the SRL paper's P@100 and P@1000 on UCMD).",
    "R@k": "R@k: relevant images among the top k, divided by R (the recall of the SRL paper, not DML's 'any hit in "
           "the top k'); it cannot exceed k/R, so it depends on the gallery images per class, which the SRL "
           "paper's protocol and dmlrs's 70/10/20 split (gallery = the 70% train split) set differently.",
    "LOO": "LOO: the test split against itself, each query left out of its own ranking.",
    "hamming.mAP@k": "Hamming mAP@k: binary codes (bit = code > 0) ranked by Hamming distance, ties by gallery "
                     "index; sum_{i<=k} P(i) rel(i) / (relevant images within the top k): the hashing papers' "
                     "'MAP with R = k' (CDNE Table I: k = 100).",
    "hamming.mAP": "Hamming mAP: AP over the whole Hamming ranking, divided by R.",
    "hamming.P@H<=r": "Hamming P@H<=r: precision of the gallery codes within Hamming radius r (0 when none).",
}


def column_name(path: str) -> str:
    if path in NAMES:
        return NAMES[path]
    group, _, metric = path.partition(".")
    return GROUP_NAMES.get(group, f"{group} ") + metric


@dataclass
class Cell:
    mean: float | None
    std: float | None
    n: int


def summarise(group: Group, path: str) -> Cell:
    values = [v for v in (metric_value(run.metrics, path) for run in group.runs) if v is not None]
    values = [100.0 * v for v in values]  # test_metrics.json holds fractions
    if not values:
        return Cell(None, None, 0)
    std = statistics.stdev(values) if len(values) >= 2 else None
    return Cell(statistics.fmean(values), std, len(values))


def columns(paper: str, groups: list[Group]) -> list[str]:
    wanted = list(LAYOUT.get(paper, DEFAULT_LAYOUT))
    for group in groups:
        wanted += [k for k in group.paper_results if k not in wanted]
    return [path for path in wanted
            if any(summarise(g, path).n or path in g.paper_results for g in groups)]


def with_paper(path: str, groups: list[Group]) -> bool:
    return any(path in g.paper_results for g in groups)


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def fmt_ours(cell: Cell, pm: str = "±") -> str:
    if cell.mean is None:
        return "-"
    return f"{cell.mean:.2f}" if cell.std is None else f"{cell.mean:.2f} {pm} {cell.std:.2f}"


def difference(cell: Cell, paper: float | None) -> float | None:
    return None if cell.mean is None or paper is None else cell.mean - paper


def fmt_diff(value: float | None) -> str:
    return "-" if value is None else f"{value:+.2f}"


def header(paper: str, groups: list[Group]) -> list[str]:
    names = ["row", "n"]
    for path in columns(paper, groups):
        name = column_name(path)
        names += [f"{name} ours", f"{name} paper", f"{name} diff"] if with_paper(path, groups) else [name]
    return names


def body(paper: str, groups: list[Group], pm: str = "±") -> list[list[str]]:
    lines = []
    paths = columns(paper, groups)
    for group in groups:
        line = [group.label, str(len(group.runs))]
        for path in paths:
            cell = summarise(group, path)
            line.append(fmt_ours(cell, pm))
            if with_paper(path, groups):
                published = group.paper_results.get(path)
                line += [fmt(published), fmt_diff(difference(cell, published))]
        lines.append(line)
    return lines


def _grouped(pairs: list[tuple[str, str]]) -> dict[str, list[str]]:
    """text -> the labels it applies to, in order."""
    out: dict[str, list[str]] = {}
    for label, text in pairs:
        out.setdefault(text, []).append(label)
    return out


def notes(groups: list[Group]) -> list[str]:
    """Settings that differ from the rows', the papers' sources and claims; a note shared by
    every line of the table is written once."""
    def lines_of(labels: list[str]) -> str:
        return "all lines" if len(labels) == len(groups) > 1 else "; ".join(labels)

    changed = [(g.label, ", ".join(f"{k} {format_setting(v[1])} (row: {format_setting(v[0])})"
                                   for k, v in sorted(g.differences.items()))) for g in groups if g.differences]
    sources = [(g.label, g.row.source) for g in groups if g.row is not None and g.row.paper_results]
    claims = [(g.label, g.row.claim) for g in groups if g.row is not None and not g.row.paper_results and g.row.claim]
    out = [f"settings that differ from the row's ({lines_of(labels)}): {text}"
           for text, labels in _grouped(changed).items()]
    out += [f"paper numbers ({lines_of(labels)}): {text}" for text, labels in _grouped(sources).items()]
    out += [f"no published number ({lines_of(labels)}); the paper's claim: {text}"
            for text, labels in _grouped(claims).items()]
    return out


def definitions(paths: list[str]) -> list[str]:
    keys = []
    for path in paths:
        group, _, metric = path.partition(".")
        if group == "hamming":
            metric = "mAP@k" if metric.startswith("mAP@") else "P@H<=r" if metric.startswith("P@H") else metric
            key = f"hamming.{metric}" if f"hamming.{metric}" in DEFINITIONS else None
        elif path in DEFINITIONS:
            key = path
        else:
            key = "P@k" if metric.startswith("P@") else "R@k" if metric.startswith("R@") else metric
        if group == "retrieval_leave_one_out" and "LOO" not in keys:
            keys.append("LOO")
        if key in DEFINITIONS and key not in keys:
            keys.append(key)
    return [DEFINITIONS[k] for k in keys] + [
        "ours: mean over the n runs of the row (seeds), ± the sample standard deviation when n >= 2; "
        "diff = ours - paper, in points; all numbers in percent."]


def by_paper(groups: list[Group]) -> dict[str, list[Group]]:
    tables: dict[str, list[Group]] = {}
    for group in groups:
        tables.setdefault(group.paper, []).append(group)
    return tables


# ------------------------------------------------------------------------------ formats
def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def markdown(groups: list[Group]) -> str:
    parts = []
    for paper, members in by_paper(groups).items():
        names = header(paper, members)
        lines = [f"### {PAPER_TITLES.get(paper, paper)}", "",
                 "| " + " | ".join(map(_md_escape, names)) + " |",
                 "|" + "|".join(["---"] + ["---:"] * (len(names) - 1)) + "|"]
        lines += ["| " + " | ".join(map(_md_escape, line)) + " |" for line in body(paper, members)]
        extra = notes(members)
        if extra:
            lines += [""] + [f"- {_md_escape(n)}" for n in extra]
        lines += ["", "Metrics:", ""] + [f"- {d}" for d in definitions(columns(paper, members))]
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


CSV_FIELDS = ("paper", "row", "label", "runs", "metric", "ours_mean", "ours_std", "paper_value", "difference",
              "settings_differ")


def _num(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def csv_text(groups: list[Group]) -> str:
    """One line per group and metric (tidy), numbers in percent with 4 decimals."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_FIELDS)
    for paper, members in by_paper(groups).items():
        for group in members:
            settings = "; ".join(f"{k}={format_setting(v[1])} (row: {format_setting(v[0])})"
                                 for k, v in sorted(group.differences.items()))
            for path in columns(paper, members):
                cell = summarise(group, path)
                published = group.paper_results.get(path)
                writer.writerow([paper, group.row.name if group.row else "", group.label, len(group.runs), path,
                                 _num(cell.mean), _num(cell.std), _num(published),
                                 _num(difference(cell, published)), settings])
    return buffer.getvalue()


_LATEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
          "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "<=": r"$\leq$", "±": r"$\pm$"}


def latex_escape(text: str) -> str:
    out, i = [], 0
    while i < len(text):
        for token in ("<=", text[i]):
            if text.startswith(token, i) and token in _LATEX:
                out.append(_LATEX[token])
                i += len(token)
                break
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def latex(groups: list[Group]) -> str:
    parts = []
    for paper, members in by_paper(groups).items():
        names = header(paper, members)
        lines = [f"% {PAPER_TITLES.get(paper, paper)}", r"\begin{tabular}{l" + "r" * (len(names) - 1) + "}",
                 r"\toprule", " & ".join(latex_escape(n).replace(" diff", r" $\Delta$") for n in names) + r" \\",
                 r"\midrule"]
        lines += [" & ".join(latex_escape(cell) for cell in line) + r" \\" for line in body(paper, members)]
        lines += [r"\bottomrule", r"\end{tabular}"]
        items = notes(members) + definitions(columns(paper, members))
        lines += [r"\begin{itemize}"] + [r"\item " + latex_escape(item) for item in items] + [r"\end{itemize}"]
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


FORMATS = {"md": markdown, "csv": csv_text, "latex": latex}
