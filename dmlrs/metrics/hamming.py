"""Binary hash codes: binarisation, bit packing, Hamming distance and hashing retrieval metrics.

Codes
-----
Bit b of a code is 1 where the real-valued code is > 0 and 0 where it is <= 0: an exact zero
(+0.0 or -0.0) gets the same bit as a negative value.  This is the rule of the hashing papers'
evaluation code (CDNE, jiankang1991/CDNE utils/metrics.py: ``np.sign(codes) == 1``, so
sign(0) = 0 -> bit 0).  ``binarize(x)`` gives the matching +-1 codes: +1 where x > 0, else -1
(so ``binarize`` of an exact 0 is -1, not +1).  ``pack_codes`` stores the bits in int64
words, LSB first: bit b lives in word b // 64 at position b % 64 (unused high bits of the last
word are 0), so a B-bit code costs ceil(B / 64) words instead of B bytes.  Hamming distance = popcount(q XOR g) summed
over words; popcount uses the SWAR bit trick (valid on signed int64 because every mask
clears the sign bit).

Metrics (same calling convention as :func:`dmlrs.metrics.retrieval.retrieval_metrics`)
-------------------------------------------------------------------------------------
The gallery is ranked by ASCENDING Hamming distance, ties (very common with short codes)
broken by gallery index (lower first); leave-one-out removes query i from its own ranking
by index.  With R relevant items, rel(i) and P(i) = (1/i) sum_{j<=i} rel(j) at rank i:

* ``mAP``      (1/R) sum_i P(i) rel(i) over the full ranking.
* ``mAP@k``    the hashing papers' "MAP@k" (e.g. "MAP with R = 100" in DPSH / HashNet code):
               sum_{i<=k} P(i) rel(i) / N, where N is chosen by ``map_at_normalizer``:
               "retrieved" (default, as in the HashNet/DPSH evaluation code): N = number of
               relevant items within the top k; "capped": N = min(k, R) (a perfect ranking
               scores 1); "all": N = R.  A query with N = 0 scores 0.
* ``P@k``      (1/k) sum_{i<=k} rel(i) (divides by k also when the gallery is smaller).
* ``P@H<=r``   precision of the set {g : d(q, g) <= radius} (the "hash lookup" precision,
               r = 2 by default); 0 for a query with nothing within the radius, as in the
               literature (Xia et al. 2014, Cao et al. HashNet 2017).

All are means over the queries that have at least one relevant item; the others are counted
in ``num_queries_without_relevant`` (see retrieval.py for the same rule). By default (``ks=None``)
``P@k`` is reported for the k of ``DEFAULT_KS`` below the number of ranked gallery items (G, or
Q - 1 in leave-one-out mode), as in retrieval.py; explicitly passed ``ks`` are all computed.

Memory
------
:func:`hamming_metrics` never builds a Q x G matrix: per chunk of C = ``chunk_size`` queries it
holds the (C, G) int64 distances, turned into ranking keys in place, the relevance and radius
masks, and the same rank computation as retrieval.py.  Peak extra memory, B bits, W = ceil(B / 64):

    16 x 64 W (Q + G)             packing the codes (transient; 8 W (Q + G) kept)
  + 8 (3 + len(ks) + len(map_at)) Q   the per-query values
  + C G max(16 + 8 [W > 1], 17 + 16 Rmax / G)   one chunk (<= C x G x 33 bytes)

bytes (plus a fixed few MiB), Rmax the most relevant items of one query: linear in G for a fixed
chunk size.
:func:`hamming_distance` is the exception on purpose: it RETURNS the full (Q, G) int32 matrix
(4 Q G bytes); the metrics do not use it.  ``device`` (all entry points): where to compute,
e.g. ``"cuda"``; default the query codes' device.

CDNE's checkpoint-selection score (``hamming_precision_at``)
-----------------------------------------------------------
The original CDNE code keeps the checkpoint with the best Hamming P@20 of the validation split
against the (un-augmented) train split.  :func:`hamming_precision_at` is that score: ``P@k`` as
above, but averaged over ALL queries (the original's ``np.mean``), so a query whose class is not
in the gallery counts as 0 instead of being left out.  The original left the order among equal
Hamming distances to faiss (``IndexBinaryFlat``); here ties are broken by gallery index (lower
first), like every metric in this module, so the score is deterministic.
"""
from __future__ import annotations

from typing import Sequence

import torch

