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

Which k are reported: by default (``ks=None``) the k of ``DEFAULT_KS`` = (1, 5, 10, 50, 100,
1000) that are BELOW the number of items each query ranks (G, or Q - 1 in leave-one-out mode):
a cut-off at or beyond it only restates the class balance (P@1000 and R@1000 on a 420-image
gallery are left out). Cut-offs passed explicitly are all computed, as defined above.

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
``topk`` of R keys, one ``searchsorted`` of G keys into R, one ``bincount``.

Memory (what a call allocates besides its inputs; measured in
``tests/metrics/test_memory_bound.py``)
----------------------------------------------------------------------------------------
Nothing of size Q x G is ever built and no row is fully sorted.  With Q queries, G gallery
items, width D, C = ``chunk_size`` and Rmax the largest number of relevant items of a query
(Rmax ~ G / num_classes for balanced classes, Rmax <= G always), the peak extra memory is

    4 D (Q + G)                    L2-normalised float32 copies (4 D Q in leave-one-out mode)
  + 8 (3 + 2 len(ks)) Q            the per-query values that are averaged at the end
  + C G (17 + 16 Rmax / G)         one chunk at a time: int64 ranking keys (8), relevance
                                   mask (1) and, at the peak, a masked copy of the keys for
                                   ``topk`` (8) + the (C, Rmax) sorted relevant keys, indices,
                                   histogram (8 each)  -- at most C x G x 33 bytes

bytes, plus a fixed few MiB (allocator rounding, kernel workspaces: at most 4 MiB measured).
E.g. 30k x 30k, d = 128, 30 classes, C = 1024: 31 MB + 3.6 MB + 0.54 GB = 548 MiB (measured
peak resident set on a CPU for 1024 queries x 30k gallery: 531 MiB, bound 530 MiB).  For a
fixed chunk size it grows linearly with G; the chunk's float32 scores (4 C G) are turned into
the keys in place (12 C G transiently).  ``device``: computed where the embeddings are moved to
(a GPU when given one): the same bound then applies to that device's memory.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from dmlrs.errors import DmlrsError

DEFAULT_KS = (1, 5, 10, 50, 100, 1000)  # the papers' cut-offs; see default_ks for which are reported
EXCLUDED_KEY = torch.iinfo(torch.int64).min  # key of an item removed from a ranking (the query itself)


# ----------------------------------------------------------------------------- input checks
def check_positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DmlrsError(f"{name} must be a positive integer, got {value!r}")
    return value


def default_ks(num_ranked: int, ks: Sequence[int] = DEFAULT_KS, extra: Sequence[int] = ()) -> tuple[int, ...]:
    """The cut-offs of ``ks`` and ``extra`` below ``num_ranked``, the number of gallery items a query
    ranks (G, or Q - 1 in leave-one-out mode), sorted, without repeats: P@k and R@k for
    k >= num_ranked mean nothing about the ranking.  ``extra``: a paper's own cut-offs (e.g. a
    method's ``report_ks``) reported beside the defaults."""
    return tuple(sorted({k for k in (*ks, *check_ks(extra, "extra")) if k < num_ranked}))


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


def resolve_device(device, tensor: torch.Tensor) -> torch.device:
    """The device a metric computes on: ``device`` when given (``"cuda"``, ``torch.device``...),
    else the device ``tensor`` lives on."""
    if device is None:
        return tensor.device
    try:
        return torch.device(device)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise DmlrsError(f"device {device!r} is not a torch device (use e.g. 'cpu' or 'cuda')") from exc


