"""The archive index: one vector per archive image, kept up to date incrementally.

``<out>/index.pt`` (written atomically, read with ``weights_only=True``) holds::

    {"format": 1, "root": absolute archive path, "identity": Encoder.identity, "kind": "cosine"|"hamming",
     "paths": [relative path, ...] (archive order), "sizes": int64 (N,), "mtimes": int64 (N,) (ns),
     "vectors": float32 (N, D) unit-norm embeddings | uint8 (N, ceil(bits / 8)) packed codes,
     "unreadable": {"paths": [...], "sizes": int64, "mtimes": int64, "reasons": [...]}}

:func:`refresh_index` compares it with the archive on disk: a file whose size and modification
time are unchanged keeps its vector (or stays known as unreadable: it is not decoded again);
new and changed files are encoded; vanished ones are dropped. An index built with another
checkpoint (another ``identity``), for another archive folder, of another format, or damaged is
rebuilt from scratch.

A long embedding pass is not lost when it stops: the index is also written while it runs
(:class:`~dmlrs.retrieve.schedule.SaveSchedule`: every 2,000 images or 60 s by default) and, on Ctrl-C, with what is
done. Such a partial index is an ordinary index holding fewer files, so the next refresh reuses
them and embeds only the rest.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from dmlrs.atomic import atomic_open
from dmlrs.errors import DmlrsError
from dmlrs.retrieve.archive import ArchiveFile, encode_batches
from dmlrs.retrieve.model import Encoder
from dmlrs.retrieve.schedule import SaveSchedule

INDEX_FORMAT = 1
INDEX_NAME = "index.pt"


@dataclass
class ArchiveIndex:
    root: str
    identity: str
    kind: str
    files: list[ArchiveFile]  # readable images, archive order
    vectors: np.ndarray  # one row per file
    unreadable: dict[str, tuple[int, int, str]] = field(default_factory=dict)  # relpath -> (size, mtime_ns, reason)

    @property
    def paths(self) -> list[str]:
        return [f.relpath for f in self.files]


@dataclass
class RefreshReport:
    """What :func:`refresh_index` did; ``rebuilt`` says why the old index was not used (or None)."""

    reused: int = 0
    embedded: int = 0
    removed: int = 0
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # every unreadable (relpath, reason)
    newly_unreadable: int = 0
    rebuilt: str | None = None

    def summary(self, index: ArchiveIndex) -> str:
        text = (f"index: {len(index.files)} images ({self.reused} reused, {self.embedded} embedded, "
                f"{self.removed} removed)")
        if self.unreadable:
            text += f", {len(self.unreadable)} unreadable skipped"
        return text


def save_index(index: ArchiveIndex, path: str | Path) -> None:
    """Write ``index`` to ``path`` atomically."""
    bad = sorted(index.unreadable.items())
    state = {
        "format": INDEX_FORMAT, "root": index.root, "identity": index.identity, "kind": index.kind,
        "paths": index.paths,
        "sizes": torch.tensor([f.size for f in index.files], dtype=torch.int64),
        "mtimes": torch.tensor([f.mtime_ns for f in index.files], dtype=torch.int64),
        "vectors": torch.from_numpy(np.ascontiguousarray(index.vectors)),
        "unreadable": {"paths": [p for p, _ in bad],
                       "sizes": torch.tensor([s for _, (s, _, _) in bad], dtype=torch.int64),
                       "mtimes": torch.tensor([m for _, (_, m, _) in bad], dtype=torch.int64),
                       "reasons": [r for _, (_, _, r) in bad]},
    }
    try:
        with atomic_open(path, "wb") as handle:
            torch.save(state, handle)
    except OSError as exc:
        raise DmlrsError(f"could not write the index {path}: {exc.strerror or exc}; choose a writable --out") from exc


def load_index(path: str | Path) -> ArchiveIndex:
    """Read an index file; raises ``ValueError`` (with the reason) for anything that is not one."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for damaged files
        raise ValueError(f"cannot be read ({type(exc).__name__})") from exc
    if not isinstance(state, dict) or state.get("format") != INDEX_FORMAT:
        raise ValueError("was written by another dmlrs version")
    try:
        sizes, mtimes = state["sizes"].tolist(), state["mtimes"].tolist()
        files = [ArchiveFile(p, s, m) for p, s, m in zip(state["paths"], sizes, mtimes, strict=True)]
        bad = state["unreadable"]
        unreadable = {p: (s, m, r) for p, s, m, r in zip(bad["paths"], bad["sizes"].tolist(),
                                                          bad["mtimes"].tolist(), bad["reasons"], strict=True)}
        vectors = state["vectors"].numpy()
        if vectors.shape[0] != len(files):
            raise ValueError
        return ArchiveIndex(state["root"], state["identity"], state["kind"], files, vectors, unreadable)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ValueError("is damaged") from exc