from dmlrs.errors import DmlrsError
from dmlrs.metrics.retrieval import (
    RankStats,
    check_ks,
    check_positive_int,
    default_ks,
    exclude_self,
    resolve_device,
    mean_over,
    relevant_ranks,
    require_some_relevant,
    resolve_gallery,
)

WORD_BITS = 64
MAP_NORMALIZERS = ("retrieved", "capped", "all")
_M1 = 0x5555555555555555
_M2 = 0x3333333333333333
_M4 = 0x0F0F0F0F0F0F0F0F
_H01 = 0x0101010101010101


def binarize(x: torch.Tensor) -> torch.Tensor:
    """+1 where x > 0, -1 elsewhere (exact zeros -> -1, the same bit as negatives); same dtype
    and shape as ``x``."""
    return torch.where(x > 0, 1, -1).to(x.dtype)


def _bits_of(codes: torch.Tensor) -> torch.Tensor:
    """(N, B) bool bits of real-valued codes (> 0 -> 1, <= 0 -> 0) or of 0/1 integer/bool codes."""
    if not isinstance(codes, torch.Tensor) or codes.dim() != 2 or codes.shape[1] == 0:
        raise DmlrsError("hash codes must be a 2-D tensor (num_items x num_bits) with at least one bit")
    if codes.dtype == torch.bool:
        return codes
    if codes.dtype.is_floating_point:
        if torch.isnan(codes).any():
            raise DmlrsError("hash codes contain NaN; check the hash head's output")
        return codes > 0  # exact 0 (and -0.0) -> bit 0, like a negative value
    if not bool(((codes == 0) | (codes == 1)).all()):
        raise DmlrsError(
            "integer hash codes must be 0/1 bits; pass real-valued (or +-1 float) codes to binarise them by sign"
        )
    return codes == 1


