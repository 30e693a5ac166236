"""Reading scene images: always 8-bit RGB, or a ``DmlrsError`` that names the file.

Mode conversions done by :func:`to_rgb` (all deterministic, no randomness, no compositing):

- ``RGB``: unchanged (a copy).
- ``L``/``1``: the grey value is repeated in R, G and B.
- ``P``/``PA``: palette lookup; palette transparency is ignored.
- ``RGBA``/``LA``/``RGBa``: the alpha channel is dropped; colours are kept as stored (not
  blended onto a background, so the result does not depend on a chosen background colour).
- ``I;16``/``I;16L``/``I;16B``/``I;16N`` (16-bit) and ``I`` (32-bit integers, treated as
  16-bit data): ``v8 = clip(v, 0, 65535) >> 8``, i.e. the high byte, then grey -> RGB.
  (Pillow's own ``convert`` would clip every value above 255 to white.)
- ``CMYK``, ``YCbCr``, ``LAB``, ``HSV``, ``F``: Pillow's ``convert("RGB")``.

Safe in DataLoader workers: no module state, every file is opened and closed inside the call
(nothing shared across ``fork``), and the returned image holds no file handle.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from dmlrs.errors import DmlrsError

# Pillow plugins report broken files with several exception types.
PIL_READ_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_ALPHA_MODES = ("RGBA", "LA", "RGBa", "La")


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert a decoded image of any supported mode to 8-bit RGB (rules in the module doc)."""
    if image.mode in _SIXTEEN_BIT_MODES:
        values = np.asarray(image).astype(np.int64)  # (H, W), 16- or 32-bit integers
        high_byte = (np.clip(values, 0, 65535) >> 8).astype(np.uint8)
        return Image.fromarray(high_byte, mode="L").convert("RGB")
    if image.mode in _ALPHA_MODES:
        colour_mode = "RGB" if image.mode.startswith("RGB") else "L"
        colours = Image.merge(colour_mode, image.split()[:-1])  # drop the alpha band
        return colours.convert("RGB")
    return image.convert("RGB")


def describe_read_error(exc: BaseException) -> str:
    """A short reason for a failed read, e.g. ``OSError: image file is truncated``."""
    return f"{type(exc).__name__}: {exc}".rstrip(": ")


class UnreadableImageError(DmlrsError):
    """An image file that cannot be read or decoded (a ``DmlrsError``: one message naming the file).

    ``path`` and ``reason`` say which file and why (``None`` when the error was re-raised by a
    DataLoader worker, see below).  Raised in a DataLoader worker, torch re-raises it in the main
    process as ``UnreadableImageError(<"Caught ... Original Traceback ..." text>)``: the
    constructor recognises that text and keeps only the original one-line message, so the main
    process still gets an ``UnreadableImageError`` -- a ``DmlrsError`` -- whose ``str`` is the
    clean message.
    """

    def __init__(self, message: str, path: str | Path | None = None, reason: str | None = None):
        super().__init__(message)
        self.path = None if path is None else str(path)
        self.reason = reason


def load_rgb(path: str | Path) -> Image.Image:
    """Decode the whole image file at ``path`` and return it as an 8-bit RGB PIL image.

    Raises :class:`UnreadableImageError` (a ``DmlrsError``) naming the file for a missing,
    unreadable or truncated file, with the command that lists every bad file of the dataset.
    """
    try:
        with Image.open(path) as image:
            image.load()  # full decode: catches truncated files, not only broken headers
            return to_rgb(image)
    except PIL_READ_ERRORS as exc:
        reason = describe_read_error(exc)
        raise UnreadableImageError(
            f"cannot read image {path} ({reason}). Replace the file, or check the whole dataset "
            f"and leave bad files out: python -m dmlrs.data --dataset ... --data ... --skip-corrupt",
            path=path, reason=reason,
        ) from exc
