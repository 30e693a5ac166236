"""Per-epoch records: ``metrics.jsonl`` (one JSON line per epoch) and TensorBoard scalars."""
from __future__ import annotations

import json
import math
from pathlib import Path


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
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(line, sort_keys=True) + "\n")
        if self.writer is not None:
            for tag, value in _flatten(record):
                if isinstance(value, (int, float)) and math.isfinite(value):
                    self.writer.add_scalar(tag, value, epoch)
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _flatten(record: dict, prefix: str = ""):
    for key, value in record.items():
        if isinstance(value, dict):
            yield from _flatten(value, f"{prefix}{key}/")
        else:
            yield f"{prefix}{key}", value
