"""``python -m dmlrs.data``: check a dataset folder and show how it will be split.

    python -m dmlrs.data --dataset AID --data /datasets [--skip-corrupt] [--seed 42] [--verify header|full]
                         [--split-protocol original|stratified]
    python -m dmlrs.data --dataset demo

Scans the folder (with the byte-identical duplicate check), makes the 70/10/20 split (by default
with the authors' original protocol, see ``dmlrs.data.splits``) and
prints classes, images per class, split sizes and every problem found (duplicates, skipped
files, image-count warnings).  Exit status 0 when usable; on an error prints
``error: <message>`` on stderr and exits 2 (no traceback).
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
    parser.add_argument("--skip-corrupt", action="store_true", help="leave unreadable images out instead of failing")
    parser.add_argument("--seed", type=int, default=42, help="split seed (default 42)")
    parser.add_argument("--split-protocol", choices=("original", "stratified"), default="original",
                        help="original: the authors' code file for file (default); stratified: dmlrs's "
                             "per-class-seeded split with round-half-up counts")
    parser.add_argument("--verify", choices=("header", "full"), default="header",
                        help="header: open each image header (fast); full: decode every image")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from dmlrs.data.build import build_data

    start = time.perf_counter()
    try:
        bundle = build_data(args.dataset, args.data, seed=args.seed, skip_corrupt=args.skip_corrupt,
                            verify=args.verify, check_duplicates=True, split_protocol=args.split_protocol)
    except DmlrsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(bundle.summary())
    print(f"checked in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
