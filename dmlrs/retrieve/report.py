"""What a search shows: a table per query, ``retrieval.json`` and the gallery PNG.

The class of an archive image is the name of the folder it is in. A result is marked correct
(green) or incorrect (red) only when the query's own folder name is one of the checkpoint's
classes (so the query's class is known): correct when the result's folder has that name.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from dmlrs.atomic import atomic_open
from dmlrs.retrieve.model import FLOAT
from dmlrs.visualize import GalleryItem, GalleryRow, save_gallery


@dataclass
class Hit:
    rank: int
    path: str  # relative to the archive
    score: float | int  # cosine similarity, or Hamming distance

    @property
    def folder(self) -> str:
        return PurePosixPath(self.path).parent.name


@dataclass
class QueryResult:
    query: Path
    hits: list[Hit]
    known_class: str | None  # the query's folder name when it is a class of the checkpoint

    def correct(self, hit: Hit) -> bool | None:
        return None if self.known_class is None else hit.folder == self.known_class


def query_class(query: Path, classes: list[str] | None) -> str | None:
    """The query's folder name when it is one of ``classes``, else None."""
    return query.parent.name if classes and query.parent.name in classes else None


def _score_text(score, kind: str) -> str:
    return f"{score:.4f}" if kind == FLOAT else f"{int(score)}"


def format_table(result: QueryResult, kind: str) -> str:
    """``query: PATH`` then one line per hit: rank, score, y/n (only when correctness is known),
    class, path."""
    marked = result.known_class is not None
    lines = [f"query: {result.query}" + (f" (class {result.known_class})" if marked else "")]

    def line(rank: str, score: str, ok: str, folder: str, path: str) -> str:
        return f"{rank:>4}  {score:>7}  " + (f"{ok:<2}  " if marked else "") + f"{folder:<20}  {path}"

    lines.append(line("rank", "cosine" if kind == FLOAT else "hamming", "ok", "class", "path"))
    for hit in result.hits:
        ok = {True: "y", False: "n", None: ""}[result.correct(hit)]
        lines.append(line(str(hit.rank), _score_text(hit.score, kind), ok, hit.folder or "-", hit.path))
    return "\n".join(lines)


def write_json(results: list[QueryResult], path: Path, *, checkpoint: Path, archive: Path, kind: str,
               backend: str) -> None:
    """``retrieval.json``: the settings, then per query the ranked archive paths and scores."""
    document = {
        "checkpoint": str(checkpoint), "archive": str(archive),
        "score": "cosine similarity (higher is closer)" if kind == FLOAT else "Hamming distance (lower is closer)",
        "backend": backend,
        "queries": [{
            "query": str(r.query), "class": r.known_class,
            "results": [{"rank": h.rank, "path": h.path, "class": h.folder, "score": h.score,
                         "correct": r.correct(h)} for h in r.hits],
        } for r in results],
    }
    with atomic_open(path, "w", encoding="utf-8") as handle:
        json.dump(document, handle, indent=2)
        handle.write("\n")


def write_gallery(results: list[QueryResult], path: Path, archive: Path, kind: str, *, thumb_size: int = 112) -> Path:
    """The gallery PNG: per query, the query then its results, captioned ``#rank class`` and the score."""
    unit = "cos" if kind == FLOAT else "bits apart"
    rows = [GalleryRow(GalleryItem(r.query, r.known_class or r.query.name),
                       [GalleryItem(archive / h.path,
                                    f"#{h.rank} {h.folder or '-'}\n{_score_text(h.score, kind)} {unit}", r.correct(h))
                        for h in r.hits])
            for r in results]
    title = f"{archive} ({'cosine similarity' if kind == FLOAT else 'Hamming distance'})"
    return save_gallery(rows, path, thumb_size=thumb_size, title=title)
