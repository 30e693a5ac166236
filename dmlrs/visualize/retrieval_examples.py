"""Retrieval examples: a few test queries, each with its top-k gallery items, as a gallery PNG.

Queries are spread over the classes (:func:`pick_queries`); each ranks the gallery exactly as
the metrics do (descending cosine similarity, ties by gallery index, see
:mod:`dmlrs.metrics.retrieval`). A result is correct (green border) when its label equals the
query's. The picture is drawn by :func:`dmlrs.visualize.gallery.save_gallery`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from dmlrs.metrics.retrieval import descending_score_keys

DEFAULT_QUERIES = 6
DEFAULT_TOPK = 8


def pick_queries(labels: Sequence[int], num_queries: int = DEFAULT_QUERIES, seed: int = 0) -> list[int]:
    """Indices of up to ``num_queries`` distinct items spread over the classes: classes evenly
    spaced over the sorted labels present (cycling through them when there are fewer classes than
    queries), one random item of each (``numpy.random.default_rng(seed)``)."""
    labels = np.asarray(labels)
    classes = np.unique(labels)
    if len(classes) == 0 or num_queries < 1:
        return []
    if len(classes) >= num_queries:
        picked = classes[np.linspace(0, len(classes) - 1, num_queries).round().astype(int)]
    else:
        picked = np.resize(classes, min(num_queries, len(labels)))
    rng = np.random.default_rng(seed)
    used: set[int] = set()
    queries = []
    for label in picked:
        members = [int(i) for i in np.flatnonzero(labels == label) if int(i) not in used]
        if members:
            choice = members[int(rng.integers(len(members)))]
            used.add(choice)
            queries.append(choice)
    return queries


def top_k(query: torch.Tensor, gallery: torch.Tensor, k: int) -> torch.Tensor:
    """(n, k) gallery indices of each query's k best items (cosine, ties by gallery index)."""
    k = min(int(k), gallery.shape[0])
    scores = F.normalize(query.float(), dim=1) @ F.normalize(gallery.float(), dim=1).T  # (n, G)
    return descending_score_keys(scores).topk(k, dim=1).indices


def retrieval_gallery(query: torch.Tensor, query_labels: torch.Tensor, gallery: torch.Tensor,
                      gallery_labels: torch.Tensor, *, class_names: Sequence[str],
                      query_image: Callable[[int], np.ndarray], gallery_image: Callable[[int], np.ndarray],
                      path: str | Path, num_queries: int = DEFAULT_QUERIES, k: int = DEFAULT_TOPK, seed: int = 0,
                      thumb_size: int = 112, title: str | None = None) -> Path:
    """Write the gallery PNG: one row per picked query (``query_image(i)``/``gallery_image(j)``
    give uint8 (H, W, 3) images of query i / gallery item j); returns its path."""
    from dmlrs.visualize.gallery import GalleryItem, GalleryRow, save_gallery

    query_labels, gallery_labels = query_labels.cpu(), gallery_labels.cpu()
    chosen = pick_queries(query_labels.numpy(), num_queries, seed)
    if not chosen:
        raise ValueError("no query to show")
    ranked = top_k(query[chosen].cpu(), gallery.cpu(), k)
    rows = []
    for query_index, results in zip(chosen, ranked.tolist()):
        label = int(query_labels[query_index])
        items = [GalleryItem(gallery_image(j), caption=f"#{rank} {class_names[int(gallery_labels[j])]}",
                             correct=int(gallery_labels[j]) == label) for rank, j in enumerate(results, start=1)]
        rows.append(GalleryRow(GalleryItem(query_image(query_index), caption=str(class_names[label])), items))
    if title is None:
        title = f"test queries and their top {ranked.shape[1]} in the train gallery (green: same class)"
    return save_gallery(rows, path, thumb_size=thumb_size, title=title)
