"""Check that image files open (``header``) or decode completely (``full``), in parallel, with a cache.

:func:`check_images` opens every listed file with Pillow: ``decode=False`` reads only the header
(finds non-images and broken headers), ``decode=True`` decodes all pixels (also finds truncated
files). Files are checked in a process pool over the cores this process may use
(``os.sched_getaffinity`` where available), with a tqdm progress bar when asked (and stderr is a
terminal).

**Verification cache.** Results of full decodes are remembered per dataset root in
``<cache dir>/verified/<sha256 of the absolute root>[:20].json``, where the cache dir is
``$DMLRS_CACHE``, else ``$XDG_CACHE_HOME/dmlrs``, else ``~/.cache/dmlrs``. An entry is keyed by
the file's relative path and trusted only while its (size, mtime_ns) is unchanged, so a second
full check decodes only new or changed files. Decodable files are trusted by both modes (their
mode and size come from the cache); files that failed to decode are re-decoded by a full check,
and reported as unreadable by a header check (which alone would not notice a truncated file).
Only full checks write the cache, atomically (``dmlrs.atomic.atomic_open``). An unreadable
cache file is ignored, and a cache folder that cannot be written skipped, each with a one-line
note; neither is an error.

Cache file::

    {"version": 1, "root": "/abs/root",
     "files": {"<relpath>": [size, mtime_ns, "ok", mode, width, height]
                          | [size, mtime_ns, "bad", reason], ...}}
"""
from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from PIL import Image

from dmlrs.atomic import atomic_open
from dmlrs.data.images import PIL_READ_ERRORS, describe_read_error

CACHE_VERSION = 1
CACHE_ENV = "DMLRS_CACHE"
PARALLEL_MIN_FILES = 64  # fewer files than this are checked in-process (a pool costs more than it saves)


@dataclass
class ImageCheck:
    """Result for one file: ``mode`` and ``size`` (width, height) when readable, else ``error``."""

    mode: str | None = None
    size: tuple[int, int] | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class CheckReport:
    """What :func:`check_images` did: one :class:`ImageCheck` per file plus counts and notes."""

    results: list[ImageCheck]
    checked: int = 0  # files opened now
    cached: int = 0  # files whose result came from the cache
    workers: int = 1
    seconds: float = 0.0
    cache_path: Path | None = None
    notes: list[str] = field(default_factory=list)  # cache problems (one line each)


def available_cores() -> int:
    """Cores this process may run on (``os.sched_getaffinity`` where available, else ``os.cpu_count``)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def cache_dir() -> Path:
    """``$DMLRS_CACHE``, else ``$XDG_CACHE_HOME/dmlrs``, else ``~/.cache/dmlrs``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "dmlrs"
    return Path.home() / ".cache" / "dmlrs"


def _absolute(root: str | Path) -> str:
    return str(Path(root).expanduser().resolve())


def cache_file(root: str | Path) -> Path:
    """The verification cache of the dataset root ``root`` (one file per absolute root path)."""
    digest = hashlib.sha256(_absolute(root).encode("utf-8")).hexdigest()[:20]
    return cache_dir() / "verified" / f"{digest}.json"


def _valid_entry(entry) -> bool:
    if not isinstance(entry, list) or len(entry) < 3 or not all(isinstance(v, int) for v in entry[:2]):
        return False
    if entry[2] == "ok":
        return len(entry) == 6 and isinstance(entry[3], str) and all(isinstance(v, int) for v in entry[4:])
    return entry[2] == "bad" and len(entry) == 4 and isinstance(entry[3], str)


def _read_cache(path: Path, root: str, notes: list[str]) -> dict:
    """The ``files`` entries of the cache at ``path`` (``{}`` when absent; a note when unreadable)."""
    if not path.exists():
        return {}
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
        if not (isinstance(content, dict) and content.get("version") == CACHE_VERSION
                and isinstance(content.get("files"), dict)):
            raise ValueError("not a dmlrs verification cache of this version")
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        notes.append(f"ignored the unreadable verification cache {path} ({describe_read_error(exc)}); "
                     f"every image is checked again")
        return {}
    if content.get("root") != root:
        return {}  # a hash collision or a hand-copied file: not ours
    return {rel: entry for rel, entry in content["files"].items() if _valid_entry(entry)}


def _write_cache(path: Path, root: str, files: dict, notes: list[str]) -> None:
    try:
        with atomic_open(path, "w", encoding="utf-8") as handle:
            json.dump({"version": CACHE_VERSION, "root": root, "files": files}, handle, separators=(",", ":"))
    except OSError as exc:
        notes.append(f"could not write the verification cache {path} ({describe_read_error(exc)}); the next "
                     f"full check decodes every image again (set ${CACHE_ENV} to a writable folder)")


