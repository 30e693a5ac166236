"""Retrieval gallery: query choice, ranking (ties by gallery index), borders that match correctness."""
import numpy as np
import torch

from dmlrs.visualize import retrieval_examples as rx
from dmlrs.visualize.gallery import CORRECT_COLOUR, INCORRECT_COLOUR, QUERY_COLOUR, GalleryLayout
from tests.visualize.pictures import assert_png


def test_queries_are_distinct_and_spread_over_the_classes():
    labels = np.repeat(np.arange(12), 5)
    chosen = rx.pick_queries(labels, 6, seed=0)
    assert len(set(chosen)) == 6
    assert sorted(labels[chosen].tolist()) == [0, 2, 4, 7, 9, 11]  # evenly spaced, first and last included
    assert chosen == rx.pick_queries(labels, 6, seed=0)
    few = np.array([3, 3, 3, 5, 5])  # two classes, six queries wanted: cycles, never repeats an item
    chosen = rx.pick_queries(few, 6, seed=1)
    assert len(chosen) == len(set(chosen)) == 5 and sorted(few[chosen].tolist()) == [3, 3, 3, 5, 5]
    assert rx.pick_queries(np.array([], dtype=int), 6) == []


def test_top_k_ranks_by_cosine_with_ties_by_gallery_index():
    gallery = torch.tensor([[0.0, 1.0], [2.0, 0.0], [1.0, 0.0], [1.0, 0.1], [-1.0, 0.0]])
    ranked = rx.top_k(torch.tensor([[3.0, 0.0]]), gallery, 4)
    assert ranked.tolist() == [[1, 2, 3, 0]]  # 1 and 2 tie (cosine 1): lower index first
    assert rx.top_k(torch.tensor([[1.0, 0.0]]), gallery, 10).shape == (1, 5)  # k capped at the gallery


def border_colour(pixels, layout, row, column):
    """The colour of the cell's border (its top-left pixel, inside the border band)."""
    x, y = layout.cell_origin(row, column)
    return tuple(int(v) for v in pixels[y + 1, x + 1])


def test_gallery_borders_match_correctness(tmp_path, monkeypatch):
    # class 0 around (1, 0), class 1 around (0, 1); one class-1 item sits right on the class-0 axis
    gallery = torch.tensor([[1.0, 0.0], [1.0, 0.05], [0.0, 1.0], [1.0, 0.01], [0.05, 1.0], [1.0, -0.2]])
    gallery_labels = torch.tensor([0, 0, 1, 1, 1, 0])
    query = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    query_labels = torch.tensor([0, 1])
    expected = {0: [0, 3, 1, 5], 1: [2, 4, 1, 3]}  # each query's top 4, by hand
    rows_drawn = []
    from dmlrs.visualize import gallery as gallery_module  # retrieval_gallery imports save_gallery when drawing

    real = gallery_module.save_gallery
    monkeypatch.setattr(gallery_module, "save_gallery",
                        lambda rows, *a, **kw: rows_drawn.extend(rows) or real(rows, *a, **kw))
    tile = lambda value: np.full((20, 20, 3), value, dtype=np.uint8)  # noqa: E731
    path = rx.retrieval_gallery(query, query_labels, gallery, gallery_labels, class_names=["land", "water"],
                                query_image=lambda i: tile(10 + i), gallery_image=lambda j: tile(100 + j),
                                path=tmp_path / "gallery.png", num_queries=2, k=4, thumb_size=48, title="t")
    pixels = assert_png(path)
    assert len(rows_drawn) == 2
    for row in rows_drawn:
        q = 0 if row.query.caption == "land" else 1
        results = expected[q]
        assert [int(item.image[0, 0, 0]) - 100 for item in row.results] == results
        assert [item.correct for item in row.results] == [int(gallery_labels[j]) == q for j in results]
        assert row.results[0].caption.startswith("#1 ")
    layout = GalleryLayout(thumb_size=48, columns=5, rows=2, caption_lines=2, font_size=10, has_title=True)
    assert pixels.shape[1::-1] == layout.size
    for r, row in enumerate(rows_drawn):
        assert border_colour(pixels, layout, r, 0) == QUERY_COLOUR
        for c, item in enumerate(row.results, start=1):
            assert border_colour(pixels, layout, r, c) == (CORRECT_COLOUR if item.correct else INCORRECT_COLOUR)
