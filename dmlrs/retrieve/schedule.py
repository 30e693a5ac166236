"""When the archive index is written while it is being embedded (:class:`SaveSchedule`).

A first indexing of a large archive can take hours; writing the index part-way means a kill
loses at most the images since the last write. Each write rewrites the whole file, so the
intervals grow with the index: the cost of writing stays a small share of the embedding time.
"""
from __future__ import annotations

import time
from typing import Callable

#: defaults: write after this many newly embedded images, or after this many seconds
DEFAULT_SAVE_EVERY_IMAGES = 2000
DEFAULT_SAVE_EVERY_SECONDS = 60.0


class SaveSchedule:
    """Write after ``every_images`` new images (or a tenth of the index's rows, when that is more)
    or after ``every_seconds`` (or ten times the last write's duration, when that is longer),
    whichever comes first. ``every_images=0``: never part-way (only at the end and on Ctrl-C)."""

    def __init__(self, every_images: int = DEFAULT_SAVE_EVERY_IMAGES,
                 every_seconds: float = DEFAULT_SAVE_EVERY_SECONDS, clock: Callable[[], float] = time.monotonic):
        self.every_images, self.every_seconds, self.clock = every_images, every_seconds, clock
        self.writes = 0
        self._since_images, self._last, self._took = 0, clock(), 0.0

    def due(self, images: int, index_rows: int) -> bool:
        """Count ``images`` more done; True when the index (``index_rows`` rows now) should be written."""
        self._since_images += images
        if self.every_images <= 0:
            return False
        elapsed = self.clock() - self._last
        return (self._since_images >= max(self.every_images, index_rows // 10)
                or elapsed >= max(self.every_seconds, 10 * self._took))

    def write(self, write: Callable[[], None]) -> None:
        """Call ``write`` (which writes the index) and restart the counts."""
        started = self.clock()
        write()
        self._last = self.clock()
        self._since_images, self._took = 0, self._last - started
        self.writes += 1
