"""Atomic file writes: a crash or kill leaves the old file or the new one, never a torn mix.

Used for checkpoints, split manifests and the run folder's JSON files. The new content goes to a
temporary file ``.<name>.<random>.tmp`` beside the target; an exception (a full disk included)
removes it, while a ``kill -9`` can leave it behind: :func:`remove_stale_temporaries` deletes
such leftovers when a run is resumed.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

TEMP_SUFFIX = ".tmp"


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "wb", encoding: str | None = None):
    """Yield a temporary file beside ``path``; on success flush, fsync and rename it over ``path``.

    On any exception (KeyboardInterrupt included) the temporary file is removed and ``path`` is
    untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    try:
        os.chmod(tmp_name, 0o666 & ~_current_umask())  # mkstemp makes 0600; match a plain open()
        with os.fdopen(fd, mode, encoding=encoding) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)


def remove_stale_temporaries(folder: str | Path, names: tuple[str, ...]) -> list[Path]:
    """Delete the temporary files that :func:`atomic_open` left in ``folder`` for targets named in
    ``names`` (a writer killed before its rename); returns the deleted paths. Only call it when no
    other process is writing there."""
    folder = Path(folder)
    removed = []
    for name in names:
        for leftover in folder.glob(f".{name}.*{TEMP_SUFFIX}"):
            leftover.unlink(missing_ok=True)
            removed.append(leftover)
    return removed


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_directory(folder: Path) -> None:
    """Make the rename itself durable (skipped where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