def probe_image(path: str, decode: bool) -> tuple[str | None, int, int, str | None]:
    """``(mode, width, height, None)`` for a readable file, ``(None, 0, 0, reason)`` otherwise.

    Reads the header only, or with ``decode`` all pixels. Top-level so pool workers can run it.
    """
    try:
        with Image.open(path) as image:
            if decode:
                image.load()
            return image.mode, image.size[0], image.size[1], None
    except PIL_READ_ERRORS as exc:
        return None, 0, 0, describe_read_error(exc)


def _probe_task(task: tuple[int, str, bool]) -> tuple[int, tuple]:
    position, path, decode = task
    return position, probe_image(path, decode)


def _pool_context():
    # fork: the workers start at once and need not re-import dmlrs (and torch) as spawn would
    if sys.platform.startswith("linux"):
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context()


def _run_probes(tasks: list[tuple[int, str, bool]], workers: int, make_bar) -> list[tuple[int, tuple]]:
    """Run :func:`_probe_task` on every task, in a pool when worth it; ``make_bar()`` is the progress bar."""
    out: list[tuple[int, tuple]] = []
    if workers <= 1 or len(tasks) < PARALLEL_MIN_FILES:
        with make_bar() as bar:
            for task in tasks:
                out.append(_probe_task(task))
                bar.update()
        return out
    chunk = max(1, min(64, len(tasks) // (workers * 8)))
    with _pool_context().Pool(workers) as pool:  # forked before the bar starts its monitor thread
        with make_bar() as bar:
            for result in pool.imap_unordered(_probe_task, tasks, chunksize=chunk):
                out.append(result)
                bar.update()
    return out


def check_images(root: str | Path, relpaths: Sequence[str], *, decode: bool, workers: int | None = None,
                 progress: bool = False, use_cache: bool = True) -> CheckReport:
    """Open (``decode=False``) or fully decode (``decode=True``) ``root / relpath`` for each path.

    ``workers``: processes to use (default: :func:`available_cores`). ``use_cache``: read the
    verification cache (and, when decoding, update it); see the module doc.
    """
    from tqdm.auto import tqdm  # imported here: importing tqdm.auto is not free

    start = time.perf_counter()
    workers = available_cores() if workers is None else max(1, int(workers))
    root_text = _absolute(root)
    notes: list[str] = []
    path = cache_file(root) if use_cache else None
    cached_entries = _read_cache(path, root_text, notes) if path is not None else {}

    results: list[ImageCheck | None] = [None] * len(relpaths)
    stats: list[tuple[int, int] | None] = [None] * len(relpaths)
    tasks = []
    cached = 0
    for position, rel in enumerate(relpaths):
        full = Path(root) / rel
        try:
            st = full.stat()
        except OSError as exc:
            results[position] = ImageCheck(error=describe_read_error(exc))
            continue
        stats[position] = (st.st_size, st.st_mtime_ns)
        entry = cached_entries.get(rel)
        if entry is not None and tuple(entry[:2]) == stats[position]:
            if entry[2] == "ok":
                results[position] = ImageCheck(mode=entry[3], size=(entry[4], entry[5]))
                cached += 1
                continue
            if not decode:  # a header check would not see what the full check found
                results[position] = ImageCheck(error=f"{entry[3]}; found by the last full check")
                cached += 1
                continue
        tasks.append((position, str(full), decode))

    what = "decoding images" if decode else "opening images"

    def make_bar():
        return tqdm(total=len(relpaths), initial=len(relpaths) - len(tasks), desc=what, unit="img",
                    disable=None if progress else True, leave=False)  # None: no bar when not a terminal

    for position, (mode, width, height, error) in _run_probes(tasks, workers, make_bar):
        results[position] = ImageCheck(mode=mode, size=(width, height)) if error is None else ImageCheck(error=error)

    if decode and path is not None:
        files = {}
        for rel, result, stat in zip(relpaths, results, stats):
            if stat is None:
                continue
            files[rel] = [*stat, "ok", result.mode, *result.size] if result.ok else [*stat, "bad", result.error]
        if files != cached_entries or not path.exists():
            _write_cache(path, root_text, files, notes)
    return CheckReport(results=results, checked=len(tasks), cached=cached,
                       workers=workers if len(tasks) >= PARALLEL_MIN_FILES else 1,
                       seconds=time.perf_counter() - start, cache_path=path, notes=notes)
