"""Precision-recall curve against a slow float64 loop reference written from the definition;
per-class AP bars and the curve's plot as PNGs."""
import numpy as np
import pytest
import torch

from dmlrs.visualize.curves import plot_ap_per_class, plot_precision_recall, precision_recall_curve
from tests.visualize.pictures import assert_png


def reference_curve(query, query_labels, gallery, gallery_labels, levels):
    """Explicit loops in float64: rank each query's gallery by (-cosine, index), walk the ranking,
    keep (recall, precision) at every relevant item, interpolate with exact fractions."""
    leave_one_out = gallery is None
    if leave_one_out:
        gallery, gallery_labels = query, query_labels
    q = query.double().numpy()
    g = gallery.double().numpy()
    curves = []
    for i in range(len(q)):
        scores = [float(np.dot(q[i], g[j]) / (np.linalg.norm(q[i]) * np.linalg.norm(g[j]))) for j in range(len(g))]
        order = sorted((j for j in range(len(g)) if not (leave_one_out and j == i)), key=lambda j: (-scores[j], j))
        relevant_total = sum(1 for j in order if int(gallery_labels[j]) == int(query_labels[i]))
        if relevant_total == 0:
            continue
        points, hits = [], 0  # (hits, precision) at each relevant item
        for rank, j in enumerate(order, start=1):
            if int(gallery_labels[j]) == int(query_labels[i]):
                hits += 1
                points.append((hits, hits / rank))
        curve = []
        for level in range(levels):  # recall level / (levels - 1), compared exactly
            curve.append(max(p for h, p in points if h * (levels - 1) >= level * relevant_total))
        curves.append(curve)
    return np.arange(levels) / (levels - 1), np.mean(np.array(curves, dtype=np.float64), axis=0)


def separated(num_query, num_gallery, seed, dim=6, min_gap=1e-5):
    """Random embeddings whose cosines within a row differ by > min_gap (float32 keeps the order)."""
    for attempt in range(200):
        generator = torch.Generator().manual_seed(1000 * seed + attempt)
        query = torch.randn(num_query, dim, generator=generator)
        gallery = torch.randn(num_gallery, dim, generator=generator)
        qn = query.double() / query.double().norm(dim=1, keepdim=True)
        gn = gallery.double() / gallery.double().norm(dim=1, keepdim=True)
        gaps = np.diff(np.sort((qn @ gn.T).numpy(), axis=1), axis=1)
        if gaps.min() > min_gap:
            return query, gallery, generator
    raise AssertionError("no tie-free draw")


def test_hand_computed_curve():
    """Relevance by rank 1,0,1,0,0,1 (R = 3): precision 1, 2/3, 1/2 at recall 1/3, 2/3, 1."""
    angles = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    gallery = torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)
    gallery_labels = torch.tensor([0, 1, 0, 1, 1, 0])
    recall, precision = precision_recall_curve(torch.tensor([[1.0, 0.0]]), torch.tensor([0]), gallery, gallery_labels,
                                               levels=4)
    np.testing.assert_allclose(recall, [0, 1 / 3, 2 / 3, 1])
    np.testing.assert_allclose(precision, [1, 1, 2 / 3, 1 / 2], rtol=0, atol=1e-15)


@pytest.mark.parametrize("levels", [2, 11, 101])
@pytest.mark.parametrize("chunk_size", [1, 7, 1024])
def test_curve_matches_the_loop_reference(levels, chunk_size):
    query, gallery, generator = separated(23, 57, seed=levels + chunk_size)
    query_labels = torch.randint(0, 4, (23,), generator=generator)
    gallery_labels = torch.randint(0, 5, (57,), generator=generator)
    query_labels[0] = 9  # a query without relevant items is left out of the mean
    recall, precision = precision_recall_curve(query, query_labels, gallery, gallery_labels, levels=levels,
                                               chunk_size=chunk_size)
    expected_recall, expected = reference_curve(query, query_labels, gallery, gallery_labels, levels)
    np.testing.assert_allclose(recall, expected_recall, rtol=0, atol=1e-15)
    np.testing.assert_allclose(precision, expected, rtol=0, atol=1e-12)
    assert np.all(np.diff(precision) <= 1e-15)  # interpolated precision never rises with recall


def test_leave_one_out_and_ties_by_gallery_index():
    generator = torch.Generator().manual_seed(3)
    # +-1 entries in 4 dims: many exact cosine ties, broken by index in both implementations
    x = torch.randint(0, 2, (30, 4), generator=generator).float() * 2 - 1
    labels = torch.randint(0, 3, (30,), generator=generator)
    recall, precision = precision_recall_curve(x, labels, levels=21, chunk_size=8)
    _, expected = reference_curve(x, labels, None, None, 21)
    np.testing.assert_allclose(precision, expected, rtol=0, atol=1e-12)


def test_no_relevant_item_anywhere_is_an_error():
    with pytest.raises(ValueError, match="no query has a relevant item"):
        precision_recall_curve(torch.randn(3, 4), torch.tensor([0, 0, 0]), torch.randn(5, 4),
                               torch.ones(5, dtype=torch.long))


def test_plots_are_pngs_of_sane_size(tmp_path):
    recall = np.linspace(0, 1, 101)
    assert_png(plot_precision_recall(recall, 1 - 0.5 * recall, tmp_path / "pr.png", title="t", mean_ap=0.7))
    names = {f"class_{i}_with_a_long_name": (i * 37 % 45) / 45 for i in range(45)}  # NWPU-size legend
    pixels = assert_png(plot_ap_per_class(names, tmp_path / "ap.png", title="AP", mean_ap=0.5))
    assert pixels.shape[0] > 600  # one row per class: 45 classes need a tall figure
    with pytest.raises(ValueError):
        plot_ap_per_class({}, tmp_path / "none.png", title="AP")
