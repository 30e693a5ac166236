"""Run reproduction rows one after another, each as its script in a subprocess.

Row ``paper/row`` goes to ``OUT/<paper>/<row>/`` (the script adds ``<method>/<dataset>/<timestamp>/``)::

    python train_X/main.py --config configs/<paper>/<row>.yaml --out OUT/<paper>/<row> --resume auto
                           [--data DIR] [--seed S] [EXTRA ...]

A row is finished when a run folder below ``OUT/<paper>/<row>`` holds ``test_metrics.json`` (with
``--seed``: one whose ``config.json`` has that seed); finished rows are skipped, and ``--resume
auto`` continues an interrupted one where it stopped. Flags in EXTRA come last, so they override
the row's (e.g. ``--epochs 2 --img-size 64`` for a short run).
"""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from dmlrs.reproduce.rows import Row

INTERRUPTED = 130


@dataclass(frozen=True)
class Job:
    row: Row
    seed: int | None
    command: list[str]
    out: Path

    @property
    def label(self) -> str:
        return self.row.key + ("" if self.seed is None else f" seed {self.seed}")


def shown(path: Path) -> str:
    """``path`` relative to the working directory when it lies below it, else absolute."""
    path = Path(os.path.abspath(path))
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def build_jobs(rows: list[Row], out: Path, *, data: str | None = None, seeds: list[int] | None = None,
               extra: list[str] | None = None, python: str | None = None) -> list[Job]:
    jobs = []
    for row in rows:
        for seed in seeds or [None]:
            row_out = Path(out) / row.paper / row.name
            command = [python or sys.executable, shown(row.script_path()), "--config", shown(row.path),
                       "--out", shown(row_out), "--resume", "auto"]
            if data is not None:
                command += ["--data", data]
            if seed is not None:
                command += ["--seed", str(seed)]
            jobs.append(Job(row, seed, command + list(extra or []), row_out))
    return jobs


def _run_seed(run_dir: Path) -> int | None:
    try:
        return json.loads((run_dir / "config.json").read_text(encoding="utf-8"))["args"].get("seed")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def run_folders(job: Job) -> tuple[list[Path], list[Path]]:
    """``(finished, unfinished)`` run folders of the job (its seed only, when it has one)."""
    finished, unfinished = [], []
    for config in sorted(job.out.glob("**/config.json")):
        run_dir = config.parent
        if job.seed is not None and _run_seed(run_dir) != job.seed:
            continue
        (finished if (run_dir / "test_metrics.json").is_file() else unfinished).append(run_dir)
    return finished, unfinished


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{seconds:02d}s" if hours else f"{minutes}m{seconds:02d}s"


def dry_run(jobs: list[Job], stream=None) -> int:
    """Print every job's command (shell-quoted), a comment line before each; runs nothing."""
    stream = stream or sys.stdout
    for i, job in enumerate(jobs, 1):
        finished, _ = run_folders(job)
        state = f"; finished in {shown(finished[-1])}, a run would skip it" if finished else ""
        print(f"# row {i}/{len(jobs)} {job.label}: {job.row.title}{state}", file=stream)
        print(shlex.join(job.command), file=stream)
    return 0


def run_jobs(jobs: list[Job], stream=None) -> int:
    """Run the jobs in order; 0 if all finished, 1 if some failed (the others still run),
    130 when interrupted (Ctrl-C: the running script saves its checkpoint first)."""
    stream = stream or sys.stdout
    failed = []
    start_all = time.monotonic()
    for i, job in enumerate(jobs, 1):
        prefix = f"row {i}/{len(jobs)} {job.label}"
        finished, unfinished = run_folders(job)
        if finished:
            print(f"{prefix}: already finished ({shown(finished[-1])}), skipped", file=stream, flush=True)
            continue
        resuming = f" (unfinished run found: {shown(unfinished[-1])})" if unfinished else ""
        print(f"{prefix}: running{resuming} ...\n  {shlex.join(job.command)}", file=stream, flush=True)
        start = time.monotonic()
        process = subprocess.Popen(job.command)
        try:
            code = process.wait()
        except KeyboardInterrupt:  # the script got the Ctrl-C too: let it write last.pt and stop
            code = process.wait()
            code = code if code not in (0, None) else INTERRUPTED
        elapsed = _duration(time.monotonic() - start)
        if code == INTERRUPTED or code < 0:
            print(f"{prefix}: interrupted after {elapsed}; run the same command again to resume it",
                  file=stream, flush=True)
            return INTERRUPTED
        if code != 0:
            failed.append(job.label)
            print(f"{prefix}: FAILED (exit status {code}) after {elapsed}", file=stream, flush=True)
            continue
        print(f"{prefix}: done in {elapsed}", file=stream, flush=True)
    total = _duration(time.monotonic() - start_all)
    if failed:
        print(f"{len(failed)} of {len(jobs)} rows failed ({', '.join(failed)}); {total} in all", file=stream)
        return 1
    print(f"all {len(jobs)} rows finished; {total} in all", file=stream)
    return 0
