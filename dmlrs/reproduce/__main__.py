"""Run the published rows of a paper, one after another.

    python -m dmlrs.reproduce cdne --data /datasets                       # every CDNE row
    python -m dmlrs.reproduce snca_ce --rows 'aid_*' --dry-run            # print the commands only
    python -m dmlrs.reproduce all --data /datasets --out results --seeds 42 43 44
    python -m dmlrs.reproduce trnsl --rows aid_trnsl_sym_30 aid_nsl_sym_30 --data /datasets \\
        --extra --epochs 5 --img-size 64 --weights none                   # a short run

Each row runs ``python train_X/main.py --config configs/<paper>/<row>.yaml --out OUT/<paper>/<row>
--resume auto [--data DIR] [--seed S] [EXTRA ...]``; rows already finished are skipped and an
interrupted one resumes where it stopped, so the same command can simply be run again. Then
``python -m dmlrs.report OUT`` puts the results beside the papers' numbers (OUT: --out, default
runs/reproduce).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dmlrs.cli_checks import ArgumentParser, seed_value
from dmlrs.errors import DmlrsError
from dmlrs.reproduce.rows import default_configs_dir, load_rows, select
from dmlrs.reproduce.runner import build_jobs, dry_run, run_jobs


def make_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="python -m dmlrs.reproduce", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paper", help="a folder of configs/ (snca_ce, hr_s2dml, cdne, trnsl, srl) or all")
    parser.add_argument("--rows", nargs="+", metavar="ROW",
                        help="only these rows (file stems, or PAPER/ROW; shell wildcards such as 'aid_*' allowed)")
    parser.add_argument("--dry-run", action="store_true", help="print the exact commands and run nothing")
    parser.add_argument("--data", metavar="DIR", help="the folder that holds the datasets (passed as --data)")
    parser.add_argument("--out", default="runs/reproduce", metavar="DIR",
                        help="row PAPER/ROW goes to DIR/PAPER/ROW/<method>/<dataset>/<timestamp>/")
    parser.add_argument("--seeds", nargs="+", type=seed_value, metavar="S",
                        help="run every row once per seed (passed as --seed; the report gives mean +- std)")
    parser.add_argument("--configs", type=Path, default=None, metavar="DIR",
                        help=f"the folder of <paper>/<row>.yaml files (default: {default_configs_dir()})")
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], metavar="ARGS",
                        help="flags passed on to every script, after the row's (they override it); must come "
                             "last, e.g. --extra --epochs 2 --img-size 64 --weights none")
    return parser


def main(argv=None) -> int:
    args = make_parser().parse_args(argv)
    try:
        rows = load_rows(args.configs)
        if not rows:
            raise DmlrsError(f"no row files (<paper>/<row>.yaml) in {args.configs or default_configs_dir()}")
        chosen = select(rows, args.paper, args.rows)
        for row in chosen:
            if not row.script_path().is_file():
                raise DmlrsError(f"{row.path}: its script {row.script} does not exist")
        # a dry run may print the commands for another machine's data folder
        if args.data is not None and not args.dry_run and not Path(args.data).is_dir():
            raise DmlrsError(f"--data {args.data}: folder not found (--dry-run prints the commands anyway)")
    except DmlrsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    jobs = build_jobs(chosen, Path(args.out), data=args.data, seeds=args.seeds, extra=args.extra)
    return dry_run(jobs) if args.dry_run else run_jobs(jobs)


if __name__ == "__main__":
    sys.exit(main())