def resolve_gallery(query, query_labels, gallery, gallery_labels, what: str = "embeddings"):
    """Validate a (query, gallery) pair; return (query_labels, gallery, gallery_labels, leave_one_out).

    ``gallery is None`` means leave-one-out over the query set; then ``gallery_labels`` must be
    None too.  Gallery tensors and labels are moved to the query's device.
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
def descending_score_keys(scores: torch.Tensor, *, consume: bool = False) -> torch.Tensor:
    """Map scores (C, G) to int64 keys (C, G): larger score -> larger key, equal scores -> lower
    gallery index gets the larger key.  Keys are distinct within a row, so sorting them
    descending reproduces the ranking "descending score, ties by index" exactly.

    ``consume=True`` lets the function overwrite a contiguous float32 ``scores`` (the chunk's
    matmul output) instead of copying it: 12 bytes per score at the peak instead of 20.
    """
    num_gallery = scores.shape[1]
    if consume and scores.dtype == torch.float32 and scores.is_contiguous():
        work = scores.add_(0.0)  # + 0.0 turns -0.0 into +0.0
    else:
        work = (scores.float() + 0.0).contiguous()
    bits = work.view(torch.int32)
    flip = bits >> 31
    flip &= 0x7FFFFFFF
    bits ^= flip  # negative floats: flip magnitude bits -> int order == float order
    del flip
    keys = bits.long()
    del work, bits
    reversed_index = torch.arange(num_gallery - 1, -1, -1, device=scores.device)
    return keys.mul_(num_gallery).add_(reversed_index)


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
    Returns ``ranks`` (C, Rmax) int64 contiguous -- ``ranks[c, m]`` is the rank of row c's
    (m+1)-th relevant item, ascending in m; entries m >= num_relevant[c] are padding -- and
    ``num_relevant`` (C,) int64.  Extra memory at the peak: C x G x 8 + C x Rmax x 16 bytes
    (the masked keys fed to ``topk`` and its output); afterwards C x G x 4 + C x Rmax x 16.
    """
    num_rows = keys.shape[0]
    num_relevant = relevant.sum(dim=1)
    r_max = int(num_relevant.max()) if num_rows else 0
    if r_max == 0:
        return torch.zeros(num_rows, 0, dtype=torch.long, device=keys.device), num_relevant
    # (C, Rmax): relevant keys, ascending; rows with fewer relevant items are padded with EXCLUDED_KEY
    masked = torch.where(relevant, keys, EXCLUDED_KEY)
    top = masked.topk(r_max, dim=1)
    del masked
    ascending = top.values.flip(1)
    del top
    # (C, G): slot s = entries of `ascending` <= the item's key; the item is preceded by Rmax - s
    # relevant items (padding and the excluded item land in slots meaning "after all R relevant")
    use_int32 = num_rows * (r_max + 1) < 2**31
    slot = torch.searchsorted(ascending, keys.contiguous(), right=True, out_int32=use_int32)
    del ascending
    # histogram of the slots of each row: one bincount over row-offset slots (no (C, G) int64 copy)
    slot += (torch.arange(num_rows, device=keys.device, dtype=slot.dtype) * (r_max + 1)).unsqueeze(1)
    histogram = torch.bincount(slot.view(-1), minlength=num_rows * (r_max + 1)).view(num_rows, r_max + 1)
    del slot
    # rank of relevant item m (0-based) = number of items preceded by at most m relevant items
    # (itself included) = number of items in slots >= Rmax - m: a cumulative sum of slots Rmax..1
    ranks = histogram[:, 1:].flip(1)  # (C, Rmax), a contiguous copy
    del histogram
    return ranks.cumsum_(dim=1), num_relevant


