"""The run folder contract: ``<out>/<method>/<dataset>/<timestamp>/``.

It holds ``config.json`` (every resolved argument, versions, git commit, a fingerprint of the
settings that define the run), ``split.json``, ``metrics.jsonl``, ``test_metrics.json``,
``checkpoints/{last,best}.pt`` and ``tb/``.

``--resume auto`` continues the newest run of the same method and dataset whose settings have
the same fingerprint: a hash of every setting except :data:`RUNTIME_ONLY`, the ones that do not
change what a run computes (where output goes, logging, loader processes, the device, how often
it checkpoints, how long it trains). The fingerprint of a candidate is recomputed from its
``config.json`` arguments, so runs made before a setting became runtime-only still match.
"""
from __future__ import annotations

import hashlib
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

from dmlrs.atomic import atomic_open

#: Settings that do not change what a run computes (excluded from the fingerprint): output and
#: logging (``out``, ``progress``, ``tensorboard``), how it runs (``num_workers``: augmentation
#: does not depend on it; ``device``; ``save_every_steps``), what to do (``resume``,
#: ``evaluate``), how far (``epochs``, ``eval_every``), where the data lives (``data``: the split
#: manifest's hash, checked on resume, guards the content) and ``skip_nonfinite`` (so a run that
#: stopped on a non-finite step can be resumed with it), ``config`` (the path of the --config file:
#: its values are in the other settings) and ``pictures`` (drawn after the report). ``amp``, ``deterministic`` and
#: ``channels_last`` change the numerics and stay in.
RUNTIME_ONLY = ("resume", "evaluate", "out", "num_workers", "progress", "tensorboard", "device", "epochs",
                "eval_every", "data", "save_every_steps", "skip_nonfinite", "log_every",
                "input_pipeline", "config", "pictures")


def safe_name(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name) or "dataset"


def create_run_dir(out: str | Path, method: str, dataset: str) -> Path:
    base = Path(out) / safe_name(method) / safe_name(dataset)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for suffix in [""] + [f"-{i}" for i in range(1, 1000)]:
        run_dir = base / f"{stamp}{suffix}"
        try:
            run_dir.mkdir(parents=True, exist_ok=False)
            return run_dir
        except FileExistsError:
            continue
    raise RuntimeError(f"could not create a run folder under {base}")


def fingerprint(settings: dict) -> str:
    kept = {k: v for k, v in sorted(settings.items()) if k not in RUNTIME_ONLY}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:16]


def find_resumable_run(out: str | Path, method: str, dataset: str, settings: dict,
                       normalize=None, defaults: dict | None = None) -> Path | None:
    """The newest training run of the same method, dataset and fingerprint (``--evaluate`` folders
    are not training runs). It may have no ``checkpoints/last.pt`` yet: killed before its first
    checkpoint, it is started again in place rather than left behind.

    A candidate's fingerprint is recomputed from ``{**config["args"], "method": config["method"]}``
    passed through ``normalize`` (the caller's own normalisation of ``settings``, if any), so a
    change of :data:`RUNTIME_ONLY` does not orphan earlier runs. ``defaults`` (the flags' default
    values) fill the settings a candidate's config.json lacks, so a flag added to dmlrs after the
    run was made matches when it is left at its default (the run was made with that behaviour)."""
    base = Path(out) / safe_name(method) / safe_name(dataset)
    wanted = fingerprint(settings)
    for run_dir in sorted(base.glob("*"), reverse=True):
        config = run_dir / "config.json"
        if not config.is_file():
            continue
        try:
            saved = json.loads(config.read_text())
            candidate = {**(defaults or {}), **saved.get("args", {}), "method": saved.get("method", method)}
        except (OSError, json.JSONDecodeError, AttributeError, TypeError):
            continue
        if candidate.get("evaluate"):
            continue
        if normalize is not None:
            candidate = normalize(candidate)
        if wanted in (saved.get("fingerprint"), fingerprint(candidate)):
            return run_dir
    return None


def write_json(path: str | Path, payload) -> None:
    """Atomic JSON write (sorted keys, so identical results give identical files)."""
    with atomic_open(path, "w", encoding="utf-8") as handle:
        json.dump(payload, handle, indent=2, sort_keys=True)
        handle.write("\n")


def environment_info() -> dict:
    import torch
    import torchvision

    import dmlrs

    return {
        "dmlrs": dmlrs.__version__,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "platform": platform.platform(),
        "git_commit": _git_commit(),
    }


def _git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                              capture_output=True, text=True, timeout=5, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
