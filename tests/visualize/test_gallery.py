"""save_gallery: a PNG that decodes, whose size follows rows and k, with the right border colours."""
import numpy as np
import pytest
import torch
from PIL import Image

from dmlrs.errors import DmlrsError
from dmlrs.visualize import GalleryItem, GalleryLayout, GalleryRow, save_gallery
from dmlrs.visualize.gallery import BACKGROUND, CORRECT_COLOUR, INCORRECT_COLOUR, QUERY_COLOUR


def _grey(value: int) -> np.ndarray:
    return np.full((20, 30, 3), value, dtype=np.uint8)


def _rows(num_rows: int, k: int, correct=(True, False, None)) -> list[GalleryRow]:
    return [GalleryRow(GalleryItem(_grey(40), "forest"),
                       [GalleryItem(_grey(100 + 10 * i), f"#{i + 1} forest\n0.9{i}", correct[i % len(correct)])
                        for i in range(k)])
            for _ in range(num_rows)]


def _pixels(path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB"))


def test_size_grows_by_one_cell_per_result_and_one_row_height_per_query(tmp_path):
    sizes = {}
    for rows, k in ((1, 3), (2, 3), (1, 5)):
        pixels = _pixels(save_gallery(_rows(rows, k), tmp_path / f"{rows}_{k}.png", thumb_size=40))
        sizes[rows, k] = pixels.shape[1], pixels.shape[0]  # (width, height)
    layout = GalleryLayout.for_rows(_rows(1, 3), 40)
    assert (layout.columns, layout.rows, layout.caption_lines) == (4, 1, 2)  # query: "query", "forest"
    assert sizes[1, 3] == layout.size
    width_step = layout.cell + layout.spacing
    assert sizes[1, 5] == (sizes[1, 3][0] + 2 * width_step, sizes[1, 3][1])
    assert sizes[2, 3] == (sizes[1, 3][0], sizes[1, 3][1] + layout.row_height + layout.spacing)


def test_borders_are_blue_for_the_query_green_red_or_absent_for_results(tmp_path):
    rows = _rows(2, 3)
    path = save_gallery(rows, tmp_path / "g.png", thumb_size=48, title="a title")
    pixels = _pixels(path)
    layout = GalleryLayout.for_rows(rows, 48, "a title")
    assert pixels.shape[:2] == layout.size[::-1]
    expected = {0: QUERY_COLOUR, 1: CORRECT_COLOUR, 2: INCORRECT_COLOUR, 3: BACKGROUND}
    for row in range(2):
        for column, colour in expected.items():
            x, y = layout.cell_origin(row, column)
            middle = layout.cell // 2
            # the middle of each side of the border, and the thumbnail inside it
            for px, py in ((x + 1, y + middle), (x + layout.cell - 2, y + middle),
                           (x + middle, y + 1), (x + middle, y + layout.cell - 2)):
                assert tuple(pixels[py, px]) == colour, (row, column, px, py)
            inner = tuple(pixels[y + middle, x + middle])
            grey = 40 if column == 0 else 100 + 10 * (column - 1)
            assert inner == (grey, grey, grey)


def test_accepts_files_pil_images_and_uint8_tensors(tmp_path):
    Image.fromarray(_grey(70)).save(tmp_path / "a.png")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    tensor = torch.full((3, 10, 10), 200, dtype=torch.uint8)
    rows = [GalleryRow(GalleryItem(tmp_path / "a.png"),
                       [GalleryItem(str(tmp_path / "a.png"), "file", True), GalleryItem(Image.new("L", (8, 8), 9)),
                        GalleryItem(tensor, "tensor", False), GalleryItem(tmp_path / "broken.png", "placeholder")])]
    pixels = _pixels(save_gallery(rows, tmp_path / "g.png", thumb_size=32))
    layout = GalleryLayout.for_rows(rows, 32)
    x, y = layout.cell_origin(0, 3)
    assert tuple(pixels[y + layout.cell // 2, x + layout.cell // 2]) == (200, 200, 200)
    assert not list(tmp_path.glob(".*.tmp"))  # the atomic write left no temporary file


@pytest.mark.parametrize("bad", [np.zeros((4, 4, 3), np.float32), torch.zeros(3, 4, 4), 42])
def test_bad_images_and_empty_galleries_are_one_clear_error(tmp_path, bad):
    with pytest.raises(DmlrsError, match="save_gallery"):
        save_gallery([GalleryRow(GalleryItem(bad), [])], tmp_path / "g.png")
    with pytest.raises(DmlrsError, match="no rows"):
        save_gallery([], tmp_path / "g.png")
    assert not (tmp_path / "g.png").exists()
