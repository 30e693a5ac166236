"""Matplotlib figures without pyplot: a figure bound to the Agg canvas, saved as PNG.

Nothing here touches matplotlib's global backend or pyplot's figure registry, so making
pictures at the end of a run cannot open windows, leak figures or disturb a user's session.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

#: dots per inch of every saved figure (a 8 x 5 inch figure is 1000 x 625 px)
DPI = 125


def new_figure(width: float, height: float):
    """A matplotlib ``Figure`` of ``width x height`` inches drawn by the Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(figure)
    return figure


def save_figure(figure, path: str | Path) -> Path:
    """Write ``figure`` to ``path`` as PNG (parent folders created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", dpi=DPI, bbox_inches="tight")
    return path


def read_png(path: str | Path) -> np.ndarray:
    """The RGB pixels of a PNG file: uint8 (H, W, 3) (what TensorBoard's ``add_image`` takes)."""
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def class_colours(num_classes: int) -> list:
    """One distinguishable colour per class (tab10 / tab20, then hsv for more than 20)."""
    from matplotlib import colormaps

    if num_classes <= 10:
        table = colormaps["tab10"]
        return [table(i) for i in range(num_classes)]
    if num_classes <= 20:
        table = colormaps["tab20"]
        return [table(i) for i in range(num_classes)]
    table = colormaps["hsv"]
    return [table(i / num_classes) for i in range(num_classes)]
