"""t-RNSL pruning rounds from ``metrics.jsonl``: kept fraction and clean fraction of the kept samples.

Each line of ``metrics.jsonl`` of a t-RNSL run under label noise holds ``kept_fraction`` (training
samples with weight 1) and ``kept_clean_fraction`` (of those, the ones whose training label is the
true one), read after the epoch; the weights change only at a refresh, before the refresh epoch
trains, so the line of a refresh epoch describes that pruning round. Before the first refresh
every sample is kept and ``kept_clean_fraction`` is the clean fraction of the whole training set,
drawn as the reference line.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Sequence

from dmlrs.visualize.figures import new_figure, save_figure

KEPT, CLEAN = "kept_fraction", "kept_clean_fraction"


def read_metrics(path: str | Path) -> list[dict]:
    """The JSON lines of ``metrics.jsonl`` (a torn last line is skipped)."""
    rows = []
    for text in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(text)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def pruning_rounds(rows: Iterable[dict], refresh_epochs: Iterable[int]) -> list[dict]:
    """The rows of the refresh epochs that hold both fractions, in epoch order."""
    refresh = set(int(epoch) for epoch in refresh_epochs)
    return sorted((row for row in rows if row.get("epoch") in refresh and KEPT in row and CLEAN in row),
                  key=lambda row: row["epoch"])


def plot_pruning(rows: Sequence[dict], refresh_epochs: Iterable[int], path: str | Path, *,
                 title: str = "t-RNSL pruning rounds") -> Path:
    """Both fractions at each refresh epoch (x), in percent, with the clean fraction of the whole
    training set (the first epoch's, before any pruning) as a dashed line."""
    rounds = pruning_rounds(rows, refresh_epochs)
    if not rounds:
        raise ValueError("no pruning round with kept_fraction and kept_clean_fraction in metrics.jsonl")
    epochs = [row["epoch"] for row in rounds]
    figure = new_figure(6.4, 4.6)
    axes = figure.add_subplot(1, 1, 1)
    axes.plot(epochs, [100 * row[KEPT] for row in rounds], "o-", color="tab:blue",
              label="kept (of all training samples)")
    axes.plot(epochs, [100 * row[CLEAN] for row in rounds], "s-", color="tab:green",
              label="clean labels among the kept")
    before = [row for row in rows if row.get("epoch") not in set(epochs) and CLEAN in row
              and row.get("epoch", 0) < epochs[0]]
    if before:
        overall = 100 * before[0][CLEAN]
        axes.axhline(overall, color="tab:gray", linestyle="--", linewidth=1,
                     label=f"clean labels among all ({overall:.1f}%)")
    axes.set_xlabel("epoch of the refresh")
    axes.set_ylabel("%")
    axes.set_ylim(0, 102)
    if len(epochs) <= 20:
        axes.set_xticks(epochs)
    axes.set_title(title)
    axes.grid(True, alpha=0.3)
    axes.legend(loc="best", fontsize=8)
    return save_figure(figure, path)
