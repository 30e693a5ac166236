"""``python -m dmlrs.retrieve``: search an image archive with a trained model.

    python -m dmlrs.retrieve --checkpoint runs/.../checkpoints/best.pt --archive DIR --query IMG [IMG ...]
                             [--topk 10] [--out retrieval] [--batch-size 64] [--workers N]
                             [--device auto|cpu|cuda[:N]] [--backend auto|torch|faiss] [--save-every N]
                             [--no-progress]

Embeds the archive into ``<out>/index.pt`` (only new or changed files on later runs), ranks it
for each query, prints a table per query and writes ``<out>/retrieval.json`` and
``<out>/gallery.png``. Bad input ends as one ``error: ...`` line on stderr, exit status 2.
While embedding, the index is written every ``--save-every`` images or 60 s; Ctrl-C or SIGTERM
writes it with what is done and ends with one ``interrupted: ...`` line, exit status 130: the
same command then embeds only the remaining images.
"""
from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dmlrs.errors import DmlrsError
from dmlrs.retrieve.schedule import DEFAULT_SAVE_EVERY_IMAGES, SaveSchedule

RESULTS_NAME = "retrieval.json"
GALLERY_NAME = "gallery.png"


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a flag's default unless it has none or its help already explains it."""

    def _get_help_string(self, action):
        if action.default is None or action.nargs == 0 or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m dmlrs.retrieve", formatter_class=_HelpFormatter,
        description="Search an image archive with a trained dmlrs model: index the archive (incrementally), "
                    "rank it for the query images, print the results, write retrieval.json and gallery.png.")
    parser.add_argument("--checkpoint", required=True, metavar="FILE",
                        help="a dmlrs checkpoint (runs/.../checkpoints/best.pt)")
    parser.add_argument("--archive", required=True, metavar="DIR",
                        help="folder tree of images to search (any layout)")
    parser.add_argument("--query", required=True, nargs="+", metavar="IMG", help="one or more query image files")
    parser.add_argument("--topk", type=int, default=10, metavar="K", help="results per query")
    parser.add_argument("--out", default="retrieval", metavar="DIR",
                        help="output folder (index.pt, retrieval.json, gallery.png)")
    parser.add_argument("--batch-size", type=int, default=64, metavar="N", help="images per forward pass while indexing")
    parser.add_argument("--workers", type=int, default=None, metavar="N",
                        help="image decoding processes (default: the available cores, at most 8; 0: none)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")
    parser.add_argument("--backend", default="auto", choices=("auto", "torch", "faiss"),
                        help="ranking: auto uses faiss when installed, else exact torch ranking (same results)")
    parser.add_argument("--save-every", type=int, default=DEFAULT_SAVE_EVERY_IMAGES, metavar="N",
                        help="while embedding, write the index every N new images (or every tenth of the index, "
                             "when larger) and every 60 s, so a killed run keeps its work; 0: only at the end "
                             "and on Ctrl-C")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    return parser


@dataclass
class SearchOutcome:
    """What a search did (tests read it): the index, the refresh report, the results per query."""

    index: object
    refresh: object
    results: list
    backend: str
    out: Path


def search(args: argparse.Namespace) -> SearchOutcome:
    """Run a search described by parsed flags; prints as it goes; raises ``DmlrsError``."""
    from dmlrs.data.verify import available_cores
    from dmlrs.engine.device import resolve_device
    from dmlrs.retrieve import archive as archive_files
    from dmlrs.retrieve.index import INDEX_NAME, refresh_index
    from dmlrs.retrieve.model import load_encoder
    from dmlrs.retrieve.rank import rank, resolve_backend
    from dmlrs.retrieve.report import Hit, QueryResult, format_table, query_class, write_gallery, write_json

    for flag, value, least in (("--topk", args.topk, 1), ("--batch-size", args.batch_size, 1),
                               ("--workers", args.workers, 0), ("--save-every", args.save_every, 0)):
        if value is not None and value < least:
            raise DmlrsError(f"{flag} {value} must be at least {least}")
    workers = min(8, available_cores()) if args.workers is None else args.workers
    device = resolve_device(args.device)
    backend = resolve_backend(args.backend)
    root, out = Path(args.archive).resolve(), Path(args.out)
    if out.resolve() == root:
        raise DmlrsError(f"--out {args.out} is the archive folder itself; choose another folder for the index "
                         "and the results")
    queries = [Path(q) for q in args.query]
    for query in queries:
        if not query.is_file():
            raise DmlrsError(f"--query {query}: file not found")
    encoder = load_encoder(args.checkpoint, device)
    query_images = _load_queries(encoder, queries)  # an unreadable query fails before any indexing
    listing = archive_files.list_archive(root, exclude=out)
    with _sigterm_as_interrupt():
        index, refresh = refresh_index(out / INDEX_NAME, root, listing, encoder, batch_size=args.batch_size,
                                       workers=workers, progress=args.progress,
                                       schedule=SaveSchedule(every_images=args.save_every))
    if refresh.rebuilt:
        print(f"note: {refresh.rebuilt}", flush=True)
    for relpath, reason in refresh.unreadable:
        print(f"skipped: {root / relpath} ({reason})", flush=True)
    print(refresh.summary(index), flush=True)
    if not index.files:
        raise DmlrsError(f"none of the {len(listing)} images under --archive {root} can be read (listed above); "
                         "replace the files or point --archive at another folder")

    vectors = np.concatenate([encoder.encode(query_images[s:s + args.batch_size])
                              for s in range(0, len(query_images), args.batch_size)])
    scores, indices = rank(vectors, index.vectors, args.topk, kind=encoder.kind, backend=backend, device=device)
    results = []
    for query, row_scores, row_indices in zip(queries, scores.tolist(), indices.tolist()):
        hits = [Hit(r + 1, index.files[i].relpath, s) for r, (s, i) in enumerate(zip(row_scores, row_indices))]
        results.append(QueryResult(query, hits, query_class(query.resolve(), encoder.classes)))
        print("\n" + format_table(results[-1], encoder.kind), flush=True)
    write_json(results, out / RESULTS_NAME, checkpoint=Path(args.checkpoint), archive=root, kind=encoder.kind,
               backend=backend)
    write_gallery(results, out / GALLERY_NAME, root, encoder.kind)
    print(f"\nwrote {out / RESULTS_NAME} and {out / GALLERY_NAME} (ranking: {backend})", flush=True)
    return SearchOutcome(index, refresh, results, backend, out)


def _load_queries(encoder, queries: list[Path]) -> torch.Tensor:
    """The preprocessed query images ``(Q, 3, s, s)``; an unreadable query is an error naming it."""
    from dmlrs.data.images import UnreadableImageError, load_rgb

    images = []
    for query in queries:
        try:
            images.append(encoder.transform(load_rgb(query)))
        except UnreadableImageError as exc:
            raise DmlrsError(f"--query {query} cannot be read ({exc.reason}); pass an image file") from exc
    return torch.stack(images)


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """Inside the block, SIGTERM (a plain ``kill``) raises KeyboardInterrupt like Ctrl-C, so the
    index keeps what is done; outside the main thread signals cannot be handled: nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from dmlrs.retrieve.index import IndexingInterrupted  # after parsing: --help needs no torchvision

    try:
        search(args)
    except DmlrsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except IndexingInterrupted as exc:
        print(f"\n{exc}", file=sys.stderr)
        return 130
    return 0
