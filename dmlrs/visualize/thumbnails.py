"""Un-augmented images of a split as small uint8 thumbnails, whatever the input pipeline.

A :class:`~dmlrs.data.dataset.SceneDataset` reads item ``i`` with ``loader(path(i))``: the cached
pipeline's loader returns the resized uint8 tensor ``(3, s, s)`` from the decoded-image cache,
the PIL pipeline's loader decodes the file (``load_rgb``), the demo's generates the scene. The
dataset's transform (normalisation, augmentation) is not applied, so the picture shows the
image as it is. An image that cannot be read becomes a grey square (a picture never stops a run).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from tqdm.auto import tqdm

#: grey of the placeholder drawn for an image that cannot be read
PLACEHOLDER_GREY = 128


def to_uint8_rgb(image) -> np.ndarray:
    """A loaded image as uint8 (H, W, 3): a PIL image, a torch tensor (3, H, W) (the cache's
    layout) or a numpy array (H, W, 3) / (H, W)."""
    if hasattr(image, "convert"):  # PIL
        return np.asarray(image.convert("RGB"), dtype=np.uint8)
    if hasattr(image, "numpy"):  # torch: channels first
        array = image.detach().cpu().numpy()
        array = array.transpose(1, 2, 0) if array.ndim == 3 else array
    else:
        array = np.asarray(image)
    if array.ndim == 2:
        array = array[:, :, None]
    if array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    if array.dtype != np.uint8:
        array = np.clip(np.rint(array.astype(np.float64)), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(array[:, :, :3])


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
    """uint8 (H, W, 3) -> uint8 (size, size, 3) (bilinear, PIL)."""
    from PIL import Image

    if image.shape[0] == size and image.shape[1] == size:
        return image
    return np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR), dtype=np.uint8)


def load_thumbnail(dataset, index: int, size: int | None = None) -> np.ndarray:
    """Item ``index`` of ``dataset`` as uint8 (H, W, 3), resized to ``size`` x ``size`` when given;
    a grey placeholder when it cannot be read."""
    try:
        image = to_uint8_rgb(dataset.loader(dataset.path(int(index))))
    except Exception:  # noqa: BLE001 - an unreadable image is drawn grey, never stops the pictures
        side = size or getattr(dataset, "image_size", None) or 64
        return np.full((side, side, 3), PLACEHOLDER_GREY, dtype=np.uint8)
    return image if size is None else resize_square(image, size)


def load_thumbnails(dataset, indices: Sequence[int], size: int, *, progress: bool = False,
                    desc: str = "thumbnails") -> np.ndarray:
    """uint8 (N, size, size, 3) thumbnails of the given items (a bar with ``progress``)."""
    indices = list(indices)
    out = np.empty((len(indices), size, size, 3), dtype=np.uint8)
    for row, index in enumerate(tqdm(indices, desc=desc, leave=False, disable=not progress)):
        out[row] = load_thumbnail(dataset, index, size)
    return out
