"""Hashing metrics against a brute-force Hamming ranking computed with explicit loops over bits."""
import pytest
import torch

from dmlrs.errors import DmlrsError
from dmlrs.metrics.hamming import (
    binarize,
    hamming_distance,
    hamming_metrics,
    hamming_precision_at,
    pack_codes,
    popcount,
    unpack_codes,
)

KS = (1, 5, 20, 500)  # 500 > every gallery below


def real_codes(n, num_bits, generator):
    """Real-valued codes with some exact zeros (which binarise like negatives: bit 0)."""
    codes = torch.randn(n, num_bits, generator=generator)
    codes[torch.rand(n, num_bits, generator=generator) < 0.1] = 0.0
    return codes


def reference_distance(code_a, code_b):
    return sum(1 for a, b in zip(code_a, code_b) if (a > 0) != (b > 0))


def reference_metrics(query, query_labels, gallery, gallery_labels, ks, map_at, radius, normalizer):
    """Explicit loops in float64 over the ranking by (Hamming distance, gallery index)."""
    leave_one_out = gallery is None
    if leave_one_out:
        gallery, gallery_labels = query, query_labels
    query, gallery = query.tolist(), gallery.tolist()
    rows, without = [], 0
    for q in range(len(query)):
        candidates = [g for g in range(len(gallery)) if not (leave_one_out and g == q)]
        distance = {g: reference_distance(query[q], gallery[g]) for g in candidates}
        order = sorted(candidates, key=lambda g: (distance[g], g))
        rel = [int(gallery_labels[g] == query_labels[q]) for g in order]
        num_rel = sum(rel)
        if num_rel == 0:
            without += 1
            continue
        precision_at_hit = {}  # rank -> P(rank) at relevant ranks
        hits = 0
        for i, r in enumerate(rel, start=1):
            if r:
                hits += 1
                precision_at_hit[i] = hits / i
        row = {"mAP": sum(precision_at_hit.values()) / num_rel}
        for k in map_at:
            within_k = [p for i, p in precision_at_hit.items() if i <= k]
            denominator = {"retrieved": len(within_k), "capped": min(k, num_rel), "all": num_rel}[normalizer]
            row[f"mAP@{k}"] = sum(within_k) / denominator if denominator else 0.0
        for k in ks:
            row[f"P@{k}"] = sum(rel[:k]) / k
        near = [g for g in candidates if distance[g] <= radius]
        row[f"P@H<={radius}"] = sum(gallery_labels[g] == query_labels[q] for g in near) / len(near) if near else 0.0
        rows.append(row)
    result = {name: sum(row[name] for row in rows) / len(rows) for name in rows[0]}
    result["num_queries"] = len(rows)
    result["num_queries_without_relevant"] = without
    return result


def assert_same(actual, expected):
    assert list(actual) == list(expected)
    for name, value in expected.items():
        assert actual[name] == pytest.approx(value, abs=1e-12), name


