"""Ranking metrics for content-based image retrieval with float embeddings.

Definitions (pinned here and in ``tests/metrics/test_retrieval.py``)
--------------------------------------------------------------------
For one query q the gallery is ranked by DESCENDING cosine similarity
``s(q, g) = <q/|q|, g/|g|>`` (inputs may be unnormalised; similarities are computed in
float32).  Ties are broken by gallery index: of two gallery items with the same score the
one with the lower index is ranked first.  In leave-one-out mode (``gallery is None``) the
gallery is the query set itself and query i is removed from its own ranking BY INDEX (not by
value: an exact duplicate of the query at another index stays in the ranking).

Let R be the number of gallery items relevant to q (same label), rel(i) in {0, 1} the
relevance of the item at rank i (1-based) and P(i) = (1/i) * sum_{j<=i} rel(j).

* AP(q)     = (1/R) * sum_i P(i) rel(i)            over the FULL ranking (all R relevant items)
* AP@R(q)   = (1/R) * sum_{i<=R} P(i) rel(i)       Musgrave et al., "A Metric Learning
                                                    Reality Check", ECCV 2020 ("MAP@R")
* P@k(q)    = (1/k) * sum_{i<=k} rel(i)            always divides by k, also when the
                                                    gallery holds fewer than k items (then
                                                    the top k is the whole gallery)
* R@k(q)    = (1/R) * sum_{i<=k} rel(i)            fraction of the relevant items in the
                                                    top k (the "recall" of retrieval papers,
                                                    NOT the "Recall@K = any hit" of DML papers)

``mAP``, ``mAP@R``, ``P@k``, ``R@k`` are means over the queries that have at least one
relevant item.  Queries without any (a class with a single image in leave-one-out mode, or
a label missing from the gallery) are left out of every mean and counted in
``num_queries_without_relevant``; ``AP_per_class`` maps each label to the mean AP of its
queries (labels whose queries all lack relevant items are absent).

How it is computed (no full sort)
---------------------------------
Scores are mapped to int64 keys that are all distinct within a row and order exactly like
the ranking (float bits made order-preserving, times G, plus the reversed gallery index).
Only the R relevant keys are sorted (``topk``); every gallery item is then located among
them with ``searchsorted``, which tells how many relevant items precede it, and a
histogram + cumulative sum of those counts gives the 1-based rank r_m of each relevant item
(the number of items preceded by at most m relevant ones).  All the metrics above are
functions of those ranks: the (m+1)-th relevant item contributes P(r_m) = (m+1) / r_m, and
``sum_{i<=k} rel(i)`` is the number of r_m <= k.  Work per query chunk: one matmul, one
``topk`` of R keys, one ``searchsorted`` of G keys into R; memory O(chunk_size * G).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from dmlrs.errors import DmlrsError

DEFAULT_KS = (1, 5, 10, 50, 100, 1000)
EXCLUDED_KEY = torch.iinfo(torch.int64).min  # key of an item removed from a ranking (the query itself)


# ----------------------------------------------------------------------------- input checks
def check_positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DmlrsError(f"{name} must be a positive integer, got {value!r}")
    return value


def check_ks(ks: Sequence[int], name: str = "ks") -> tuple[int, ...]:
    ks = tuple(ks)
    for k in ks:
        check_positive_int(k, f"every value of {name}")
    return ks


def check_labels(labels: torch.Tensor, num_rows: int, name: str) -> torch.Tensor:
    if not isinstance(labels, torch.Tensor) or labels.dim() != 1:
        raise DmlrsError(f"{name} must be a 1-D tensor of integer labels")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise DmlrsError(f"{name} must hold integer class labels, got dtype {labels.dtype}")
    if labels.numel() != num_rows:
        raise DmlrsError(f"{name} has {labels.numel()} labels but there are {num_rows} rows to label")
    return labels.long()


def check_embeddings(x: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.shape[0] == 0:
        raise DmlrsError(f"{name} must be a non-empty 2-D tensor (num_items x dim)")
    if not x.dtype.is_floating_point:
        raise DmlrsError(f"{name} must be a float tensor of embeddings, got dtype {x.dtype}")
    if not torch.isfinite(x).all():
        raise DmlrsError(f"{name} contains NaN or infinite values; check the model output")
    return x


def resolve_gallery(query, query_labels, gallery, gallery_labels, what: str = "embeddings"):
    """Validate a (query, gallery) pair; return (query_labels, gallery, gallery_labels, leave_one_out).

    ``gallery is None`` means leave-one-out over the query set; then ``gallery_labels`` must be
    None too.  Gallery tensors are moved to the query's device.
    """
    query_labels = check_labels(query_labels, query.shape[0], "query_labels").to(query.device)
    if gallery is None:
        if gallery_labels is not None:
            raise DmlrsError("gallery_labels given without gallery: pass both, or neither for leave-one-out")
        return query_labels, query, query_labels, True
    if gallery_labels is None:
        raise DmlrsError("gallery given without gallery_labels: pass the gallery's labels too")
    if not isinstance(gallery, torch.Tensor) or gallery.dim() != 2 or gallery.shape[1] != query.shape[1]:
        raise DmlrsError(f"gallery {what} must be 2-D with the same width as the query's ({query.shape[1]})")
    gallery_labels = check_labels(gallery_labels, gallery.shape[0], "gallery_labels")
    return query_labels, gallery.to(query.device), gallery_labels.to(query.device), False


# ----------------------------------------------------------------------------- ranking core
def descending_score_keys(scores: torch.Tensor) -> torch.Tensor:
    """Map scores (C, G) to int64 keys (C, G): larger score -> larger key, equal scores -> lower
    gallery index gets the larger key.  Keys are distinct within a row, so sorting them
    descending reproduces the ranking "descending score, ties by index" exactly."""
    num_gallery = scores.shape[1]
    bits = (scores.float() + 0.0).contiguous().view(torch.int32)  # + 0.0 turns -0.0 into +0.0
    ordered = bits ^ ((bits >> 31) & 0x7FFFFFFF)  # negative floats: flip magnitude bits -> int order == float order
    reversed_index = torch.arange(num_gallery - 1, -1, -1, device=scores.device)
    return ordered.long().mul_(num_gallery).add_(reversed_index)


def exclude_self(keys: torch.Tensor, first_row: int, *masks: torch.Tensor) -> None:
    """Leave-one-out, in place: query ``first_row + c`` (row c of the chunk) is removed from its
    own ranking by index -- it gets the excluded key and is False in every (C, G) mask given
    (relevance, within-radius, ...)."""
    rows = torch.arange(keys.shape[0], device=keys.device)
    keys[rows, rows + first_row] = EXCLUDED_KEY
    for mask in masks:
        mask[rows, rows + first_row] = False


def relevant_ranks(keys: torch.Tensor, relevant: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """1-based ranks of the relevant items of each row, without sorting the whole row.

    keys: (C, G) int64, distinct within a row, ranking = descending key; items with
    ``EXCLUDED_KEY`` take no part.  relevant: (C, G) bool.
    Returns ``ranks`` (C, Rmax) int64 -- ``ranks[c, m]`` is the rank of row c's (m+1)-th
    relevant item, ascending in m; entries m >= num_relevant[c] are padding -- and
    ``num_relevant`` (C,) int64.
    """
    num_rows = keys.shape[0]
    num_relevant = relevant.sum(dim=1)
    r_max = int(num_relevant.max()) if num_rows else 0
    if r_max == 0:
        return torch.zeros(num_rows, 0, dtype=torch.long, device=keys.device), num_relevant
    # (C, Rmax): relevant keys, descending; rows with fewer relevant items are padded with EXCLUDED_KEY
    relevant_keys = keys.masked_fill(~relevant, EXCLUDED_KEY).topk(r_max, dim=1).values
    ascending = relevant_keys.flip(1).contiguous()
    # (C, G): slot s = entries of `ascending` <= the item's key; the item is preceded by Rmax - s
    # relevant items (padding and the excluded item land in slots meaning "after all R relevant")
    slot = torch.searchsorted(ascending, keys.contiguous(), right=True)
    histogram = torch.zeros(num_rows, r_max + 1, dtype=torch.long, device=keys.device)
    histogram.scatter_add_(1, slot, torch.ones((), dtype=torch.long, device=keys.device).expand_as(slot))
    # rank of relevant item m (0-based) = number of items preceded by at most m relevant items
    # (itself included) = number of items in slots >= Rmax - m
    ranks = histogram.flip(1).cumsum(dim=1)[:, :r_max]  # (C, Rmax)
    return ranks, num_relevant


class RankStats:
    """Per-query quantities derived from the ranks of the relevant items (one chunk).

    ranks: (C, Rmax) from :func:`relevant_ranks`; num_relevant: (C,).
    The (m+1)-th relevant item at rank r_m contributes P(r_m) = (m+1) / r_m to the AP sums.
    """

    def __init__(self, ranks: torch.Tensor, num_relevant: torch.Tensor):
        self.num_relevant = num_relevant
        position = torch.arange(1, ranks.shape[1] + 1, device=ranks.device)
        valid = position <= num_relevant.unsqueeze(1)  # (C, Rmax) True on real relevant items
        # padding pushed to the end so every row is sorted: counting ranks <= k is a searchsorted
        self.ranks = ranks.masked_fill(~valid, torch.iinfo(torch.int64).max)
        precision = torch.where(valid, position.double() / ranks.clamp_min(1).double(), 0.0)
        zero = torch.zeros(ranks.shape[0], 1, dtype=torch.float64, device=ranks.device)
        self._precision_cumsum = torch.cat([zero, precision.cumsum(dim=1)], dim=1)  # (C, Rmax + 1)
        self._denominator = num_relevant.clamp_min(1).double()

    def hits_within(self, cutoff: torch.Tensor | int) -> torch.Tensor:
        """(C,) number of relevant items ranked within ``cutoff`` (an int or a (C,) tensor)."""
        cutoff = torch.as_tensor(cutoff, dtype=torch.long, device=self.ranks.device)
        cutoff = cutoff.expand(self.ranks.shape[0]).reshape(-1, 1).contiguous()
        return torch.searchsorted(self.ranks, cutoff, right=True).squeeze(1)

    def precision_sum_within(self, cutoff: torch.Tensor | int | None = None) -> torch.Tensor:
        """(C,) float64: sum of P(i) rel(i) over ranks i <= cutoff (None: the full ranking)."""
        if cutoff is None:
            return self._precision_cumsum[:, -1]
        return self._precision_cumsum.gather(1, self.hits_within(cutoff).unsqueeze(1)).squeeze(1)

    def average_precision(self) -> torch.Tensor:
        return self.precision_sum_within(None) / self._denominator

    def average_precision_at_r(self) -> torch.Tensor:
        return self.precision_sum_within(self.num_relevant) / self._denominator

    def precision_at(self, k: int) -> torch.Tensor:
        return self.hits_within(k).double() / k

    def recall_at(self, k: int) -> torch.Tensor:
        return self.hits_within(k).double() / self._denominator


def cosine_rank_stats(query, query_labels, gallery, gallery_labels, leave_one_out, chunk_size):
    """Yield (first_row, RankStats) for consecutive query chunks of at most ``chunk_size`` rows."""
    query_unit = F.normalize(query.float(), dim=1)
    gallery_unit = query_unit if leave_one_out else F.normalize(gallery.float(), dim=1)
    for start in range(0, query.shape[0], chunk_size):
        stop = min(start + chunk_size, query.shape[0])
        scores = query_unit[start:stop] @ gallery_unit.T  # (C, G)
        keys = descending_score_keys(scores)
        del scores
        relevant = query_labels[start:stop].unsqueeze(1) == gallery_labels.unsqueeze(0)  # (C, G)
        if leave_one_out:
            exclude_self(keys, start, relevant)
        yield start, RankStats(*relevant_ranks(keys, relevant))


def mean_over(values: torch.Tensor, keep: torch.Tensor) -> float:
    return float(values[keep].mean()) if bool(keep.any()) else 0.0


def require_some_relevant(num_relevant: torch.Tensor) -> torch.Tensor:
    has_relevant = num_relevant > 0
    if not bool(has_relevant.any()):
        raise DmlrsError(
            "no query has a relevant item (same label) in the gallery, so retrieval metrics are "
            "undefined; check that query and gallery labels use the same class indices"
        )
    return has_relevant


# ----------------------------------------------------------------------------- public API
def per_query_average_precision(
    query: torch.Tensor,
    query_labels: torch.Tensor,
    gallery: torch.Tensor | None = None,
    gallery_labels: torch.Tensor | None = None,
    chunk_size: int = 1024,
) -> torch.Tensor:
    """AP of every query over the full cosine ranking: float64 (Q,), NaN where the query has no
    relevant item.  Same definitions and calling convention as :func:`retrieval_metrics`."""
    query = check_embeddings(query, "query")
    query_labels, gallery, gallery_labels, loo = resolve_gallery(query, query_labels, gallery, gallery_labels)
    check_embeddings(gallery, "gallery")
    chunk_size = check_positive_int(chunk_size, "chunk_size")
    parts = []
    for _, stats in cosine_rank_stats(query, query_labels, gallery, gallery_labels, loo, chunk_size):
        ap = stats.average_precision()
        parts.append(torch.where(stats.num_relevant > 0, ap, float("nan")))
    return torch.cat(parts)


def retrieval_metrics(
    query: torch.Tensor,
    query_labels: torch.Tensor,
    gallery: torch.Tensor | None = None,
    gallery_labels: torch.Tensor | None = None,
    ks: Sequence[int] = DEFAULT_KS,
    chunk_size: int = 1024,
) -> dict:
    """Retrieval report for float embeddings ranked by cosine similarity.

    query: (Q, D) float, query_labels: (Q,) int; gallery: (G, D) float and gallery_labels: (G,)
    int, or both None for leave-one-out over the query set.  ``ks``: cut-offs for P@k / R@k.
    ``chunk_size``: queries processed at once (memory ~ chunk_size x G x 32 bytes); results do
    not depend on it.

    Returns plain Python values: ``mAP``, ``mAP@R``, ``P@k`` and ``R@k`` for every k (fractions
    in [0, 1]), ``AP_per_class`` ({label: mean AP}), ``num_queries`` (queries averaged over) and
    ``num_queries_without_relevant`` (left out of every mean).  See the module docstring for
    the exact definitions.
    """
    query = check_embeddings(query, "query")
    query_labels, gallery, gallery_labels, loo = resolve_gallery(query, query_labels, gallery, gallery_labels)
    check_embeddings(gallery, "gallery")
    ks = check_ks(ks)
    chunk_size = check_positive_int(chunk_size, "chunk_size")

    columns: dict[str, list[torch.Tensor]] = {"AP": [], "AP@R": [], "num_relevant": []}
    columns.update({f"P@{k}": [] for k in ks})
    columns.update({f"R@{k}": [] for k in ks})
    for _, stats in cosine_rank_stats(query, query_labels, gallery, gallery_labels, loo, chunk_size):
        columns["AP"].append(stats.average_precision())
        columns["AP@R"].append(stats.average_precision_at_r())
        columns["num_relevant"].append(stats.num_relevant)
        for k in ks:
            columns[f"P@{k}"].append(stats.precision_at(k))
            columns[f"R@{k}"].append(stats.recall_at(k))
    per_query = {name: torch.cat(parts) for name, parts in columns.items()}
    keep = require_some_relevant(per_query["num_relevant"])

    result: dict = {"mAP": mean_over(per_query["AP"], keep), "mAP@R": mean_over(per_query["AP@R"], keep)}
    for prefix in ("P", "R"):
        for k in ks:
            result[f"{prefix}@{k}"] = mean_over(per_query[f"{prefix}@{k}"], keep)
    result["AP_per_class"] = {
        int(label): mean_over(per_query["AP"], keep & (query_labels == label))
        for label in torch.unique(query_labels[keep]).tolist()
    }
    result["num_queries"] = int(keep.sum())
    result["num_queries_without_relevant"] = int((~keep).sum())
    return result
