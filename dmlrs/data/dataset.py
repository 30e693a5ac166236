"""One generic dataset for every scene source (image folders and the synthetic demo).

``SceneDataset(root, items, transform)[i]`` returns
``{"image": Tensor (3, s, s), "label": int, "index": i}`` and, when ``clean_labels`` are
given (label noise on), ``"clean_label": int`` too.  A transform may return a dict holding
``"image"`` and further entries, which join the sample (the cached pipeline's training
transform adds ``"augment"``, the image's augmentation parameters; see
:mod:`dmlrs.data.gpu_augment`).  With the cached pipeline the loader returns the cached uint8
``(3, s, s)`` tensor (:class:`dmlrs.data.image_cache.CachedImages`).  ``index`` is the position in THIS split
(0..len-1): the per-sample memory bank is indexed by it.  Images are read lazily by
``loader(root / relpath)`` (``loader(relpath)`` when ``root`` is None, e.g. the demo).

An image that cannot be read raises :class:`~dmlrs.data.images.UnreadableImageError` (a
``DmlrsError``) naming the file and the command that lists every bad file; it stays a
``DmlrsError`` with the same one-line message when raised in a DataLoader worker.  With
``skip_corrupt=True`` it is replaced instead by the next readable image *of the same class*
(the item's folder class, ``items[i][1]``) in this dataset's order, wrapping around; the sample
keeps its own ``index``, ``label`` and ``clean_label`` and gets ``"replaced": True``
(``"replaced"`` is in every sample then, ``False`` for normal ones, so batches collate).  When
every image of the class is unreadable, the error is raised.
"""
from __future__ import annotations

import logging
from pathlib import Path, PurePosixPath
from typing import Callable, Sequence

from torch.utils.data import Dataset

from dmlrs.data.images import PIL_READ_ERRORS, UnreadableImageError, describe_read_error, load_rgb
from dmlrs.errors import DmlrsError

logger = logging.getLogger(__name__)
_CHECK_COMMAND = "python -m dmlrs.data --dataset ... --data ..."


class SceneDataset(Dataset):
    """Scenes listed as ``(relpath, label)`` under ``root``, read with ``loader``, mapped by ``transform``.

    ``labels`` overrides the labels used for training (e.g. noisy labels, or -1 for an
    unlabelled pool); ``clean_labels`` are the true labels kept alongside (reported as
    ``"clean_label"``).  Both must have one entry per item.  ``skip_corrupt``: replace an
    unreadable image (module doc).  ``check_command``: the ``python -m dmlrs.data ...`` command
    named in errors (the dataset's own flags).
    """

    def __init__(self, root: str | Path | None, items: Sequence[Sequence], transform: Callable | None, *,
                 labels: Sequence[int] | None = None, clean_labels: Sequence[int] | None = None,
                 loader: Callable = load_rgb, skip_corrupt: bool = False, check_command: str | None = None):
        self.root = None if root is None else Path(root)
        self.items = [(str(relpath), int(label)) for relpath, label in items]
        self.transform = transform
        self.loader = loader
        self.skip_corrupt = bool(skip_corrupt)
        self.check_command = check_command or _CHECK_COMMAND
        self.labels = [int(v) for v in labels] if labels is not None else [lab for _, lab in self.items]
        self.clean_labels = None if clean_labels is None else [int(v) for v in clean_labels]
        for name, values in (("labels", self.labels), ("clean_labels", self.clean_labels)):
            if values is not None and len(values) != len(self.items):
                raise DmlrsError(f"SceneDataset: {name} has {len(values)} entries for {len(self.items)} items")
        self._unreadable: dict[int, str] = {}  # item -> reason, found by this process (each worker has its own)
        self._by_class: dict[int, list[int]] | None = None  # class -> its items in order, built when needed
        self._warned: set[int] = set()

    def __len__(self) -> int:
        return len(self.items)

    def path(self, i: int) -> str | Path:
        """What the loader reads for item ``i``: ``root / relpath``, or ``relpath`` without a root."""
        relpath = self.items[i][0]
        return relpath if self.root is None else self.root / relpath

    def _read(self, i: int):
        """The loaded image of item ``i``, or ``None`` (reason remembered) when it cannot be read."""
        if i in self._unreadable:
            return None
        try:
            return self.loader(self.path(i))
        except UnreadableImageError as exc:
            self._unreadable[i] = exc.reason or str(exc)
        except DmlrsError as exc:
            self._unreadable[i] = str(exc)
        except PIL_READ_ERRORS as exc:  # a custom loader that does not wrap Pillow's errors
            self._unreadable[i] = describe_read_error(exc)
        return None

    def _error(self, i: int, detail: str = "") -> UnreadableImageError:
        path, reason = self.path(i), self._unreadable[i]
        if self.skip_corrupt:
            what_to_do = (f"Restore the class's files from the archive; {self.check_command} lists every "
                          f"unreadable image")
        else:
            what_to_do = (f"Restore the file from the archive, or rerun with --skip-corrupt (with --resume too) "
                          f"to replace each unreadable image by another image of its class; "
                          f"{self.check_command} lists every unreadable image")
        return UnreadableImageError(f"cannot read image {path} ({reason}){detail}. {what_to_do}.",
                                    path=path, reason=reason)

    def _replacement(self, i: int):
        """(image, item) of the next readable item of item ``i``'s class, in order, wrapping around."""
        if self._by_class is None:
            self._by_class = {}
            for j, (_, label) in enumerate(self.items):
                self._by_class.setdefault(label, []).append(j)
        label = self.items[i][1]
        same = self._by_class[label]
        at = same.index(i)
        for j in same[at + 1:] + same[:at]:
            image = self._read(j)
            if image is not None:
                return image, j
        folder = PurePosixPath(self.items[i][0]).parent
        raise self._error(i, f"; no image of its class ({folder}/, label {label}) in this split is readable "
                             f"({len(same)} tried)")

    def __getitem__(self, i: int) -> dict:
        i = int(i)  # samplers may yield numpy integers; "index" must be a plain int
        if not 0 <= i < len(self.items):
            raise IndexError(f"index {i} out of range for a split of {len(self.items)} images")
        image = self._read(i)
        replaced = image is None
        if replaced:
            if not self.skip_corrupt:
                raise self._error(i)
            image, j = self._replacement(i)
            if i not in self._warned:
                self._warned.add(i)
                logger.warning("--skip-corrupt: unreadable image %s (%s) replaced by %s of the same class",
                               self.path(i), self._unreadable[i], self.path(j))
        extra = {}
        if self.transform is not None:
            image = self.transform(image)
            if isinstance(image, dict):  # e.g. the cached pipeline: the image and its augmentation parameters
                extra = dict(image)
                image = extra.pop("image")
        sample = {"image": image, **extra, "label": self.labels[i], "index": i}
        if self.clean_labels is not None:
            sample["clean_label"] = self.clean_labels[i]
        if self.skip_corrupt:
            sample["replaced"] = replaced
        return sample

    def __repr__(self) -> str:
        return f"SceneDataset(root={self.root}, n={len(self)}, loader={getattr(self.loader, '__name__', self.loader)})"
