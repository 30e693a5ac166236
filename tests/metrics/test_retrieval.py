"""retrieval_metrics against explicit-loop float64 references written from the definitions,
and against scikit-learn's average_precision_score."""
import json

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from dmlrs.errors import DmlrsError
from dmlrs.metrics.retrieval import descending_score_keys, per_query_average_precision, retrieval_metrics

KS = (1, 3, 10, 1000)  # 1000 > every gallery below


# ----------------------------------------------------------------------------- data
def imbalanced_labels(n, generator):
    """Classes of very different sizes, including two singleton classes (labels 7 and 9)."""
    sizes = [n // 2, n // 4, n // 8, 2]
    labels = sum(([c] * s for c, s in enumerate(sizes)), []) + [7, 9]
    labels += [0] * (n - len(labels))
    return torch.tensor(labels)[torch.randperm(n, generator=generator)]


def unnormalised(x, generator):
    """Scale every row by a power of two in [1/4, 8] (cosine unchanged, exact in float)."""
    return x * 2.0 ** torch.randint(-2, 4, (x.shape[0], 1), generator=generator)


def cosine64(query, gallery):
    q = query.double().numpy()
    g = gallery.double().numpy()
    return (q / np.linalg.norm(q, axis=1, keepdims=True)) @ (g / np.linalg.norm(g, axis=1, keepdims=True)).T


def separated_embeddings(num_query, num_gallery, dim, seed, min_gap=2e-6):
    """Continuous random embeddings whose cosine scores within each query row are pairwise at
    least ``min_gap`` apart, so float32 rounding cannot reorder them (tie-free data)."""
    for attempt in range(100):
        generator = torch.Generator().manual_seed(seed * 1000 + attempt)
        query = torch.randn(num_query, dim, generator=generator)
        gallery = torch.randn(num_gallery, dim, generator=generator)
        gaps = np.diff(np.sort(cosine64(query, gallery), axis=1), axis=1)
        if gaps.min() > min_gap:
            return unnormalised(query, generator), unnormalised(gallery, generator), generator
    raise AssertionError("could not draw tie-free data")


def tied_embeddings(n, dim, generator):
    """+-1 entries in dim 4 or 16: cosines are exact multiples of 1/dim, so many exact ties."""
    return unnormalised(torch.randint(0, 2, (n, dim), generator=generator).float() * 2 - 1, generator)


# ----------------------------------------------------------------------------- reference
def reference_metrics(query, query_labels, gallery, gallery_labels, ks):
    """Explicit loops in float64: rank by (-score, gallery index), then the textbook sums."""
    leave_one_out = gallery is None
    if leave_one_out:
        gallery, gallery_labels = query, query_labels
    scores = cosine64(query, gallery)
    per_query, without = [], 0
    for q in range(len(query)):
        order = sorted(
            (g for g in range(len(gallery)) if not (leave_one_out and g == q)), key=lambda g: (-scores[q, g], g)
        )
        rel = [int(gallery_labels[g] == query_labels[q]) for g in order]
        num_rel = sum(rel)
        if num_rel == 0:
            without += 1
            continue
        hits, ap, ap_r = 0, 0.0, 0.0
        for i, r in enumerate(rel, start=1):
            if r:
                hits += 1
                ap += hits / i
                if i <= num_rel:
                    ap_r += hits / i
        row = {"label": int(query_labels[q]), "mAP": ap / num_rel, "mAP@R": ap_r / num_rel}
        for k in ks:
            row[f"P@{k}"] = sum(rel[:k]) / k
            row[f"R@{k}"] = sum(rel[:k]) / num_rel
        per_query.append(row)
    result = {name: float(np.mean([row[name] for row in per_query])) for name in per_query[0] if name != "label"}
    labels = sorted({row["label"] for row in per_query})
    result["AP_per_class"] = {c: float(np.mean([r["mAP"] for r in per_query if r["label"] == c])) for c in labels}
    result["num_queries"] = len(per_query)
    result["num_queries_without_relevant"] = without
    return result


def assert_same_metrics(actual, expected):
    assert actual.keys() == expected.keys()
    for name, value in expected.items():
        if isinstance(value, dict):
            assert actual[name].keys() == value.keys()
            for label in value:
                assert actual[name][label] == pytest.approx(value[label], abs=1e-12), (name, label)
        else:
            assert actual[name] == pytest.approx(value, abs=1e-12), name


# ----------------------------------------------------------------------------- tests
@pytest.mark.parametrize("chunk_size", [1, 7, 1024])
def test_leave_one_out_matches_reference_on_tie_free_imbalanced_data(chunk_size):
    x, _, generator = separated_embeddings(60, 60, 8, seed=1)
    labels = imbalanced_labels(60, generator)
    expected = reference_metrics(x, labels, None, None, KS)
    assert expected["num_queries_without_relevant"] == 2  # the two singleton classes
    assert_same_metrics(retrieval_metrics(x, labels, ks=KS, chunk_size=chunk_size), expected)


@pytest.mark.parametrize("chunk_size", [1, 5, 1024])
def test_query_gallery_matches_reference_including_label_absent_from_gallery(chunk_size):
    query, gallery, generator = separated_embeddings(25, 50, 8, seed=2)
    gallery_labels = imbalanced_labels(50, generator)
    query_labels = torch.randint(0, 4, (25,), generator=generator)
    query_labels[:3] = 11  # not in the gallery -> no relevant item
    expected = reference_metrics(query, query_labels, gallery, gallery_labels, KS)
    assert expected["num_queries_without_relevant"] == 3
    actual = retrieval_metrics(query, query_labels, gallery, gallery_labels, ks=KS, chunk_size=chunk_size)
    assert_same_metrics(actual, expected)


@pytest.mark.parametrize("dim,chunk_size", [(4, 1), (4, 6), (16, 1024)])
def test_exact_ties_are_broken_by_gallery_index(dim, chunk_size):
    generator = torch.Generator().manual_seed(dim + chunk_size)
    x = tied_embeddings(50, dim, generator)
    labels = torch.randint(0, 3, (50,), generator=generator)
    # leave-one-out and query/gallery (gallery with exact duplicate rows)
    assert_same_metrics(retrieval_metrics(x, labels, ks=KS, chunk_size=chunk_size), reference_metrics(x, labels, None, None, KS))
    gallery = torch.cat([x[:30], x[:10]])
    gallery_labels = torch.cat([labels[:30], (labels[:10] + 1) % 3])
    expected = reference_metrics(x[30:], labels[30:], gallery, gallery_labels, KS)
    actual = retrieval_metrics(x[30:], labels[30:], gallery, gallery_labels, ks=KS, chunk_size=chunk_size)
    assert_same_metrics(actual, expected)


def test_tie_order_changes_the_score_so_the_rule_matters():
    # one query, gallery of two identical items: index 0 irrelevant, index 1 relevant
    query = torch.tensor([[1.0, 0.0]])
    gallery = torch.tensor([[1.0, 1.0], [2.0, 2.0]])
    result = retrieval_metrics(query, torch.tensor([0]), gallery, torch.tensor([1, 0]), ks=(1, 2, 5))
    assert result["mAP"] == 0.5  # relevant item ranked second: P(2) = 1/2
    assert result["P@1"] == 0.0 and result["P@2"] == 0.5 and result["P@5"] == 0.2
    assert result["R@1"] == 0.0 and result["R@2"] == 1.0
    swapped = retrieval_metrics(query, torch.tensor([0]), gallery, torch.tensor([0, 1]), ks=(1,))
    assert swapped["mAP"] == 1.0 and swapped["P@1"] == 1.0


def test_hand_computed_example():
    # scores 0.9 (rel), 0.8 (irr), 0.7 (rel), 0.1 (irr), -0.5 (rel): ranks of relevant items 1, 3, 5
    angles = torch.tensor([0.9, 0.8, 0.7, 0.1, -0.5]).acos()
    gallery = torch.stack([angles.cos(), angles.sin()], dim=1)
    result = retrieval_metrics(torch.tensor([[1.0, 0.0]]), torch.tensor([4]), gallery, torch.tensor([4, 0, 4, 1, 4]), ks=(1, 2, 4, 10))
    assert result["mAP"] == pytest.approx((1 + 2 / 3 + 3 / 5) / 3)
    assert result["mAP@R"] == pytest.approx((1 + 2 / 3) / 3)  # R = 3: ranks 1 and 3 are within the top 3
    assert result["P@2"] == 0.5 and result["P@4"] == 0.5 and result["P@10"] == pytest.approx(0.3)
    assert result["R@2"] == pytest.approx(1 / 3) and result["R@4"] == pytest.approx(2 / 3) and result["R@10"] == 1.0
    assert result["AP_per_class"] == {4: pytest.approx(result["mAP"])}


def test_k_larger_than_gallery_still_divides_by_k():
    x, _, generator = separated_embeddings(30, 30, 8, seed=3)
    labels = torch.randint(0, 3, (30,), generator=generator)
    result = retrieval_metrics(x, labels, ks=(29, 100))
    num_relevant = torch.bincount(labels)[labels] - 1  # leave-one-out: every other item of the class
    assert result["P@100"] == pytest.approx(float(num_relevant.double().mean()) / 100)
    assert result["P@29"] == pytest.approx(float(num_relevant.double().mean()) / 29)
    assert result["R@29"] == 1.0 and result["R@100"] == 1.0


def test_leave_one_out_excludes_the_query_by_index_not_by_value():
    x = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    labels = torch.tensor([0, 0, 1, 1])
    result = retrieval_metrics(x, labels, ks=(1,))
    # query 0's duplicate (index 1) stays in its ranking and is ranked first, and vice versa
    assert result["AP_per_class"][0] == 1.0
    assert result["num_queries_without_relevant"] == 0
    # query 2 ranks [3 (0.8, rel), 0, 1]; query 3 ranks [2 (0.8, rel), 0, 1]
    assert result["mAP"] == 1.0


def test_matches_sklearn_average_precision_per_query():
    x, _, generator = separated_embeddings(50, 50, 16, seed=4)
    labels = imbalanced_labels(50, generator)
    ours = per_query_average_precision(x, labels, chunk_size=8).numpy()
    scores = cosine64(x, x)
    for q in range(50):
        others = np.arange(50) != q
        y_true = labels.numpy()[others] == labels[q].item()
        if not y_true.any():
            assert np.isnan(ours[q])
            continue
        assert ours[q] == pytest.approx(average_precision_score(y_true, scores[q, others]), abs=1e-12)


def test_perfectly_separated_classes_score_one_and_result_is_json():
    labels = torch.arange(40) % 4
    x = torch.nn.functional.one_hot(labels, 8).float() + 0.01 * torch.randn(40, 8, generator=torch.Generator().manual_seed(0))
    result = retrieval_metrics(x, labels, ks=(1, 9, 20))
    assert result["mAP"] == 1.0 and result["mAP@R"] == 1.0 and result["R@9"] == 1.0
    assert result["P@20"] == pytest.approx(9 / 20)
    decoded = json.loads(json.dumps(result))
    assert decoded["mAP"] == 1.0 and decoded["AP_per_class"] == {"0": 1.0, "1": 1.0, "2": 1.0, "3": 1.0}
    assert all(type(v) is float for k, v in result.items() if k.startswith(("m", "P@", "R@")))


def test_keys_order_like_scores_with_index_tie_break():
    scores = torch.tensor([[0.0, -0.0, 1.0, -1.0, 0.5, -0.5, 0.5, -2.5, 3e-38, -3e-38]])
    order = descending_score_keys(scores).argsort(dim=1, descending=True)[0].tolist()
    expected = sorted(range(10), key=lambda g: (-float(scores[0, g]), g))  # -0.0 == 0.0: index decides
    assert order == expected


def test_no_relevant_item_anywhere_is_an_error_and_bad_inputs_are_named():
    x = torch.randn(4, 3)
    with pytest.raises(DmlrsError, match="no query has a relevant item"):
        retrieval_metrics(x, torch.arange(4))
    with pytest.raises(DmlrsError, match="query_labels"):
        retrieval_metrics(x, torch.arange(3))
    with pytest.raises(DmlrsError, match="gallery_labels"):
        retrieval_metrics(x, torch.arange(4), gallery=x)
    with pytest.raises(DmlrsError, match="NaN"):
        retrieval_metrics(torch.full((4, 3), float("nan")), torch.zeros(4, dtype=torch.long))
    with pytest.raises(DmlrsError, match="chunk_size"):
        retrieval_metrics(x, torch.zeros(4, dtype=torch.long), chunk_size=0)
    with pytest.raises(DmlrsError, match="ks"):
        retrieval_metrics(x, torch.zeros(4, dtype=torch.long), ks=(0,))