class IndexingInterrupted(Exception):
    """Ctrl-C (or SIGTERM) while embedding: the images done so far were saved; the message says so."""


def refresh_index(path: Path, root: Path, listing: list[ArchiveFile], encoder: Encoder, *, batch_size: int,
                  workers: int, progress: bool, schedule: SaveSchedule | None = None
                  ) -> tuple[ArchiveIndex, RefreshReport]:
    """Bring the index at ``path`` up to date with ``listing`` (the archive's images, in archive
    order) and write it back when anything changed; returns the index and what was done.

    While embedding, the index is also written as ``schedule`` says (default: ``SaveSchedule()``),
    and on ``KeyboardInterrupt`` it is written with what is done, then :class:`IndexingInterrupted`
    is raised: a partial index is an index with fewer files, so the next run embeds only the rest."""
    schedule = SaveSchedule() if schedule is None else schedule
    report = RefreshReport()
    old = _compatible_index(path, root, encoder, report)
    known = {f.relpath: (f, i) for i, f in enumerate(old.files)} if old else {}
    known_bad = old.unreadable if old else {}
    listed = {f.relpath for f in listing}
    report.removed = (sum(p not in listed for p in known) + sum(p not in listed for p in known_bad)) if old else 0

    reused_rows: dict[int, int] = {}  # position in listing -> row of the old index
    unreadable: dict[str, tuple[int, int, str]] = {}
    to_encode: list[int] = []
    for position, file in enumerate(listing):
        entry = known.get(file.relpath)
        bad = known_bad.get(file.relpath)
        if entry is not None and (entry[0].size, entry[0].mtime_ns) == (file.size, file.mtime_ns):
            reused_rows[position] = entry[1]
        elif bad is not None and bad[:2] == (file.size, file.mtime_ns):
            unreadable[file.relpath] = bad  # known to be unreadable and unchanged: not tried again
        else:
            to_encode.append(position)

    new_rows: dict[int, np.ndarray] = {}  # position in listing -> its new vector
    newly_unreadable = 0

    def assemble() -> ArchiveIndex:
        """The index of what is known now: reused rows, the rows embedded so far, unreadable files."""
        keep = [p for p in range(len(listing)) if p in reused_rows or p in new_rows]
        vectors = [old.vectors[reused_rows[p]] if p in reused_rows else new_rows[p] for p in keep]
        return ArchiveIndex(str(root), encoder.identity, encoder.kind, [listing[p] for p in keep],
                            np.stack(vectors) if vectors else np.zeros((0, 0), np.float32), dict(unreadable))

    batches = encode_batches(encoder.encode, encoder.transform, [root / listing[p].relpath for p in to_encode],
                             batch_size=batch_size, workers=workers, progress=progress)
    try:
        for rows, failures in batches:
            new_rows.update((to_encode[slot], row) for slot, row in rows.items())
            for slot, reason in failures.items():
                file = listing[to_encode[slot]]
                unreadable[file.relpath] = (file.size, file.mtime_ns, reason)
            newly_unreadable += len(failures)
            if schedule.due(len(rows) + len(failures), len(reused_rows) + len(new_rows)):
                schedule.write(lambda: save_index(assemble(), path))
    except KeyboardInterrupt:
        batches.close()  # stops the loader's processes before the write
        save_index(assemble(), path)
        done = len(new_rows) + newly_unreadable
        raise IndexingInterrupted(
            f"interrupted: saved {path} with {len(reused_rows) + len(new_rows):,} of the {len(listing):,} archive "
            f"images ({done:,} done in this run); run the same command again to continue: it embeds only the "
            f"remaining {len(to_encode) - done:,}") from None

    report.reused, report.embedded, report.newly_unreadable = len(reused_rows), len(new_rows), newly_unreadable
    report.unreadable = [(p, r) for p, (_, _, r) in sorted(unreadable.items())]
    index = assemble()
    if old is None or to_encode or report.removed:
        save_index(index, path)
    return index, report


def _compatible_index(path: Path, root: Path, encoder: Encoder, report: RefreshReport) -> ArchiveIndex | None:
    """The index at ``path`` when it can be reused, else None with ``report.rebuilt`` saying why."""
    if not path.is_file():
        return None
    try:
        old = load_index(path)
    except ValueError as exc:
        report.rebuilt = f"{path} {exc}; rebuilding it"
        return None
    if old.identity != encoder.identity or old.kind != encoder.kind:
        report.rebuilt = f"{path} was built with another checkpoint; rebuilding it for {encoder.checkpoint}"
    elif old.root != str(root):
        report.rebuilt = f"{path} was built for another archive ({old.root}); rebuilding it for {root}"
    else:
        return old
    return None
