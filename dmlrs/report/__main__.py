"""Put finished runs beside the papers' numbers.

    python -m dmlrs.report reproduce/                      # every run below, one table per paper
    python -m dmlrs.report reproduce/cdne --paper cdne --format latex --out cdne.tex
    python -m dmlrs.report runs/SNCA_CE/AID/20250101-120000 --format csv

Each run folder (test_metrics.json + config.json) is matched to its row in configs/ (the
--config file it was started with, else its method and the settings the row sets); runs of one
row that differ only in --seed are averaged (mean +- std). The table shows ours, the paper's
number and the difference, the settings in which the runs differ from the row (e.g. a short
--epochs), the paper's claim where it gives no number, and the metric definitions.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dmlrs.cli_checks import ArgumentParser
from dmlrs.errors import DmlrsError
from dmlrs.reproduce.rows import default_configs_dir, load_rows
from dmlrs.report.collect import find_runs, group_runs
from dmlrs.report.table import FORMATS


def make_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="python -m dmlrs.report", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR_OR_PARENT",
                        help="run folders, or folders searched for them (test_metrics.json)")
    parser.add_argument("--paper", default=None, help="only this paper's rows (snca_ce, hr_s2dml, cdne, trnsl, srl)")
    parser.add_argument("--format", default="md", choices=sorted(FORMATS), help="md (Markdown), csv or latex")
    parser.add_argument("--out", default=None, metavar="FILE", help="write the table to FILE instead of printing it")
    parser.add_argument("--configs", type=Path, default=None, metavar="DIR",
                        help=f"the folder of <paper>/<row>.yaml files (default: {default_configs_dir()})")
    return parser


def main(argv=None) -> int:
    args = make_parser().parse_args(argv)
    try:
        rows = load_rows(args.configs)
        papers = list(dict.fromkeys(row.paper for row in rows))
        if args.paper is not None and args.paper not in papers:
            raise DmlrsError(f"--paper {args.paper}: unknown; choose one of {', '.join(papers)}")
        groups = group_runs(find_runs(args.runs), rows)
        if args.paper is not None:
            groups = [g for g in groups if g.paper == args.paper]
            if not groups:
                raise DmlrsError(f"--paper {args.paper}: none of the runs below {', '.join(args.runs)} is one of its "
                                 "rows")
        text = FORMATS[args.format](groups)
        if args.out is not None:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(text, encoding="utf-8")
            print(f"wrote {args.out}")
        else:
            sys.stdout.write(text)
    except DmlrsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
