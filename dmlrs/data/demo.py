"""``--dataset demo``: a synthetic scene dataset generated on the fly (no files).

10 classes x 60 images, 64 x 64 RGB by default.  Each class is a procedural texture (stripe
orientation, checkerboard, rings, dot grid, blob density, gradient, speckle) painted with a
two-colour palette.  Palettes are shared by PAIRS of classes, so colour alone cannot separate
a pair: a model has to learn the texture.  Every image gets its own random phase, frequency,
centre, contrast, brightness and pixel noise, drawn from an RNG seeded by (class, index), so
the same item has the same pixels in every process and DataLoader worker.

An item's identity is a relative "path" ``demo/<class>/<index>``, so splits, manifests and
:class:`~dmlrs.data.dataset.SceneDataset` work exactly as for image folders; the loader
:class:`DemoImageLoader` turns such a path into a PIL image.
"""
from __future__ import annotations

import colorsys
from pathlib import PurePath
from typing import Callable

import numpy as np
from PIL import Image

from dmlrs.errors import DmlrsError

DEMO_PER_CLASS = 60
DEMO_SIZE = 64
DEMO_ROOT = "demo"
_DEMO_SEED = 20240607  # fixed: the demo data never changes between runs or machines
_PALETTE_HUES = (0.0, 0.15, 0.33, 0.55, 0.75)  # one hue per pair of classes


def _stripes(angle: float) -> Callable:
    def pattern(x, y, rng):
        freq = rng.uniform(4.0, 6.5)
        a = angle + rng.normal(0.0, 0.06)
        return 0.5 + 0.5 * np.sin(2 * np.pi * freq * (x * np.cos(a) + y * np.sin(a)) + rng.uniform(0, 2 * np.pi))
    return pattern


def _checkerboard(x, y, rng):
    freq = rng.uniform(2.5, 4.0)
    phase = rng.uniform(0, 2 * np.pi, size=2)
    s = np.sin(2 * np.pi * freq * x + phase[0]) * np.sin(2 * np.pi * freq * y + phase[1])
    return 0.5 + 0.5 * np.tanh(4.0 * s)


def _rings(x, y, rng):
    cx, cy = rng.uniform(0.2, 0.8, size=2)
    r = np.hypot(x - cx, y - cy)
    return 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(5.0, 7.0) * r + rng.uniform(0, 2 * np.pi))


def _dot_grid(x, y, rng):
    freq = rng.uniform(5.0, 7.0)
    phase = rng.uniform(0, 2 * np.pi, size=2)
    bumps = (0.5 + 0.5 * np.cos(2 * np.pi * freq * x + phase[0])) * (0.5 + 0.5 * np.cos(2 * np.pi * freq * y + phase[1]))
    return bumps ** 3


def _blobs(count: tuple[int, int], sigma: tuple[float, float]) -> Callable:
    def pattern(x, y, rng):
        n = rng.integers(count[0], count[1] + 1)
        centres = rng.uniform(0.0, 1.0, size=(n, 2))
        widths = rng.uniform(sigma[0], sigma[1], size=n)
        field = np.zeros_like(x)
        for (cx, cy), w in zip(centres, widths):
            field = np.maximum(field, np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * w * w)))
        return field
    return pattern


def _gradient(x, y, rng):
    a = rng.uniform(0, 2 * np.pi)
    g = x * np.cos(a) + y * np.sin(a)
    return (g - g.min()) / max(float(g.max() - g.min()), 1e-6)


def _speckle(x, y, rng):
    return rng.random(x.shape)


# class name -> pattern; consecutive pairs share a palette hue
_PATTERNS: dict[str, Callable] = {
    "stripes_horizontal": _stripes(np.pi / 2),
    "stripes_vertical": _stripes(0.0),
    "stripes_diagonal": _stripes(np.pi / 4),
    "checkerboard": _checkerboard,
    "rings": _rings,
    "dot_grid": _dot_grid,
    "blobs_sparse": _blobs((2, 4), (0.07, 0.12)),
    "blobs_dense": _blobs((25, 40), (0.02, 0.04)),
    "smooth_gradient": _gradient,
    "fine_speckle": _speckle,
}
DEMO_CLASSES: list[str] = list(_PATTERNS)


def _palette(label: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Dark and light colour of the class's pair hue, jittered per image."""
    hue = (_PALETTE_HUES[label // 2] + rng.normal(0.0, 0.03)) % 1.0
    dark = colorsys.hsv_to_rgb(hue, rng.uniform(0.5, 0.9), rng.uniform(0.15, 0.35))
    light = colorsys.hsv_to_rgb((hue + 0.08) % 1.0, rng.uniform(0.2, 0.5), rng.uniform(0.75, 0.95))
    return np.asarray(dark), np.asarray(light)


def render_demo_image(class_name: str, index: int, size: int = DEMO_SIZE) -> Image.Image:
    """The demo image ``index`` of ``class_name`` as a (size x size) PIL RGB image (deterministic)."""
    if class_name not in _PATTERNS:
        raise DmlrsError(f"demo class {class_name!r} does not exist; demo classes: {', '.join(DEMO_CLASSES)}")
    label = DEMO_CLASSES.index(class_name)
    rng = np.random.default_rng([_DEMO_SEED, label, int(index)])
    coords = (np.arange(size, dtype=np.float64) + 0.5) / size
    x, y = np.meshgrid(coords, coords)  # (size, size) each; y runs down the rows
    pattern = _PATTERNS[class_name](x, y, rng)  # (size, size) in [0, 1]
    contrast = rng.uniform(0.6, 1.0)
    pattern = 0.5 + contrast * (pattern - 0.5)
    dark, light = _palette(label, rng)
    rgb = dark[None, None, :] + pattern[:, :, None] * (light - dark)[None, None, :]  # (size, size, 3)
    rgb = rgb + rng.uniform(-0.08, 0.08) + rng.normal(0.0, 0.06, size=rgb.shape)
    return Image.fromarray((np.clip(rgb, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8), mode="RGB")


def demo_relpath(class_name: str, index: int) -> str:
    return f"{DEMO_ROOT}/{class_name}/{index}"


def demo_samples(per_class: int = DEMO_PER_CLASS) -> list[tuple[str, int]]:
    """``(relpath, label)`` of every demo item, e.g. ``("demo/stripes_horizontal/0", 0)``."""
    return [(demo_relpath(c, i), label) for label, c in enumerate(DEMO_CLASSES) for i in range(per_class)]


class DemoImageLoader:
    """Loader for :class:`SceneDataset`: ``loader("demo/<class>/<i>") -> PIL image`` (picklable)."""

    def __init__(self, size: int = DEMO_SIZE):
        self.size = int(size)

    def __call__(self, path) -> Image.Image:
        parts = PurePath(str(path)).parts
        if len(parts) < 2 or not parts[-1].isdigit():
            raise DmlrsError(f"{path!r} is not a demo item; expected 'demo/<class>/<index>'")
        return render_demo_image(parts[-2], int(parts[-1]), self.size)

    def __repr__(self) -> str:
        return f"DemoImageLoader(size={self.size})"
