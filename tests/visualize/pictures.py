"""Shared checks for the picture tests: a PNG that exists, decodes and has a sane size."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

MIN_SIDE, MAX_SIDE = 200, 5000


def assert_png(path: str | Path) -> np.ndarray:
    """The RGB pixels of ``path`` after checking it is a decodable PNG with both sides in [200, 5000]."""
    path = Path(path)
    assert path.is_file(), f"missing {path}"
    with Image.open(path) as image:
        assert image.format == "PNG", path
        image.load()  # decodes every pixel: a truncated file fails here
        width, height = image.size
        pixels = np.asarray(image.convert("RGB"))
    assert MIN_SIDE <= width <= MAX_SIDE and MIN_SIDE <= height <= MAX_SIDE, (path, width, height)
    assert pixels.std() > 0, f"{path} is blank"
    return pixels