def pack_codes(bits_or_real: torch.Tensor) -> torch.Tensor:
    """Pack (N, B) codes into (N, ceil(B / 64)) int64 words, bit b -> word b // 64, bit b % 64.

    Accepts real-valued codes (binarised: > 0 -> 1, <= 0 -> 0, so an exact 0 counts as negative)
    or bool / 0-1 integer bits.
    """
    bits = _bits_of(bits_or_real)
    num_items, num_bits = bits.shape
    num_words = -(-num_bits // WORD_BITS)
    padded = torch.zeros(num_items, num_words * WORD_BITS, dtype=torch.long, device=bits.device)
    padded[:, :num_bits] = bits.long()
    place = torch.ones(WORD_BITS, dtype=torch.long, device=bits.device) << torch.arange(WORD_BITS, device=bits.device)
    # (N, W, 64) bits * place values; distinct powers of two, so the sum is a bitwise OR (wraps at bit 63)
    return (padded.view(num_items, num_words, WORD_BITS) * place).sum(dim=2)


def unpack_codes(packed: torch.Tensor, num_bits: int) -> torch.Tensor:
    """Inverse of :func:`pack_codes`: (N, W) int64 words -> (N, num_bits) bool bits."""
    shifts = torch.arange(WORD_BITS, device=packed.device)
    bits = (packed.unsqueeze(2) >> shifts) & 1  # (N, W, 64)
    return bits.reshape(packed.shape[0], -1)[:, :num_bits].bool()


def popcount(words: torch.Tensor) -> torch.Tensor:
    """Number of set bits of every int64 element (SWAR; the masks clear the sign bit, so the
    arithmetic right shifts of signed int64 behave like logical ones)."""
    return _popcount_(words.clone())


def _popcount_(x: torch.Tensor) -> torch.Tensor:
    """:func:`popcount` in place on an int64 tensor ``x`` (one temporary of its size)."""
    t = x >> 1
    x -= t.bitwise_and_(_M1)
    torch.bitwise_right_shift(x, 2, out=t)
    x.bitwise_and_(_M2).add_(t.bitwise_and_(_M2))
    torch.bitwise_right_shift(x, 4, out=t)
    x.add_(t).bitwise_and_(_M4)
    del t
    return x.mul_(_H01).bitwise_right_shift_(56)  # top byte = sum of the 8 byte counts (wraps mod 2^64)


def _distance_chunk(packed_q: torch.Tensor, packed_g: torch.Tensor) -> torch.Tensor:
    """(C, W) x (G, W) packed words -> (C, G) int64 Hamming distances (16 bytes per entry at the
    peak for one word, 24 for several)."""
    distance = None
    for word in range(packed_q.shape[1]):  # one (C, G) XOR + popcount per 64-bit word
        bits = _popcount_(packed_q[:, word : word + 1] ^ packed_g[:, word].unsqueeze(0))
        distance = bits if distance is None else distance.add_(bits)
        del bits
    return distance


def hamming_distance(packed_q: torch.Tensor, packed_g: torch.Tensor, chunk_size: int = 1024) -> torch.Tensor:
    """(Q, W) x (G, W) int64 packed codes -> (Q, G) int32 Hamming distances, chunked over queries.

    Returns the full matrix (4 Q G bytes, plus one chunk's int64 work: chunk_size x G x 24
    bytes); for retrieval metrics at scale use :func:`hamming_metrics`, which never builds it."""
    for name, packed in (("packed_q", packed_q), ("packed_g", packed_g)):
        if not isinstance(packed, torch.Tensor) or packed.dtype != torch.long or packed.dim() != 2:
            raise DmlrsError(f"{name} must be a 2-D int64 tensor from pack_codes()")
    if packed_q.shape[1] != packed_g.shape[1]:
        raise DmlrsError(f"packed_q has {packed_q.shape[1]} words per code but packed_g has {packed_g.shape[1]}")
    chunk_size = check_positive_int(chunk_size, "chunk_size")
    packed_g = packed_g.to(packed_q.device)
    return torch.cat(
        [_distance_chunk(packed_q[s : s + chunk_size], packed_g).int() for s in range(0, packed_q.shape[0], chunk_size)]
    )


def _packed(codes: torch.Tensor, num_bits: int | None, name: str) -> tuple[torch.Tensor, int]:
    """Return (int64 words, number of bits) for real/bit codes, or for packed codes when num_bits is given."""
    if num_bits is None:
        bits = _bits_of(codes)
        return pack_codes(bits), bits.shape[1]
    num_bits = check_positive_int(num_bits, "num_bits")
    num_words = -(-num_bits // WORD_BITS)
    if not isinstance(codes, torch.Tensor) or codes.dtype != torch.long or codes.dim() != 2 or codes.shape[1] != num_words:
        raise DmlrsError(
            f"{name}: with num_bits={num_bits} the codes must be packed int64 words of shape (N, {num_words}) "
            "from pack_codes(); pass num_bits=None for real-valued or 0/1 codes"
        )
    return codes, num_bits


def hamming_metrics(
    query_codes: torch.Tensor,
    query_labels: torch.Tensor,
    gallery_codes: torch.Tensor | None = None,
    gallery_labels: torch.Tensor | None = None,
    *,
    ks: Sequence[int] | None = None,
    map_at: Sequence[int] = (100,),
    radius: int = 2,
    num_bits: int | None = None,
    map_at_normalizer: str = "retrieved",
    chunk_size: int = 1024,
    device: torch.device | str | None = None,
) -> dict:
    """Hashing retrieval report: ``mAP``, ``mAP@k`` for k in ``map_at``, ``P@k`` for k in ``ks``
    (None: the k of ``DEFAULT_KS`` below the number of ranked gallery items),
    ``P@H<=radius``, ``num_queries``, ``num_queries_without_relevant`` (plain Python values).

    Codes: real-valued (binarised: > 0 -> bit 1, <= 0 -> bit 0) or 0/1 bits, (N, B); or packed
    int64 words from :func:`pack_codes` together with ``num_bits``.  ``gallery_codes=None``: leave-one-out.
    ``device``: where to compute (codes are moved there), default the query codes' device.
    Definitions and the memory bound (<= chunk_size x G x 33 bytes per chunk, plus O(Q + G))
    in the module docstring.
    """
    if map_at_normalizer not in MAP_NORMALIZERS:
        raise DmlrsError(f"map_at_normalizer must be one of {MAP_NORMALIZERS}, got {map_at_normalizer!r}")
    if isinstance(radius, bool) or not isinstance(radius, int) or radius < 0:
        raise DmlrsError(f"radius must be a non-negative integer, got {radius!r}")
    ks, map_at = (None if ks is None else check_ks(ks)), check_ks(map_at, "map_at")
    chunk_size = check_positive_int(chunk_size, "chunk_size")
    if device is not None and isinstance(query_codes, torch.Tensor):
        device = resolve_device(device, query_codes)
        query_codes = query_codes.to(device)
        if isinstance(gallery_codes, torch.Tensor):
            gallery_codes = gallery_codes.to(device)
    packed_q, bits_q = _packed(query_codes, num_bits, "query_codes")
    if gallery_codes is None:
        packed_g, bits_g = None, bits_q
    else:
        packed_g, bits_g = _packed(gallery_codes, num_bits, "gallery_codes")
    if bits_g != bits_q:
        raise DmlrsError(f"query codes have {bits_q} bits but gallery codes have {bits_g}")
    query_labels, packed_g, gallery_labels, loo = resolve_gallery(
        packed_q, query_labels, packed_g, gallery_labels, what="codes"
    )

    num_gallery = packed_g.shape[0]
    if ks is None:
        ks = default_ks(num_gallery - int(loo))
    reversed_index = torch.arange(num_gallery - 1, -1, -1, device=packed_q.device)
    columns: dict[str, list[torch.Tensor]] = {"AP": [], "num_relevant": [], "radius": []}
    columns.update({f"AP@{k}": [] for k in map_at})
    columns.update({f"P@{k}": [] for k in ks})
    for start in range(0, packed_q.shape[0], chunk_size):
        distance = _distance_chunk(packed_q[start : start + chunk_size], packed_g)  # (C, G) int64
        relevant = query_labels[start : start + chunk_size].unsqueeze(1) == gallery_labels.unsqueeze(0)
        within = distance <= radius
        # in place: keys = (bits - distance) * G + reversed index; distinct, descending = ascending distance
        keys = distance.neg_().add_(bits_q).mul_(num_gallery).add_(reversed_index)
        del distance
        if loo:
            exclude_self(keys, start, relevant, within)  # the query is not "within the radius" of itself
        num_within = within.sum(dim=1)
        within &= relevant
        columns["radius"].append(within.sum(dim=1).double() / num_within.clamp_min(1))
        del within
        ranks, num_relevant = relevant_ranks(keys, relevant)
        del keys, relevant
        stats = RankStats(ranks, num_relevant)
        del ranks
        columns["AP"].append(stats.average_precision())
        columns["num_relevant"].append(stats.num_relevant)
        for k in map_at:
            columns[f"AP@{k}"].append(_average_precision_at(stats, k, map_at_normalizer))
        for k in ks:
            columns[f"P@{k}"].append(stats.precision_at(k))
        del stats  # one chunk alive at a time
    per_query = {name: torch.cat(parts) for name, parts in columns.items()}
    keep = require_some_relevant(per_query["num_relevant"])

    result: dict = {"mAP": mean_over(per_query["AP"], keep)}
    result.update({f"mAP@{k}": mean_over(per_query[f"AP@{k}"], keep) for k in map_at})
    result.update({f"P@{k}": mean_over(per_query[f"P@{k}"], keep) for k in ks})
    result[f"P@H<={radius}"] = mean_over(per_query["radius"], keep)
    result["num_queries"] = int(keep.sum())
    result["num_queries_without_relevant"] = int((~keep).sum())
    return result


def _average_precision_at(stats: RankStats, k: int, normalizer: str) -> torch.Tensor:
    """(C,) float64 hashing MAP@k of each query, 0 where the normaliser is 0."""
    if normalizer == "retrieved":
        denominator = stats.hits_within(k)
    elif normalizer == "capped":
        denominator = stats.num_relevant.clamp_max(k)
    else:
        denominator = stats.num_relevant
    numerator = stats.precision_sum_within(k)
    return torch.where(denominator > 0, numerator / denominator.clamp_min(1).double(), 0.0)


def hamming_precision_at(
    query_codes: torch.Tensor,
    query_labels: torch.Tensor,
    gallery_codes: torch.Tensor,
    gallery_labels: torch.Tensor,
    k: int = 20,
    *,
    num_bits: int | None = None,
    chunk_size: int = 1024,
    device: torch.device | str | None = None,
) -> float:
    """CDNE's validation score: Hamming precision@k of the queries against the gallery, averaged
    over ALL queries (a query without any relevant gallery item scores 0, as in the original code).

    Same codes, ranking, ``device`` and memory bound as :func:`hamming_metrics` (bit = code > 0;
    ascending Hamming distance, ties by gallery index); see the module docstring.
    """
    if gallery_codes is None or gallery_labels is None:
        raise DmlrsError("hamming_precision_at needs a gallery (codes and labels); it has no leave-one-out mode")
    k = check_positive_int(k, "k")
    result = hamming_metrics(query_codes, query_labels, gallery_codes, gallery_labels, ks=(k,), map_at=(),
                             num_bits=num_bits, chunk_size=chunk_size, device=device)
    # hamming_metrics averages over the queries with a relevant item; the others score exactly 0
    kept = result["num_queries"]
    return result[f"P@{k}"] * kept / (kept + result["num_queries_without_relevant"])
