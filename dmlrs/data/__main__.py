"""``python -m dmlrs.data``: check a dataset folder and show how it will be split.

    python -m dmlrs.data --dataset AID --data /datasets [--verify full|header] [--skip-corrupt]
                         [--workers N] [--no-progress] [--no-cache]
                         [--seed 42] [--split-protocol original|stratified]
    python -m dmlrs.data --dataset demo

Scans the folder, decodes every image (``--verify full``, the default; ``--verify header`` only
reads the headers, which misses truncated files) in parallel over the available cores, checks
for byte-identical duplicates, makes the 70/10/20 split (by default with the authors' original
protocol, see ``dmlrs.data.splits``) and prints classes, images per class, split sizes and every
problem found.  Decoded files are remembered in the verification cache (``dmlrs.data.verify``:
``$DMLRS_CACHE``, ``$XDG_CACHE_HOME/dmlrs`` or ``~/.cache/dmlrs``), so a second check only
decodes new or changed files.

Exit status 0 when usable.  Unreadable images: each is listed on stderr (``unreadable: <path>
(<reason>)``), then ``error: <message>``, exit status 2; with ``--skip-corrupt`` they are listed
(``skipped: ...``) and left out, exit status 0.  Any other error prints ``error: <message>`` on
stderr and exits 2 (no traceback).
"""
from __future__ import annotations

import argparse
import sys
import time

from dmlrs.errors import DmlrsError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m dmlrs.data",
                                     description="Scan a scene dataset, report problems and the split sizes.")
    parser.add_argument("--dataset", required=True, help="UCMD, AID, NWPU-RESISC45, PatternNet (or an alias), "
                                                          "a custom name with a class-per-folder --data, or demo")
    parser.add_argument("--data", default=None, help="dataset root (not needed for --dataset demo)")
    parser.add_argument("--skip-corrupt", action="store_true",
                        help="list unreadable images and leave them out instead of failing")
    parser.add_argument("--seed", type=int, default=42, help="split seed (default 42)")
    parser.add_argument("--split-protocol", choices=("original", "stratified"), default="original",
                        help="original: the authors' code file for file (default); stratified: dmlrs's "
                             "per-class-seeded split with round-half-up counts")
    parser.add_argument("--verify", choices=("header", "full"), default="full",
                        help="full: decode every image (default; finds truncated files); header: only open "
                             "each image's header (quick)")
    parser.add_argument("--workers", type=int, default=None,
                        help="processes that check images (default: every core this process may use)")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    parser.add_argument("--no-cache", dest="use_cache", action="store_false",
                        help="neither read nor write the verification cache: decode every image")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from dmlrs.data.build import prepare_data  # no torch: a check starts in a fraction of a second
    from dmlrs.data.scan import CorruptImagesError

    if args.workers is not None and args.workers < 1:
        print(f"error: --workers {args.workers} must be at least 1", file=sys.stderr)
        return 2
    start = time.perf_counter()
    try:
        bundle = prepare_data(args.dataset, args.data, seed=args.seed, skip_corrupt=args.skip_corrupt,
                            verify=args.verify, check_duplicates=True, split_protocol=args.split_protocol,
                            workers=args.workers, progress=args.progress, use_cache=args.use_cache)
    except CorruptImagesError as exc:
        for path, reason in exc.files:
            print(f"unreadable: {path} ({reason})", file=sys.stderr)
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except DmlrsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(bundle.summary())
    for relpath in bundle.skipped:
        print(f"skipped: {bundle.root / relpath} ({bundle.skip_reasons.get(relpath, 'unreadable')})")
    print(f"checked in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
