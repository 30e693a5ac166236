"""2-D map of embeddings (scikit-learn t-SNE), coloured by class.

Bounded on big data: at most ``max_points`` embeddings (default 2000) are mapped, a seeded
random subset (:func:`subsample`), and the figure's title says so. t-SNE starts from the PCA
projection (stable between runs) with the perplexity clipped to ``(n - 1) / 3`` for small sets
(scikit-learn needs perplexity < n). Embeddings are L2-normalised first: retrieval ranks by
cosine, and on the unit sphere Euclidean distance is a function of the cosine.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from dmlrs.visualize.figures import class_colours, new_figure, save_figure

DEFAULT_MAX_POINTS = 2000
DEFAULT_PERPLEXITY = 30.0
MIN_POINTS = 4  # fewer points make no map


def subsample(num_items: int, max_points: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of at most ``max_points`` of ``num_items`` items, drawn without replacement
    by ``numpy.random.default_rng(seed)`` (all items, in order, when there are few enough)."""
    if max_points < 1:
        raise ValueError(f"max_points must be >= 1, got {max_points}")
    if num_items <= max_points:
        return np.arange(num_items)
    return np.sort(np.random.default_rng(seed).choice(num_items, size=max_points, replace=False))


def clipped_perplexity(num_points: int, perplexity: float = DEFAULT_PERPLEXITY) -> float:
    """``perplexity``, at most ``(num_points - 1) / 3`` (and at least 1)."""
    return float(max(1.0, min(perplexity, (num_points - 1) / 3.0)))


def tsne_map(embeddings, *, seed: int = 0, perplexity: float = DEFAULT_PERPLEXITY) -> np.ndarray:
    """(N, D) embeddings -> (N, 2) float64 t-SNE coordinates (PCA init, clipped perplexity)."""
    from sklearn.manifold import TSNE

    x = np.asarray(embeddings, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < MIN_POINTS:
        raise ValueError(f"a t-SNE map needs at least {MIN_POINTS} embeddings, got shape {x.shape}")
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    tsne = TSNE(n_components=2, init="pca", perplexity=clipped_perplexity(x.shape[0], perplexity),
                random_state=seed, learning_rate="auto")
    return tsne.fit_transform(x)


def plot_embedding_map(coords: np.ndarray, labels: Sequence[int], class_names: Sequence[str], path: str | Path,
                       *, title: str) -> Path:
    """Scatter of ``coords`` (N, 2), one colour (and marker cycle) per class, legend with names."""
    labels = np.asarray(labels)
    present = sorted(set(labels.tolist()))
    colours = class_colours(len(class_names))
    markers = "os^Dv<>p"
    columns = 1 if len(present) <= 15 else (2 if len(present) <= 32 else 3)
    figure = new_figure(7.0 + 1.8 * columns, 6.5)
    axes = figure.add_subplot(1, 1, 1)
    size = 18 if len(labels) <= 500 else 8
    for label in present:
        chosen = labels == label
        axes.scatter(coords[chosen, 0], coords[chosen, 1], s=size, color=colours[label],
                     marker=markers[(label // 20) % len(markers)] if len(class_names) > 20 else "o",
                     label=str(class_names[label]), alpha=0.85, linewidths=0)
    axes.set_xticks([])
    axes.set_yticks([])
    axes.set_title(title)
    axes.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, ncol=columns, markerscale=1.5,
                frameon=False)
    return save_figure(figure, path)


def embedding_map(embeddings, labels, class_names: Sequence[str], path: str | Path, *, title: str,
                  max_points: int = DEFAULT_MAX_POINTS, seed: int = 0) -> tuple[Path, np.ndarray]:
    """Subsample, map and plot; returns ``(path, indices of the mapped items)``. The title gets
    ``n of N points`` appended when a subset was mapped."""
    embeddings = np.asarray(embeddings, dtype=np.float64)
    labels = np.asarray(labels)
    chosen = subsample(len(embeddings), max_points, seed)
    if len(chosen) < len(embeddings):
        title = f"{title}\n(random {len(chosen):,} of {len(embeddings):,} points, seed {seed})"
    coords = tsne_map(embeddings[chosen], seed=seed)
    return plot_embedding_map(coords, labels[chosen], class_names, path, title=title), chosen
