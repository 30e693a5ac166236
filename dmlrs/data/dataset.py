"""One generic dataset for every scene source (image folders and the synthetic demo).

``SceneDataset(root, items, transform)[i]`` returns
``{"image": Tensor (3, s, s), "label": int, "index": i}`` and, when ``clean_labels`` are
given (label noise on), ``"clean_label": int`` too.  ``index`` is the position in THIS split
(0..len-1): the per-sample memory bank is indexed by it.  Images are read lazily by
``loader(root / relpath)`` (``loader(relpath)`` when ``root`` is None, e.g. the demo).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

from torch.utils.data import Dataset

from dmlrs.data.images import load_rgb
from dmlrs.errors import DmlrsError


class SceneDataset(Dataset):
    """Scenes listed as ``(relpath, label)`` under ``root``, read with ``loader``, mapped by ``transform``.

    ``labels`` overrides the labels used for training (e.g. noisy labels, or -1 for an
    unlabelled pool); ``clean_labels`` are the true labels kept alongside (reported as
    ``"clean_label"``).  Both must have one entry per item.
    """

    def __init__(self, root: str | Path | None, items: Sequence[Sequence], transform: Callable | None, *,
                 labels: Sequence[int] | None = None, clean_labels: Sequence[int] | None = None,
                 loader: Callable = load_rgb):
        self.root = None if root is None else Path(root)
        self.items = [(str(relpath), int(label)) for relpath, label in items]
        self.transform = transform
        self.loader = loader
        self.labels = [int(v) for v in labels] if labels is not None else [lab for _, lab in self.items]
        self.clean_labels = None if clean_labels is None else [int(v) for v in clean_labels]
        for name, values in (("labels", self.labels), ("clean_labels", self.clean_labels)):
            if values is not None and len(values) != len(self.items):
                raise DmlrsError(f"SceneDataset: {name} has {len(values)} entries for {len(self.items)} items")

    def __len__(self) -> int:
        return len(self.items)

    def path(self, i: int) -> str | Path:
        """What the loader reads for item ``i``: ``root / relpath``, or ``relpath`` without a root."""
        relpath = self.items[i][0]
        return relpath if self.root is None else self.root / relpath

    def __getitem__(self, i: int) -> dict:
        i = int(i)  # samplers may yield numpy integers; "index" must be a plain int
        if not 0 <= i < len(self.items):
            raise IndexError(f"index {i} out of range for a split of {len(self.items)} images")
        image = self.loader(self.path(i))
        if self.transform is not None:
            image = self.transform(image)
        sample = {"image": image, "label": self.labels[i], "index": i}
        if self.clean_labels is not None:
            sample["clean_label"] = self.clean_labels[i]
        return sample

    def __repr__(self) -> str:
        return f"SceneDataset(root={self.root}, n={len(self)}, loader={getattr(self.loader, '__name__', self.loader)})"
