"""Precision-recall curve and per-class AP bars of the test queries against the train gallery.

Precision-recall (definition, pinned in ``tests/visualize/test_curves.py``): each query ranks
the gallery exactly as :mod:`dmlrs.metrics.retrieval` does (descending cosine similarity, ties
by gallery index). With R relevant items, the (m+1)-th relevant item at rank r_m has precision
P_m = (m+1) / r_m and recall (m+1) / R. The query's *interpolated* precision at recall level t is

    p_q(t) = max { P_m : (m+1) / R >= t }

(the usual 11-point / PASCAL interpolation, on ``levels`` evenly spaced levels t = j / (levels - 1)),
and the curve is its mean over the queries that have a relevant item. p_q(0) is the best
precision the query reaches; p_q(1) its precision at full recall. The levels are compared in
integers (``(m+1) (levels-1) >= j R``), so t R never rounds the wrong way.

It is computed from the ranks of the relevant items (:func:`dmlrs.metrics.retrieval.cosine_rank_stats`),
one query chunk at a time: memory linear in the gallery, never a Q x G matrix.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from dmlrs.metrics.retrieval import cosine_rank_stats, check_embeddings, resolve_gallery
from dmlrs.visualize.figures import new_figure, save_figure

DEFAULT_LEVELS = 101  # recall 0, 0.01, ..., 1


def precision_recall_curve(query: torch.Tensor, query_labels: torch.Tensor, gallery: torch.Tensor | None = None,
                           gallery_labels: torch.Tensor | None = None, *, levels: int = DEFAULT_LEVELS,
                           chunk_size: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """``(recall levels (L,), mean interpolated precision (L,))`` as float64 numpy arrays (module
    docstring); ``gallery=None``: leave-one-out over the queries."""
    if levels < 2:
        raise ValueError(f"levels must be >= 2, got {levels}")
    query = check_embeddings(query, "query")
    query_labels, gallery, gallery_labels, loo = resolve_gallery(query, query_labels, gallery, gallery_labels)
    steps = levels - 1
    level_index = torch.arange(levels, device=query.device)  # j: recall level j / steps
    total = torch.zeros(levels, dtype=torch.float64, device=query.device)
    counted = 0
    for _, stats in cosine_rank_stats(query, query_labels, gallery, gallery_labels, loo, chunk_size):
        ranks, num_relevant = stats.ranks, stats.num_relevant  # (C, Rmax) ascending, padding = int64 max
        keep = num_relevant > 0
        if ranks.shape[1] == 0 or not bool(keep.any()):
            continue
        position = torch.arange(1, ranks.shape[1] + 1, device=ranks.device, dtype=torch.float64)
        precision = position / ranks.double()  # (C, Rmax); padding -> ~0
        # best precision from relevant item m on: reverse cumulative maximum along m
        best_after = precision.flip(1).cummax(dim=1).values.flip(1)  # (C, Rmax)
        # smallest m with (m + 1) * steps >= j * R, i.e. m = ceil(j R / steps) - 1 (0 for j = 0)
        first = (level_index.unsqueeze(0) * num_relevant.unsqueeze(1) + steps - 1) // steps - 1  # (C, L)
        first = first.clamp_min(0)
        interpolated = best_after.gather(1, first)  # (C, L)
        total += interpolated[keep].sum(dim=0)
        counted += int(keep.sum())
        del stats
    if counted == 0:
        raise ValueError("no query has a relevant item in the gallery: no precision-recall curve")
    recall = np.arange(levels, dtype=np.float64) / steps
    return recall, (total / counted).cpu().numpy()


def plot_precision_recall(recall: np.ndarray, precision: np.ndarray, path: str | Path, *, title: str,
                          mean_ap: float | None = None) -> Path:
    """Line plot of the curve; the legend gives the area under it (and the report's mAP)."""
    figure = new_figure(6.4, 5.0)
    axes = figure.add_subplot(1, 1, 1)
    area = float(np.trapezoid(precision, recall)) if hasattr(np, "trapezoid") else float(np.trapz(precision, recall))
    label = f"interpolated, area {100 * area:.1f}%"
    if mean_ap is not None:
        label += f" (mAP {100 * mean_ap:.1f}%)"
    axes.plot(recall, precision, color="tab:blue", linewidth=2, label=label)
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1.02)
    axes.set_xlabel("recall")
    axes.set_ylabel("precision (mean over queries)")
    axes.set_title(title)
    axes.grid(True, alpha=0.3)
    axes.legend(loc="lower left")
    return save_figure(figure, path)


def plot_ap_per_class(ap_per_class: dict[str, float], path: str | Path, *, title: str,
                      mean_ap: float | None = None) -> Path:
    """Horizontal bars of the per-class AP, sorted (best at the top), with the mAP as a line."""
    if not ap_per_class:
        raise ValueError("no per-class AP to plot")
    items = sorted(ap_per_class.items(), key=lambda item: (item[1], item[0]))  # worst first: drawn at the bottom
    names = [name for name, _ in items]
    values = [100 * value for _, value in items]
    figure = new_figure(7.0, max(2.6, 0.8 + 0.28 * len(items)))
    axes = figure.add_subplot(1, 1, 1)
    axes.barh(range(len(items)), values, color="tab:blue", height=0.7)
    axes.set_yticks(range(len(items)))
    axes.set_yticklabels(names, fontsize=8 if len(items) > 25 else 9)
    for position, value in enumerate(values):  # the value at the bar's end (inside a long bar)
        inside = value > 90
        axes.text(value - 1 if inside else value + 1, position, f"{value:.1f}", va="center", fontsize=7,
                  ha="right" if inside else "left", color="white" if inside else "black")
    if mean_ap is not None:
        axes.axvline(100 * mean_ap, color="tab:red", linestyle="--", linewidth=1, label=f"mAP {100 * mean_ap:.1f}%")
        axes.legend(loc="lower right")
    axes.set_xlim(0, 100)
    axes.set_ylim(-0.6, len(items) - 0.4)
    axes.set_xlabel("AP (%)")
    axes.set_title(title)
    axes.grid(True, axis="x", alpha=0.3)
    return save_figure(figure, path)
