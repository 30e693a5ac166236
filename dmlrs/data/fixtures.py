"""Tiny fake scene datasets for tests (torchgeo style): real files, generated in milliseconds.

Each image is ``size x size`` RGB: a class tint (a distinct hue per class) blended 60/40 with
per-pixel random colour, so a network can tell classes apart but no two images are equal.
Everything is seeded: the same arguments write the same bytes.

    data = write_fake_dataset(tmp_path, "UCMD", layout="official", per_class=2)
    index = scan_dataset("UCMD", data)
"""
from __future__ import annotations

import colorsys
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from dmlrs.data.specs import get_spec
from dmlrs.errors import DmlrsError

LAYOUTS = ("official", "named", "direct")
_TINT_WEIGHT = 0.6


def class_tint(label: int, n_classes: int) -> np.ndarray:
    """RGB colour in [0, 255] of class ``label``: hue ``label / n_classes``, full saturation."""
    red, green, blue = colorsys.hsv_to_rgb(label / max(n_classes, 1), 1.0, 1.0)
    return np.array([red, green, blue]) * 255.0


def fake_scene(label: int, n_classes: int, size: int, rng: np.random.Generator) -> Image.Image:
    """One ``size x size`` RGB image: 0.6 * class tint + 0.4 * uniform random pixels."""
    noise = rng.uniform(0.0, 255.0, size=(size, size, 3))  # (H, W, 3)
    pixels = _TINT_WEIGHT * class_tint(label, n_classes) + (1.0 - _TINT_WEIGHT) * noise
    return Image.fromarray(np.rint(pixels).astype(np.uint8), mode="RGB")


def write_image_folder(
    root: str | Path,
    images_per_class: Mapping[str, int],
    *,
    size: int = 16,
    ext: str = ".png",
    seed: int = 0,
) -> Path:
    """Write ``<root>/<class>/<class>_<i>.<ext>`` for each class; returns ``root``.

    The tint of a class is set by its position in ``images_per_class``. Image ``i`` of class
    ``label`` is drawn from ``np.random.default_rng([seed, label, i])``.
    """
    root = Path(root)
    n_classes = len(images_per_class)
    for label, (name, count) in enumerate(images_per_class.items()):
        _write_class(root / name, label, n_classes, count, size=size, ext=ext, seed=seed)
    return root


def _write_class(folder: Path, label: int, n_classes: int, count: int, *, size: int, ext: str, seed: int) -> None:
    """Write ``count`` images ``<folder>/<folder name>_<i>.<ext>``, image i seeded by (seed, label, i)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        image = fake_scene(label, n_classes, size, np.random.default_rng([seed, label, i]))
        image.save(folder / f"{folder.name.lower()}_{i:03d}{ext}")


def write_fake_dataset(
    root: str | Path,
    dataset: str,
    *,
    layout: str = "official",
    classes: Sequence[str] | None = None,
    per_class: int | Mapping[str, int] = 3,
    size: int = 16,
    ext: str | None = None,
    seed: int = 0,
) -> Path:
    """Write a tiny copy of a known dataset and return the path to pass as ``--data``.

    ``layout``: ``"official"`` puts the class folders where the official archive does
    (``<root>/UCMerced_LandUse/Images/<class>/``), ``"named"`` under ``<root>/<canonical name>/``
    and ``"direct"`` in ``root`` itself. ``classes`` defaults to all official classes;
    ``per_class`` is one count for every class or a ``{class: count}`` mapping (whose keys are
    the classes when ``classes`` is not given); ``ext`` defaults
    to the official extension (``.tif`` for UCMD, ``.jpg`` otherwise). Tints follow the official
    class order, so a class looks the same whichever subset is written.
    """
    spec = get_spec(dataset)
    if spec is None:
        raise DmlrsError(f"write_fake_dataset: unknown dataset '{dataset}'")
    if layout not in LAYOUTS:
        raise DmlrsError(f"write_fake_dataset: layout must be one of {', '.join(LAYOUTS)}, not '{layout}'")
    root = Path(root)
    class_root = {"official": root / spec.archive_layout, "named": root / spec.name, "direct": root}[layout]
    if isinstance(per_class, Mapping):
        counts = {name: per_class[name] for name in (per_class if classes is None else classes)}
    else:
        counts = {name: per_class for name in (spec.classes if classes is None else classes)}
    n_classes = len(spec.classes)
    for name, count in counts.items():
        label = spec.classes.index(name) if name in spec.classes else n_classes  # extra folder: grey-ish
        _write_class(class_root / name, label, n_classes, count, size=size,
                     ext=spec.extension if ext is None else ext, seed=seed)
    return root


def truncate_file(path: str | Path, keep: float = 0.5) -> Path:
    """Rewrite ``path`` with only its first ``keep`` fraction of bytes (a download cut short).

    A JPEG of 48 x 48 pixels or more keeps its header at half its bytes: it opens, but decoding
    fails ("image file is truncated").
    """
    path = Path(path)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path
