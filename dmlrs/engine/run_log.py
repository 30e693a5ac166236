"""Per-epoch records: ``metrics.jsonl`` (one JSON line per epoch) and TensorBoard scalars.

The trainer writes ``last.pt`` (which holds the epoch's record) *before* it appends the epoch's
line, and :meth:`RunLog.reconcile` runs when a run is resumed: it drops lines of epochs after
the checkpoint and lines torn by a kill, and appends the checkpoint's record when the kill came
between the checkpoint and the line. Whatever moment a run was killed at, a resumed run's
``metrics.jsonl`` is the one an uninterrupted run writes.

Under torchrun only rank 0 keeps the log; the other ranks get a :class:`NullRunLog`.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from dmlrs.atomic import atomic_open
from dmlrs.errors import DmlrsError


class RunLog:
    def __init__(self, run_dir: str | Path, tensorboard: bool = True):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter  # imported lazily: slow import

            self.writer = SummaryWriter(log_dir=str(Path(run_dir) / "tb"))

    def log_epoch(self, epoch: int, record: dict) -> None:
        """Append one line ``{"epoch": epoch, **record}``; nested groups become ``group/key`` in TB."""
        line = {"epoch": epoch, **record}
        try:
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(line, sort_keys=True) + "\n")
        except OSError as exc:
            raise DmlrsError(f"could not append epoch {epoch} to {self.path}: {exc.strerror or exc}; the "
                             "checkpoints are intact and hold the line: free disk space, then continue with "
                             "--resume auto") from exc
        if self.writer is not None:
            for tag, value in _flatten(record):
                if isinstance(value, (int, float)) and math.isfinite(value):
                    self.writer.add_scalar(tag, value, epoch)
            self.writer.flush()

    def reconcile(self, epoch: int, record: dict | None) -> None:
        """Make ``metrics.jsonl`` hold the lines of epochs ``1..epoch`` only (``epoch``: the epochs
        completed in the checkpoint being resumed), appending ``record`` (that checkpoint's record
        of epoch ``epoch``) when its line is missing."""
        rows = []
        if self.path.is_file():
            for text in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    row = json.loads(text)
                except json.JSONDecodeError:
                    continue  # a line torn by a kill
                if isinstance(row, dict) and isinstance(row.get("epoch"), int) and row["epoch"] <= epoch:
                    rows.append(row)
            kept = [json.dumps(row, sort_keys=True) for row in rows]
            if kept != self.path.read_text(encoding="utf-8").splitlines():
                with atomic_open(self.path, "w", encoding="utf-8") as handle:
                    handle.write("".join(line + "\n" for line in kept))
        if record is not None and epoch > 0 and not any(row["epoch"] == epoch for row in rows):
            self.log_epoch(epoch, record)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class NullRunLog:
    """The run log of a process that writes nothing (ranks other than 0 under torchrun)."""

    def log_epoch(self, epoch: int, record: dict) -> None:
        pass

    def reconcile(self, epoch: int, record: dict | None) -> None:
        pass

    def close(self) -> None:
        pass


def _flatten(record: dict, prefix: str = ""):
    for key, value in record.items():
        if isinstance(value, dict):
            yield from _flatten(value, f"{prefix}{key}/")
        else:
            yield f"{prefix}{key}", value