@pytest.mark.parametrize("num_bits", [1, 8, 63, 64, 65, 130])
def test_pack_round_trip_and_words_hold_64_bits(num_bits):
    generator = torch.Generator().manual_seed(num_bits)
    codes = real_codes(9, num_bits, generator)
    packed = pack_codes(codes)
    assert packed.dtype == torch.int64 and packed.shape == (9, -(-num_bits // 64))
    assert torch.equal(unpack_codes(packed, num_bits), codes > 0)
    assert torch.equal(pack_codes(codes > 0), packed)  # bool bits pack the same
    assert torch.equal(pack_codes((codes > 0).int()), packed)  # and 0/1 integers
    assert torch.equal(pack_codes(binarize(codes)), packed)  # and +-1 floats


def test_exact_zero_binarises_like_a_negative_value():
    """The original CDNE evaluation rule: bit = (np.sign(code) == 1), so 0 -> bit 0."""
    values = torch.tensor([[-2.0, -0.0, 0.0, 3.0, 1e-30, -1e-30]])
    assert binarize(values).tolist() == [[-1.0, -1.0, -1.0, 1.0, 1.0, -1.0]]
    assert unpack_codes(pack_codes(values), 6).tolist() == [[False, False, False, True, True, False]]
    # a zero code is at distance 0 from an all-negative code and at full distance from an all-positive one
    zero, negative, positive = torch.zeros(1, 5), -torch.ones(1, 5), torch.ones(1, 5)
    assert hamming_distance(pack_codes(zero), pack_codes(torch.cat([negative, positive]))).tolist() == [[0, 5]]


def test_popcount_of_extreme_words():
    words = torch.tensor([0, 1, -1, torch.iinfo(torch.int64).min, torch.iinfo(torch.int64).max, -6148914691236517206])
    expected = [bin(w & (2**64 - 1)).count("1") for w in words.tolist()]
    assert popcount(words).tolist() == expected


@pytest.mark.parametrize("num_bits,chunk_size", [(12, 1), (64, 4), (100, 1000)])
def test_hamming_distance_matches_bit_loops(num_bits, chunk_size):
    generator = torch.Generator().manual_seed(num_bits)
    query, gallery = real_codes(7, num_bits, generator), real_codes(11, num_bits, generator)
    distance = hamming_distance(pack_codes(query), pack_codes(gallery), chunk_size=chunk_size)
    expected = [[reference_distance(q, g) for g in gallery.tolist()] for q in query.tolist()]
    assert distance.tolist() == expected


@pytest.mark.parametrize("normalizer", ["retrieved", "capped", "all"])
@pytest.mark.parametrize("num_bits,chunk_size", [(6, 1), (12, 7), (70, 1024)])
def test_leave_one_out_matches_brute_force(num_bits, chunk_size, normalizer):
    generator = torch.Generator().manual_seed(num_bits * 7 + chunk_size)
    codes = real_codes(40, num_bits, generator)
    labels = torch.randint(0, 4, (40,), generator=generator)
    labels[0] = 9  # a class with one item: no relevant item in leave-one-out
    expected = reference_metrics(codes, labels.tolist(), None, None, KS, (3, 10), 2, normalizer)
    actual = hamming_metrics(
        codes, labels, ks=KS, map_at=(3, 10), map_at_normalizer=normalizer, chunk_size=chunk_size
    )
    assert actual["num_queries_without_relevant"] == 1
    assert_same(actual, expected)


@pytest.mark.parametrize("chunk_size", [3, 1024])
def test_query_gallery_with_packed_codes_matches_brute_force(chunk_size):
    generator = torch.Generator().manual_seed(chunk_size)
    query, gallery = real_codes(15, 10, generator), real_codes(35, 10, generator)
    gallery[20:] = query[:15]  # exact duplicates of the queries at distance 0
    query_labels = torch.randint(0, 3, (15,), generator=generator)
    gallery_labels = torch.randint(0, 3, (35,), generator=generator)
    expected = reference_metrics(query, query_labels.tolist(), gallery, gallery_labels.tolist(), KS, (100,), 1, "retrieved")
    real = hamming_metrics(query, query_labels, gallery, gallery_labels, ks=KS, radius=1, chunk_size=chunk_size)
    packed = hamming_metrics(
        pack_codes(query), query_labels, pack_codes(gallery), gallery_labels, ks=KS, radius=1, num_bits=10, chunk_size=chunk_size
    )
    assert_same(real, expected)
    assert_same(packed, expected)


def test_precision_within_radius_is_zero_when_nothing_is_that_close():
    query = torch.tensor([[1.0, 1.0, 1.0, 1.0]])
    gallery = torch.tensor([[-1.0, -1.0, -1.0, 1.0], [-1.0, -1.0, -1.0, -1.0]])  # distances 3 and 4
    result = hamming_metrics(query, torch.tensor([0]), gallery, torch.tensor([0, 1]), ks=(1,), map_at=(1,))
    assert result["P@H<=2"] == 0.0
    assert result["mAP"] == 1.0 and result["P@1"] == 1.0
    result = hamming_metrics(query, torch.tensor([0]), gallery, torch.tensor([0, 1]), ks=(1,), radius=3)
    assert result["P@H<=3"] == 1.0


def test_ties_are_broken_by_gallery_index():
    query = torch.tensor([[1.0, -1.0]])
    gallery = torch.tensor([[1.0, -1.0], [1.0, -1.0]])  # both at distance 0
    first_irrelevant = hamming_metrics(query, torch.tensor([0]), gallery, torch.tensor([1, 0]), ks=(1,), map_at=(1,))
    assert first_irrelevant["mAP"] == 0.5 and first_irrelevant["P@1"] == 0.0 and first_irrelevant["mAP@1"] == 0.0
    first_relevant = hamming_metrics(query, torch.tensor([0]), gallery, torch.tensor([0, 1]), ks=(1,), map_at=(1,))
    assert first_relevant["mAP"] == 1.0 and first_relevant["P@1"] == 1.0 and first_relevant["mAP@1"] == 1.0


def test_bad_codes_are_rejected_with_a_clear_message():
    with pytest.raises(DmlrsError, match="0/1 bits"):
        pack_codes(torch.tensor([[2, 0, 1]]))
    with pytest.raises(DmlrsError, match="num_bits=70"):
        hamming_metrics(pack_codes(torch.randn(4, 70)[:, :64]), torch.zeros(4, dtype=torch.long), num_bits=70)
    with pytest.raises(DmlrsError, match="bits"):
        hamming_metrics(torch.randn(4, 8), torch.zeros(4, dtype=torch.long), torch.randn(4, 9), torch.zeros(4, dtype=torch.long))
    with pytest.raises(DmlrsError, match="map_at_normalizer"):
        hamming_metrics(torch.randn(4, 8), torch.zeros(4, dtype=torch.long), map_at_normalizer="R")


@pytest.mark.parametrize("k,chunk_size", [(20, 4), (3, 1024), (50, 7)])  # 50 > the gallery
def test_precision_at_averages_over_all_queries_like_the_original(k, chunk_size):
    """CDNE's validation score: P@k over ALL queries, a query of a class absent from the gallery
    scoring 0 (hamming_metrics' P@k leaves such queries out)."""
    generator = torch.Generator().manual_seed(k)
    query, gallery = real_codes(12, 6, generator), real_codes(40, 6, generator)
    query_labels = torch.randint(0, 3, (12,), generator=generator)
    gallery_labels = torch.randint(0, 3, (40,), generator=generator)
    query_labels[:2] = 7  # not in the gallery
    expected = reference_metrics(
        query[2:], query_labels[2:].tolist(), gallery, gallery_labels.tolist(), (k,), (), 0, "all"
    )
    score = hamming_precision_at(query, query_labels, gallery, gallery_labels, k, chunk_size=chunk_size)
    assert score == pytest.approx(expected[f"P@{k}"] * 10 / 12, abs=1e-12)
    packed = hamming_precision_at(
        pack_codes(query), query_labels, pack_codes(gallery), gallery_labels, k, num_bits=6
    )
    assert packed == score


def test_precision_at_by_hand_zero_codes_and_ties():
    query = torch.tensor([[0.0, 0.5], [0.3, -0.0]])  # bits 01 and 10
    # bits 00, 01, 01, 10: the zero code is a negative code, and rows 1 and 2 tie for query 0
    gallery = torch.tensor([[-1.0, 0.0], [-0.0, 2.0], [-3.0, 1.0], [1.0, -1.0]])
    gallery_labels = torch.tensor([0, 1, 0, 0])
    # query 0 (01, label 0): rows 1, 2 at distance 0 (a tie, by index), row 0 at 1, row 3 at 2 -> P@2 = 1/2
    # query 1 (10, label 0): row 3 at distance 0, row 0 at 1, rows 1, 2 at 2 -> P@2 = 2/2
    assert hamming_precision_at(query, torch.tensor([0, 0]), gallery, gallery_labels, 2) == 0.75
    # a query class absent from the gallery counts as 0: (1/2 + 0) / 2
    assert hamming_precision_at(query, torch.tensor([0, 5]), gallery, gallery_labels, 2) == 0.25
    with pytest.raises(DmlrsError, match="gallery"):
        hamming_precision_at(query, torch.tensor([0, 0]), None, None)
    with pytest.raises(DmlrsError, match="k must be a positive integer"):
        hamming_precision_at(query, torch.tensor([0, 0]), gallery, gallery_labels, 0)
