"""t-SNE map: seeded subsample bound, clipped perplexity, PNG with a legend of class names."""
import numpy as np
import pytest

from dmlrs.visualize import embedding_map as em
from tests.visualize.pictures import assert_png


def clustered(n, classes=3, dim=8, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    return rng.normal(size=(n, dim)) + 4 * np.eye(dim)[labels], labels


def test_subsample_is_bounded_seeded_and_sorted():
    chosen = em.subsample(5000, 2000, seed=7)
    assert len(chosen) == 2000 and len(set(chosen.tolist())) == 2000
    assert np.all(np.diff(chosen) > 0) and chosen.min() >= 0 and chosen.max() < 5000
    np.testing.assert_array_equal(chosen, em.subsample(5000, 2000, seed=7))
    assert not np.array_equal(chosen, em.subsample(5000, 2000, seed=8))
    np.testing.assert_array_equal(em.subsample(30, 2000), np.arange(30))  # few enough: all, in order


def test_perplexity_is_clipped_for_small_sets():
    assert em.clipped_perplexity(1000) == 30.0
    assert em.clipped_perplexity(31) == 10.0
    assert em.clipped_perplexity(4) == 1.0
    coords = em.tsne_map(clustered(5)[0])  # scikit-learn refuses perplexity >= n without the clip
    assert coords.shape == (5, 2) and np.isfinite(coords).all()
    with pytest.raises(ValueError, match="at least 4"):
        em.tsne_map(np.ones((3, 4)))


def test_map_of_a_subset_says_so_and_is_reproducible(tmp_path, monkeypatch):
    x, labels = clustered(90)
    mapped = []
    real = em.tsne_map
    monkeypatch.setattr(em, "tsne_map", lambda points, **kw: mapped.append(len(points)) or real(points, **kw))
    titles = []
    real_plot = em.plot_embedding_map
    monkeypatch.setattr(em, "plot_embedding_map",
                        lambda *a, title, **kw: titles.append(title) or real_plot(*a, title=title, **kw))
    path, chosen = em.embedding_map(x, labels, ["a", "b", "c"], tmp_path / "map.png", title="map", max_points=40,
                                    seed=1)
    assert mapped == [40] and len(chosen) == 40
    assert "40 of 90" in titles[0]
    assert_png(path)
    _, again = em.embedding_map(x, labels, ["a", "b", "c"], tmp_path / "again.png", title="map", max_points=40, seed=1)
    np.testing.assert_array_equal(chosen, again)
    em.embedding_map(x[:20], labels[:20], ["a", "b", "c"], tmp_path / "all.png", title="map")
    assert "of" not in titles[-1]  # nothing left out: no note


def test_separated_classes_stay_apart():
    x, labels = clustered(60, classes=2, dim=4)
    coords = em.tsne_map(x, seed=0)
    centres = [coords[labels == c].mean(axis=0) for c in (0, 1)]
    spread = max(np.linalg.norm(coords[labels == c] - centres[c], axis=1).mean() for c in (0, 1))
    assert np.linalg.norm(centres[0] - centres[1]) > 2 * spread


def test_many_classes_get_distinct_colours_and_a_legend(tmp_path):
    x, labels = clustered(200, classes=45, dim=48)
    names = [f"class_{i}" for i in range(45)]
    coords = np.random.default_rng(0).normal(size=(200, 2))
    assert_png(em.plot_embedding_map(coords, labels, names, tmp_path / "many.png", title="45 classes"))
    from dmlrs.visualize.figures import class_colours

    assert len(set(class_colours(45))) == 45
