"""An image archive on disk: list its images and encode them in batches.

An archive is any folder tree; its images are the files whose extension is one of
``dmlrs.data.scan.IMAGE_EXTENSIONS`` (jpg, jpeg, png, tif, tiff, bmp, webp; any case). Hidden
files and folders (names starting with ``.``) are left out, symbolic links to folders are
followed (each real folder once, so a link back to a parent cannot loop), and a folder given as ``exclude`` (the output folder, when it lies inside the archive)
is skipped. Each image is known by its path relative to the archive root (POSIX separators),
its size and its modification time in nanoseconds; the archive's order is the sorted relative
paths (rankings break ties by it).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from dmlrs.data.images import UnreadableImageError, load_rgb
from dmlrs.data.scan import IMAGE_EXTENSIONS
from dmlrs.errors import DmlrsError


@dataclass(frozen=True)
class ArchiveFile:
    relpath: str  # relative to the archive root, POSIX separators
    size: int
    mtime_ns: int


def list_archive(root: str | Path, *, exclude: str | Path | None = None) -> list[ArchiveFile]:
    """Every image under ``root``, sorted by relative path (see the module doc)."""
    root = Path(root)
    if not root.exists():
        raise DmlrsError(f"--archive {root}: folder not found; pass the folder that holds the images to search")
    if not root.is_dir():
        raise DmlrsError(f"--archive {root} is a file, not a folder; pass the folder that holds the images")
    excluded = None if exclude is None else Path(exclude).resolve()
    found, seen = [], {root.resolve()}
    # symlinked folders are followed (archives are often assembled from links), each real folder once
    for folder, subfolders, names in os.walk(root, followlinks=True):
        kept = []
        for name in sorted(subfolders):
            real = (Path(folder) / name).resolve()
            if name.startswith(".") or real == excluded or real in seen:
                continue
            seen.add(real)
            kept.append(name)
        subfolders[:] = kept
        for name in names:
            if name.startswith(".") or Path(name).suffix.lower() not in IMAGE_EXTENSIONS:
                continue
            path = Path(folder) / name
            try:
                stat = path.stat()
            except OSError:  # vanished or a dangling link: not part of the archive
                continue
            relpath = PurePosixPath(*path.relative_to(root).parts).as_posix()
            found.append(ArchiveFile(relpath, stat.st_size, stat.st_mtime_ns))
    if not found:
        raise DmlrsError(f"--archive {root} holds no images ({', '.join(sorted(e[1:] for e in IMAGE_EXTENSIONS))}, "
                         "in any sub-folder); pass the folder that holds the images to search")
    return sorted(found, key=lambda f: f.relpath)


class _ImageFiles(Dataset):
    """``(position, image tensor or None, reason or None)`` for each file; never raises for a bad image."""

    def __init__(self, paths: Sequence[Path], transform: Callable):
        self.paths = list(paths)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, position: int):
        try:
            return position, self.transform(load_rgb(self.paths[position])), None
        except UnreadableImageError as exc:
            return position, None, exc.reason or str(exc)


def _collate(samples):
    good = [(p, image) for p, image, _ in samples if image is not None]
    bad = [(p, reason) for p, image, reason in samples if image is None]
    images = torch.stack([image for _, image in good]) if good else None
    return [p for p, _ in good], images, bad


def encode_batches(encode: Callable[[torch.Tensor], np.ndarray], transform: Callable, paths: Sequence[Path], *,
                   batch_size: int, workers: int, progress: bool, desc: str = "indexing"
                   ) -> Iterator[tuple[dict[int, np.ndarray], dict[int, str]]]:
    """Encode the images at ``paths`` with ``encode`` (a batch of transformed images -> one row
    per image), in order. Yields per batch ``({position: row}, {position: reason})``: rows for
    the readable images, reasons for the unreadable ones (skipped), so a caller can keep what is
    done when it stops part-way. A progress bar counts images."""
    from tqdm import tqdm

    if not paths:
        return
    loader = DataLoader(_ImageFiles(paths, transform), batch_size=batch_size, shuffle=False,
                        num_workers=min(workers, len(paths)), collate_fn=_collate)
    with tqdm(total=len(paths), desc=desc, unit="img", disable=not progress, leave=False) as bar:
        for positions, images, bad in loader:
            rows = dict(zip(positions, encode(images))) if images is not None else {}
            bar.update(len(positions) + len(bad))
            yield rows, dict(bad)
