"""Decoded-image cache: every image of a run resized once, kept as uint8 in a memory-mapped file.

``--input-pipeline cached`` (the default of the training scripts) reads images from here instead
of decoding and resizing each one on every epoch.

**What is stored.** For each image of the split manifest (train, val and test together) the
output of the reference pipeline's ``Resize((s, s))`` -- the very transform object of
:func:`dmlrs.data.transforms.build_transforms`, applied to the image as the dataset's loader
reads it (:func:`dmlrs.data.images.load_rgb`, or the demo generator) -- as ``(3, s, s)`` uint8,
one row per image. The evaluation transform of a cached image is therefore bit-equal to the PIL
path's, and the training augmentation starts from the same pixels.

**Where.** ``<cache dir>/images/<dataset>-<s>px-<hash of the source>-<hash of the file list>.u8``
with the cache dir of :func:`dmlrs.data.verify.cache_dir` (``$DMLRS_CACHE``, else
``$XDG_CACHE_HOME/dmlrs``, else ``~/.cache/dmlrs``). The key is the set of files, not the whole
manifest: runs with other seeds or split protocols list the same files (the whole folder) and
share one file (AID at 256 px: 2.0 GB). A cache whose file list is not the wanted one for the same
dataset and size is deleted once a new one is written (added or removed files).

**Trust.** Each row records its source file's size and modification time (ns). The cache is used
only when every wanted file is in it with an unchanged (size, mtime); otherwise it is rebuilt,
re-decoding only the new or changed files (rows of unchanged files are copied). The demo data
(generated, no files) is keyed by the generator's source code instead.

**Atomic.** A build writes ``.<name>.<host>.<pid>.<random>.tmp`` beside the target and renames it
over the target only when complete and fsync'ed; an exception (Ctrl-C included) deletes it, a
``kill -9`` leaves it behind, never under the target's name; leftovers of dead processes of this
host are deleted by the next build.

**Bad images.** A file that cannot be decoded gets a row marked with the reason (pixels zero,
never served): reading it raises :class:`~dmlrs.data.images.UnreadableImageError`, which
:class:`~dmlrs.data.dataset.SceneDataset` turns into its usual error or, with ``--skip-corrupt``,
replaces by another image of the class. :func:`ensure_image_cache` reports them so the caller can
stop before training.

**Workers.** :class:`CachedImages` (the dataset's loader) is picklable and opens the memory map
lazily in each process (DataLoader workers included) with copy-on-write pages, so reading a row
costs no copy.

File layout: ``rows x 3 x s x s`` uint8 from offset 0, then a UTF-8 JSON trailer, its length
(8 bytes, little endian) and the magic ``DMLRSIC1``::

    {"version": 1, "source": "...", "size": s, "rows": [[key, size, mtime_ns, reason|null], ...]}
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import shutil
import socket
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from dmlrs.atomic import fsync_directory
from dmlrs.data.images import PIL_READ_ERRORS, UnreadableImageError, describe_read_error
from dmlrs.data.verify import PARALLEL_MIN_FILES, available_cores, cache_dir
from dmlrs.errors import DmlrsError

logger = logging.getLogger(__name__)

CACHE_VERSION = 1
MAGIC = b"DMLRSIC1"
_TRAILER = struct.Struct("<Q8s")
SUFFIX = ".u8"
TEMP_SUFFIX = ".tmp"
_FREE_SPACE_MARGIN = 64 * 2**20  # keep this much free beyond the cache itself


@dataclass
class CacheSource:
    """What a cache is built from.

    ``name``: dataset name (file name part); ``source_id``: identifies the pixels' origin (the
    absolute dataset root, or the demo generator's fingerprint); ``keys``: one per image (the
    dataset's relative paths); ``open_image(key)``: the decoded RGB PIL image (raises on a bad
    file); ``stat(key)``: ``(size, mtime_ns)`` of its source, or None when it is missing;
    ``location(key)``: what error messages name (the file path).
    """

    name: str
    source_id: str
    keys: list[str]
    open_image: Callable
    stat: Callable[[str], tuple[int, int] | None]
    location: Callable[[str], str] = str


@dataclass
class CacheReport:
    path: Path
    built: bool  # False: an existing file was used as it is
    decoded: int = 0  # images decoded now
    reused: int = 0  # rows copied from an earlier cache file
    seconds: float = 0.0
    bad: dict[str, str] = field(default_factory=dict)  # key -> reason (unreadable images)

    def note(self) -> str:
        if not self.built:
            return f"image cache {self.path} (reused)"
        return (f"image cache {self.path}: built in {self.seconds:.1f} s ({self.decoded} decoded, "
                f"{self.reused} kept from the previous cache)")


def _digest(text: str, n: int = 12) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:n]


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name) or "dataset"


def images_dir() -> Path:
    return cache_dir() / "images"


def cache_path(source: CacheSource, size: int) -> Path:
    """``<cache dir>/images/<name>-<s>px-<source hash>-<file list hash>.u8``."""
    files = _digest("\n".join(sorted(source.keys)))
    return images_dir() / f"{_stem(source, size)}-{files}{SUFFIX}"


def _stem(source: CacheSource, size: int) -> str:
    return f"{_safe(source.name)}-{int(size)}px-{_digest(source.source_id)}"


# --------------------------------------------------------------------------- reading
def read_header(path: Path) -> dict | None:
    """The trailer of a cache file, or None when it is not a complete cache file of this version."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            end = handle.tell()
            if end < _TRAILER.size:
                return None
            handle.seek(end - _TRAILER.size)
            length, magic = _TRAILER.unpack(handle.read(_TRAILER.size))
            if magic != MAGIC or length > end - _TRAILER.size:
                return None
            handle.seek(end - _TRAILER.size - length)
            header = json.loads(handle.read(length).decode("utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    if not isinstance(header, dict) or header.get("version") != CACHE_VERSION:
        return None
    size, rows = header.get("size"), header.get("rows")
    if not isinstance(size, int) or not isinstance(rows, list):
        return None
    if end - _TRAILER.size - length != len(rows) * 3 * size * size:
        return None
    return header


class CachedImages:
    """The loader of a cached dataset: ``loader(key) -> uint8 tensor (3, s, s)``.

    ``key`` is what :meth:`SceneDataset.path` returns (``root / relpath``, or the relpath of the
    demo); rows of unreadable images raise :class:`UnreadableImageError` with the build's reason.
    The memory map is opened on first use (:meth:`array`); forked DataLoader workers share the
    mapping of their parent, a pickled copy (spawned workers) opens its own. ``build_data`` opens
    it at once, so a later rebuild by another run (which replaces or deletes the file) cannot
    pull the pixels away from this one.
    """

    def __init__(self, path: str | Path, size: int, rows: dict[str, int], bad: dict[str, str]):
        self.path, self.size = str(path), int(size)
        self.rows, self.bad = rows, bad
        self._array = None

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_array"] = None
        return state

    def array(self) -> np.ndarray:
        if self._array is None:
            count = len(self.rows)
            try:
                self._array = np.memmap(self.path, dtype=np.uint8, mode="c", offset=0,
                                        shape=(count, 3, self.size, self.size)) if count else \
                    np.zeros((0, 3, self.size, self.size), dtype=np.uint8)
            except OSError as exc:
                raise DmlrsError(f"cannot open the image cache {self.path} ({describe_read_error(exc)}); it was "
                                 f"deleted or replaced since this run started (another run rebuilt it?): start "
                                 f"the run again, or use --input-pipeline pil") from exc
        return self._array

    def __call__(self, key):
        import torch

        key = str(key)
        reason = self.bad.get(key)
        if reason is not None:
            raise UnreadableImageError(
                f"cannot read image {key} ({reason}). Replace the file, or check the whole dataset "
                f"and leave bad files out: python -m dmlrs.data --dataset ... --data ... --skip-corrupt",
                path=key, reason=reason)
        return torch.from_numpy(self.array()[self.rows[key]])  # a view of the copy-on-write map

    def __len__(self) -> int:
        return len(self.rows)

    def __repr__(self) -> str:
        return f"CachedImages({self.path}, {len(self.rows)} images, {self.size} px)"


# --------------------------------------------------------------------------- building
_WORKER: dict = {}


def _init_worker(temp_path: str, source: CacheSource, resize) -> None:
    _WORKER["fd"] = os.open(temp_path, os.O_WRONLY)
    _WORKER["source"], _WORKER["resize"] = source, resize


def _decode_task(task: tuple[int, str, int]) -> tuple[int, str | None]:
    """Decode, resize and write one image at its row; returns (row, reason or None)."""
    row, key, row_bytes = task
    source, resize = _WORKER["source"], _WORKER["resize"]
    try:
        image = source.open_image(key)
        pixels = np.asarray(resize(image), dtype=np.uint8)
    except UnreadableImageError as exc:
        return row, exc.reason or str(exc)
    except DmlrsError as exc:
        return row, str(exc)
    except PIL_READ_ERRORS as exc:
        return row, describe_read_error(exc)
    if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.shape[0] * pixels.shape[1] * 3 != row_bytes:
        return row, f"resized to {pixels.shape}, expected ({int((row_bytes // 3) ** 0.5)}, ..., 3)"
    data = np.ascontiguousarray(pixels.transpose(2, 0, 1)).tobytes()  # (H, W, 3) -> (3, H, W)
    os.pwrite(_WORKER["fd"], data, row * row_bytes)
    return row, None


def _pool_context():
    import multiprocessing
    import sys

    if sys.platform.startswith("linux"):
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context()


def _host() -> str:
    return _safe(socket.gethostname())[:32]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def remove_dead_temporaries(folder: Path) -> list[Path]:
    """Delete build leftovers (``.*.<host>.<pid>.*.tmp``) of processes of this host that are gone."""
    removed, host = [], _host()
    for leftover in folder.glob(f".*{SUFFIX}.{host}.*{TEMP_SUFFIX}"):
        parts = leftover.name.split(".")
        try:
            pid = int(parts[-3])
        except (ValueError, IndexError):
            continue
        if not _pid_alive(pid):
            leftover.unlink(missing_ok=True)
            removed.append(leftover)
    return removed


def _previous_rows(folder: Path, stem: str, wanted: dict[str, tuple[int, int]], size: int
                   ) -> tuple[dict[str, tuple[Path, int]], list[Path]]:
    """Rows of earlier cache files of the same source and size whose file is unchanged:
    ``{key: (file, row)}``, plus every such earlier file."""
    found: dict[str, tuple[Path, int]] = {}
    files = []
    for path in folder.glob(f"{stem}-*{SUFFIX}"):
        try:
            files.append((path.stat().st_mtime, path))
        except OSError:  # deleted meanwhile
            continue
    files = [path for _, path in sorted(files, reverse=True)]
    for path in files:
        header = read_header(path)
        if header is None or header["size"] != size:
            continue
        for row, entry in enumerate(header["rows"]):
            key, st_size, mtime, reason = entry
            if reason is None and key in wanted and key not in found and wanted[key] == (st_size, mtime):
                found[key] = (path, row)
    return found, files


def _check_space(folder: Path, needed: int, target: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(folder).free
    except OSError as exc:
        raise DmlrsError(f"cannot create the image cache folder {folder} ({describe_read_error(exc)}); set "
                         f"$DMLRS_CACHE to a writable folder, or use --input-pipeline pil (no cache)") from exc
    if free < needed + _FREE_SPACE_MARGIN:
        raise DmlrsError(f"the image cache {target} needs {needed / 2**30:.2f} GiB but {folder} has only "
                         f"{free / 2**30:.2f} GiB free; free some space, set $DMLRS_CACHE to a folder on a "
                         f"larger disk, or use --input-pipeline pil (no cache)")


def _write_trailer(handle, header: dict) -> None:
    data = json.dumps(header, separators=(",", ":")).encode("utf-8")
    handle.write(data)
    handle.write(_TRAILER.pack(len(data), MAGIC))


def ensure_image_cache(source: CacheSource, size: int, resize, *, workers: int | None = None,
                       progress: bool | None = None) -> tuple[CachedImages, CacheReport]:
    """The cache of ``source`` at ``size`` px, built or brought up to date first when needed.

    ``resize``: the reference ``Resize((size, size))`` transform (PIL image -> PIL image).
    ``workers``: decoding processes (default: the available cores). ``progress``: a tqdm bar
    (None: only when stderr is a terminal; False: never).
    """
    start = time.perf_counter()
    size = int(size)
    keys = list(dict.fromkeys(source.keys))  # in order, once
    stats: dict[str, tuple[int, int]] = {}
    missing: dict[str, str] = {}
    for key in keys:
        st = source.stat(key)
        if st is None:
            missing[key] = "FileNotFoundError: the file is missing"
        else:
            stats[key] = (int(st[0]), int(st[1]))
    target = cache_path(source, size)
    header = read_header(target) if target.exists() else None
    if header is not None and header.get("source") == source.source_id and header["size"] == size:
        rows = header["rows"]
        current = {entry[0]: entry for entry in rows}
        if len(current) == len(keys) and all(
                key in current and key in stats and (current[key][1], current[key][2]) == stats[key]
                for key in keys):
            loader = CachedImages(target, size, {source.location(e[0]): i for i, e in enumerate(rows)},
                                  {source.location(e[0]): e[3] for e in rows if e[3]})
            return loader, CacheReport(target, built=False, seconds=time.perf_counter() - start,
                                       bad={e[0]: e[3] for e in rows if e[3]})
    return _build(source, size, resize, keys, stats, missing, target, workers, progress, start)


def _build(source, size, resize, keys, stats, missing, target, workers, progress, start):
    from tqdm.auto import tqdm

    folder = target.parent
    row_bytes = 3 * size * size
    _check_space(folder, row_bytes * len(keys), target)
    remove_dead_temporaries(folder)
    stem = _stem(source, size)
    previous, earlier_files = _previous_rows(folder, stem, stats, size)
    temp = folder / f".{target.name}.{_host()}.{os.getpid()}.{secrets.token_hex(4)}{TEMP_SUFFIX}"
    reasons: dict[int, str] = {}
    decoded = reused = 0
    try:
        with open(temp, "wb") as handle:
            handle.truncate(row_bytes * len(keys))
        tasks = []
        by_file: dict[Path, list[tuple[int, int]]] = {}
        for row, key in enumerate(keys):
            if key in missing:
                reasons[row] = missing[key]
            elif key in previous:
                path, old_row = previous[key]
                by_file.setdefault(path, []).append((row, old_row))
            else:
                tasks.append((row, key, row_bytes))
        with open(temp, "r+b") as handle:
            for path, pairs in by_file.items():  # unchanged images: copy their rows
                with open(path, "rb") as old:
                    for row, old_row in pairs:
                        old.seek(old_row * row_bytes)
                        handle.seek(row * row_bytes)
                        handle.write(old.read(row_bytes))
                        reused += 1
        workers = available_cores() if workers is None else max(1, int(workers))
        bar = tqdm(total=len(tasks), desc=f"caching {source.name} images at {size} px", unit="img",
                   disable=(None if progress is None else not progress) if tasks else True, leave=False)
        with bar:
            if workers <= 1 or len(tasks) < PARALLEL_MIN_FILES:
                _init_worker(str(temp), source, resize)
                try:
                    for task in tasks:
                        row, reason = _decode_task(task)
                        if reason is not None:
                            reasons[row] = reason
                        bar.update()
                finally:
                    os.close(_WORKER.pop("fd"))
            else:
                chunk = max(1, min(32, len(tasks) // (workers * 8)))
                with _pool_context().Pool(workers, initializer=_init_worker,
                                          initargs=(str(temp), source, resize)) as pool:
                    for row, reason in pool.imap_unordered(_decode_task, tasks, chunksize=chunk):
                        if reason is not None:
                            reasons[row] = reason
                        bar.update()
        decoded = len(tasks)
        rows = [[key, *stats.get(key, (0, 0)), reasons.get(row)] for row, key in enumerate(keys)]
        with open(temp, "r+b") as handle:
            handle.seek(row_bytes * len(keys))
            _write_trailer(handle, {"version": CACHE_VERSION, "source": source.source_id, "size": size,
                                    "rows": rows})
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, target)
    except OSError as exc:  # the cache folder, not an image (those are caught per image)
        temp.unlink(missing_ok=True)
        raise DmlrsError(f"could not write the image cache {target} ({describe_read_error(exc)}); free some "
                         f"space or set $DMLRS_CACHE to a writable folder with {row_bytes * len(keys) / 2**30:.2f} "
                         f"GiB free, or use --input-pipeline pil (no cache)") from exc
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    fsync_directory(folder)
    for path in earlier_files:  # stale: another file list of the same dataset and size
        if path != target:
            path.unlink(missing_ok=True)
    loader = CachedImages(target, size, {source.location(key): row for row, key in enumerate(keys)},
                          {source.location(keys[row]): reason for row, reason in reasons.items()})
    report = CacheReport(target, built=True, decoded=decoded, reused=reused, seconds=time.perf_counter() - start,
                         bad={keys[row]: reason for row, reason in reasons.items()})
    return loader, report


# --------------------------------------------------------------------------- sources
def folder_source(name: str, root: str | Path, relpaths: Sequence[str], loader) -> CacheSource:
    """Images under ``root`` read by ``loader(root / relpath)``, trusted by (size, mtime_ns)."""
    root = Path(root)
    absolute = str(root.expanduser().resolve())
    return CacheSource(name=name, source_id=f"folder:{absolute}", keys=list(relpaths),
                       open_image=_FolderOpener(root, loader), stat=_FolderStat(root), location=_Location(root))


class _FolderStat:
    """``(size, mtime_ns)`` of ``root / rel``, None when it cannot be stat'ed (picklable)."""

    def __init__(self, root: Path):
        self.root = root

    def __call__(self, rel: str):
        try:
            st = (self.root / rel).stat()
        except OSError:
            return None
        return st.st_size, st.st_mtime_ns


class _FolderOpener:
    def __init__(self, root: Path, loader):
        self.root, self.loader = root, loader

    def __call__(self, rel: str):
        return self.loader(self.root / rel)


class _Location:
    def __init__(self, root: Path | None):
        self.root = root

    def __call__(self, key: str) -> str:
        return str(key if self.root is None else self.root / key)


def demo_source(relpaths: Sequence[str], loader) -> CacheSource:
    """The generated demo images: keyed by the generator's source code (no files to stat)."""
    from dmlrs.data import demo

    fingerprint = _digest(Path(demo.__file__).read_text(encoding="utf-8"), 16)
    return CacheSource(name="demo", source_id=f"demo:{fingerprint}", keys=list(relpaths),
                       open_image=loader, stat=_no_file, location=_Location(None))


def _no_file(key: str) -> tuple[int, int]:
    return 0, 0