class RankStats:
    """Per-query quantities derived from the ranks of the relevant items (one chunk).

    ranks: (C, Rmax) from :func:`relevant_ranks`; num_relevant: (C,).
    The (m+1)-th relevant item at rank r_m contributes P(r_m) = (m+1) / r_m to the AP sums.
    """

    def __init__(self, ranks: torch.Tensor, num_relevant: torch.Tensor):
        """Takes ownership of ``ranks`` (its padding is overwritten in place).  Holds two
        (C, Rmax) tensors: 16 bytes per entry."""
        self.num_relevant = num_relevant
        num_rows, r_max = ranks.shape
        position = torch.arange(1, r_max + 1, device=ranks.device)
        invalid = position > num_relevant.unsqueeze(1)  # (C, Rmax) True on padding
        # padding pushed to the end so every row is sorted: counting ranks <= k is a searchsorted
        self.ranks = ranks.contiguous().masked_fill_(invalid, torch.iinfo(torch.int64).max)
        # (C, Rmax + 1): column 0 is 0, column m + 1 = sum of P(r_j) over the first m + 1 relevant items
        self._precision_cumsum = torch.zeros(num_rows, r_max + 1, dtype=torch.float64, device=ranks.device)
        precision = self._precision_cumsum[:, 1:]
        torch.div(position.double(), self.ranks, out=precision)  # P(r_m) = (m + 1) / r_m
        precision.masked_fill_(invalid, 0.0)
        del invalid
        precision.cumsum_(dim=1)
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
    """Yield (first_row, RankStats) for consecutive query chunks of at most ``chunk_size`` rows.

    Nothing of a chunk but its RankStats outlives the chunk; a caller that drops each RankStats
    before asking for the next one holds one chunk's memory at a time (see the module docstring).
    """
    query_unit = F.normalize(query.float(), dim=1)
    gallery_unit = query_unit if leave_one_out else F.normalize(gallery.float(), dim=1)
    for start in range(0, query.shape[0], chunk_size):
        stop = min(start + chunk_size, query.shape[0])
        keys = descending_score_keys(query_unit[start:stop] @ gallery_unit.T, consume=True)  # (C, G) int64
        relevant = query_labels[start:stop].unsqueeze(1) == gallery_labels.unsqueeze(0)  # (C, G)
        if leave_one_out:
            exclude_self(keys, start, relevant)
        ranks, num_relevant = relevant_ranks(keys, relevant)
        del keys, relevant
        stats = RankStats(ranks, num_relevant)
        del ranks
        yield start, stats
        del stats


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
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """AP of every query over the full cosine ranking: float64 (Q,) on the computing device, NaN
    where the query has no relevant item.  Same definitions, calling convention, ``device`` and
    memory bound as :func:`retrieval_metrics`."""
    query, gallery = _to_device(query, gallery, device)
    query = check_embeddings(query, "query")
    query_labels, gallery, gallery_labels, loo = resolve_gallery(query, query_labels, gallery, gallery_labels)
    check_embeddings(gallery, "gallery")
    chunk_size = check_positive_int(chunk_size, "chunk_size")
    parts = []
    for _, stats in cosine_rank_stats(query, query_labels, gallery, gallery_labels, loo, chunk_size):
        ap = stats.average_precision()
        parts.append(torch.where(stats.num_relevant > 0, ap, float("nan")))
        del stats, ap  # one chunk alive at a time
    return torch.cat(parts)


def _to_device(query, gallery, device):
    """Move query (and gallery) to ``device`` (None: leave them where they are)."""
    if device is None or not isinstance(query, torch.Tensor):
        return query, gallery
    device = resolve_device(device, query)
    return query.to(device), (gallery.to(device) if isinstance(gallery, torch.Tensor) else gallery)


def retrieval_metrics(
    query: torch.Tensor,
    query_labels: torch.Tensor,
    gallery: torch.Tensor | None = None,
    gallery_labels: torch.Tensor | None = None,
    ks: Sequence[int] | None = None,
    chunk_size: int = 1024,
    device: torch.device | str | None = None,
) -> dict:
    """Retrieval report for float embeddings ranked by cosine similarity.

    query: (Q, D) float, query_labels: (Q,) int; gallery: (G, D) float and gallery_labels: (G,)
    int, or both None for leave-one-out over the query set.  ``ks``: cut-offs for P@k / R@k
    (None: those of ``DEFAULT_KS`` below the number of ranked items, :func:`default_ks`).
    ``chunk_size``: queries processed at once; results do not depend on it.  ``device``: where
    to compute (e.g. ``"cuda"``; inputs are moved there), default the query's device.

    Peak extra memory (module docstring): at most ``4 D (Q + G) + 8 (3 + 2 len(ks)) Q +
    chunk_size x G x (17 + 16 Rmax / G)`` bytes (<= ``... + chunk_size x G x 33``) + a few MiB,
    Rmax the most relevant items of one query: linear in G for a fixed chunk size, never Q x G.

    Returns plain Python values: ``mAP``, ``mAP@R``, ``P@k`` and ``R@k`` for every k (fractions
    in [0, 1]), ``AP_per_class`` ({label: mean AP}), ``num_queries`` (queries averaged over) and
    ``num_queries_without_relevant`` (left out of every mean).  See the module docstring for
    the exact definitions.
    """
    query, gallery = _to_device(query, gallery, device)
    query = check_embeddings(query, "query")
    query_labels, gallery, gallery_labels, loo = resolve_gallery(query, query_labels, gallery, gallery_labels)
    check_embeddings(gallery, "gallery")
    ks = default_ks(gallery.shape[0] - int(loo)) if ks is None else check_ks(ks)
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
        del stats  # one chunk alive at a time
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
