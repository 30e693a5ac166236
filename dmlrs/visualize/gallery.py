"""Retrieval gallery: a PNG grid with one row per query, the query then its top-k results.

Each thumbnail is ``thumb_size`` pixels square (the image scaled to fit, centred on white) inside
a thick border: blue for the query, green for a correct result (``correct=True``), red for an
incorrect one (``False``), none (white) when correctness is unknown (``None``). Under each
thumbnail its caption (lines split at ``\\n``, each shortened with ``...`` to the cell width);
the query's caption starts with the line ``query``. A vertical rule separates the query column
from the results. Drawn with Pillow only (no display, no matplotlib state) and written
atomically.

Geometry (all in pixels, ``T = thumb_size``): border ``b = max(3, round(T / 16))``, cell
``T + 2b`` square, spacing ``s = max(4, T // 14)`` between cells and rows, ``3 s`` between the
query and the first result, margin ``2 s``; :class:`GalleryLayout` computes every position, so
the picture is ``2 margin + (1 + K)(T + 2b) + (K - 1) s + 3 s`` wide for ``K`` results (the
longest row) and grows by one cell height plus caption per row.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

from dmlrs.atomic import atomic_open
from dmlrs.errors import DmlrsError

BACKGROUND = (255, 255, 255)
QUERY_COLOUR = (30, 90, 200)
CORRECT_COLOUR = (0, 160, 0)
INCORRECT_COLOUR = (215, 0, 0)
TEXT_COLOUR = (20, 20, 20)
RULE_COLOUR = (150, 150, 150)
PLACEHOLDER_COLOUR = (200, 200, 200)
MAX_CAPTION_LINES = 4
ELLIPSIS = "..."


@dataclass
class GalleryItem:
    """One thumbnail: ``image`` is a PIL image, an image file path, a uint8 ``(H, W, 3)`` (or
    ``(H, W)``) numpy array or a uint8 ``(3, H, W)`` torch tensor. ``correct``: green border
    (True), red (False), none (None)."""

    image: object
    caption: str = ""
    correct: bool | None = None


@dataclass
class GalleryRow:
    """A query and its ranked results (drawn left to right)."""

    query: GalleryItem
    results: list[GalleryItem] = field(default_factory=list)


@dataclass(frozen=True)
class GalleryLayout:
    """Where everything goes; ``column`` 0 is the query, 1..K the results."""

    thumb_size: int
    columns: int  # 1 + the longest row's number of results
    rows: int
    caption_lines: int
    font_size: int
    has_title: bool

    @property
    def border(self) -> int:
        return max(3, round(self.thumb_size / 16))

    @property
    def cell(self) -> int:
        return self.thumb_size + 2 * self.border

    @property
    def spacing(self) -> int:
        return max(4, self.thumb_size // 14)

    @property
    def query_gap(self) -> int:
        return 3 * self.spacing

    @property
    def margin(self) -> int:
        return 2 * self.spacing

    @property
    def line_height(self) -> int:
        return self.font_size + 3

    @property
    def caption_height(self) -> int:
        return self.caption_lines * self.line_height + self.spacing // 2

    @property
    def title_height(self) -> int:
        return (2 * self.font_size + self.spacing) if self.has_title else 0

    @property
    def row_height(self) -> int:
        return self.cell + self.caption_height

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the whole picture."""
        results = self.columns - 1
        width = 2 * self.margin + self.columns * self.cell + (self.query_gap if results else 0)
        width += max(results - 1, 0) * self.spacing
        height = 2 * self.margin + self.title_height + self.rows * self.row_height + (self.rows - 1) * self.spacing
        return width, height

    @classmethod
    def for_rows(cls, rows: Sequence[GalleryRow], thumb_size: int, title: str | None = None) -> "GalleryLayout":
        """The layout :func:`save_gallery` uses for ``rows``."""
        lines = max(len(_caption_lines(item, query=index == 0))
                    for row in rows for index, item in enumerate([row.query, *row.results]))
        return cls(thumb_size=thumb_size, columns=1 + max(len(row.results) for row in rows), rows=len(rows),
                   caption_lines=max(1, lines), font_size=max(10, thumb_size // 9), has_title=bool(title))

    def cell_origin(self, row: int, column: int) -> tuple[int, int]:
        """Top-left pixel of the bordered cell of ``(row, column)``."""
        x = self.margin
        if column > 0:
            x += self.cell + self.query_gap + (column - 1) * (self.cell + self.spacing)
        y = self.margin + self.title_height + row * (self.row_height + self.spacing)
        return x, y


def save_gallery(rows: Sequence[GalleryRow], path: str | Path, *, thumb_size: int = 112,
                 title: str | None = None) -> Path:
    """Draw ``rows`` (see the module doc) and write them to ``path`` as PNG, atomically."""
    rows = list(rows)
    if not rows:
        raise DmlrsError(f"save_gallery: no rows to draw into {path}")
    if isinstance(thumb_size, bool) or not isinstance(thumb_size, int) or thumb_size < 16:
        raise DmlrsError(f"save_gallery: thumb_size must be an integer >= 16, got {thumb_size!r}")
    layout = GalleryLayout.for_rows(rows, thumb_size, title)
    canvas = Image.new("RGB", layout.size, BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    font = _font(layout.font_size)
    if title:
        draw.text((layout.margin, layout.margin), _fit(draw, title, font, layout.size[0] - 2 * layout.margin),
                  fill=TEXT_COLOUR, font=font)
    for r, row in enumerate(rows):
        _draw_cell(canvas, draw, font, layout, r, 0, row.query, query=True)
        for c, item in enumerate(row.results, start=1):
            _draw_cell(canvas, draw, font, layout, r, c, item, query=False)
    if layout.columns > 1:  # the rule between the query column and the results
        x = layout.margin + layout.cell + layout.query_gap // 2
        top = layout.margin + layout.title_height
        draw.line([(x, top), (x, layout.size[1] - layout.margin)], fill=RULE_COLOUR, width=1)
    path = Path(path)
    with atomic_open(path, "wb") as handle:
        canvas.save(handle, format="PNG")
    return path


def _draw_cell(canvas: Image.Image, draw: ImageDraw.ImageDraw, font, layout: GalleryLayout, row: int,
               column: int, item: GalleryItem, *, query: bool) -> None:
    x, y = layout.cell_origin(row, column)
    colour = QUERY_COLOUR if query else {True: CORRECT_COLOUR, False: INCORRECT_COLOUR}.get(item.correct)
    if colour is not None:
        draw.rectangle([x, y, x + layout.cell - 1, y + layout.cell - 1], fill=colour)
    canvas.paste(_thumbnail(item.image, layout.thumb_size), (x + layout.border, y + layout.border))
    text_y = y + layout.cell + 2
    for line in _caption_lines(item, query=query)[:layout.caption_lines]:
        draw.text((x, text_y), _fit(draw, line, font, layout.cell), fill=TEXT_COLOUR, font=font)
        text_y += layout.line_height


def _caption_lines(item: GalleryItem, *, query: bool) -> list[str]:
    lines = [line for line in str(item.caption or "").split("\n") if line]
    return (["query", *lines] if query else lines)[:MAX_CAPTION_LINES]


def _font(size: int):
    """Pillow's bundled font at ``size`` (needs FreeType), else its fixed-size bitmap font."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):
        return ImageFont.load_default()


def _fit(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> str:
    """``text``, shortened with ``...`` until it is at most ``width`` pixels wide."""
    if draw.textlength(text, font=font) <= width:
        return text
    keep = len(text)
    while keep > 0 and draw.textlength(text[:keep] + ELLIPSIS, font=font) > width:
        keep -= 1
    return text[:keep] + ELLIPSIS


def _thumbnail(image, size: int) -> Image.Image:
    """``image`` scaled to fit ``size x size`` (aspect kept), centred on the background."""
    picture = _to_pil(image)
    fitted = ImageOps.contain(picture, (size, size), method=Image.Resampling.BICUBIC)
    tile = Image.new("RGB", (size, size), BACKGROUND)
    tile.paste(fitted, ((size - fitted.width) // 2, (size - fitted.height) // 2))
    return tile


def _to_pil(image) -> Image.Image:
    """An RGB PIL image from any accepted ``GalleryItem.image`` (an unreadable file: a grey
    placeholder with a cross, so one bad file does not cost the whole picture)."""
    from dmlrs.data.images import UnreadableImageError, load_rgb, to_rgb

    if isinstance(image, Image.Image):
        return to_rgb(image)
    if isinstance(image, (str, Path)):
        try:
            return load_rgb(image)
        except UnreadableImageError:
            return _placeholder()
    if type(image).__module__.split(".")[0] == "torch":
        if image.dtype.is_floating_point or image.dim() != 3 or image.shape[0] != 3:
            raise DmlrsError(f"save_gallery: a tensor image must be uint8 of shape (3, H, W), got "
                             f"{image.dtype} {tuple(image.shape)}")
        image = image.detach().permute(1, 2, 0).cpu().numpy()
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
            raise DmlrsError(f"save_gallery: an array image must be uint8 of shape (H, W, 3) or (H, W), got "
                             f"{image.dtype} {image.shape}")
        return Image.fromarray(np.ascontiguousarray(image)).convert("RGB")
    raise DmlrsError(f"save_gallery: cannot draw an image of type {type(image).__name__}; pass a PIL image, "
                     "a file path, a uint8 (H, W, 3) array or a uint8 (3, H, W) tensor")


def _placeholder(size: int = 64) -> Image.Image:
    tile = Image.new("RGB", (size, size), PLACEHOLDER_COLOUR)
    draw = ImageDraw.Draw(tile)
    draw.line([(0, 0), (size - 1, size - 1)], fill=RULE_COLOUR, width=2)
    draw.line([(0, size - 1), (size - 1, 0)], fill=RULE_COLOUR, width=2)
    return tile


__all__ = ["GalleryItem", "GalleryLayout", "GalleryRow", "save_gallery"]
