"""Checkpoints that survive crashes and load without unpickling code.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, so it loads with
``torch.load(..., weights_only=True)``. It is written atomically: to a temporary file in the
same folder, flushed and fsync'ed, then renamed over the target. A crash or kill at any moment
leaves either the previous file or the new one, never a truncated mix. A write that fails (full
disk, I/O error) raises a :class:`DmlrsError` naming the file and the reason, leaves the
previous checkpoint as it was and no temporary file behind.

Contents written by the trainer (see ``Trainer.state_dict``; format 2): ``format``, ``epoch``
(epochs completed), ``step_in_epoch`` (optimizer steps done in the epoch being trained),
``epoch_started`` (its start hooks ran), ``epoch_totals`` (its running loss sums and counts),
``record`` (the metrics.jsonl record of epoch ``epoch``), ``skipped_nonfinite`` (steps skipped
over the run), ``method`` (model, EMA, memory, loss parameters), ``model`` (the embedding model
alone, so ``--weights PATH`` can load it), ``optimizer``, ``scheduler``, ``scaler``, ``rng``,
``best_score``, ``best_epoch``, ``manifest_hash``, and what the checkpoint needs to be used on its
own: ``model_spec`` (``build_model`` arguments), ``method_name``, ``hashing``, ``classes``,
``image_size`` (absent in older files: ``dmlrs.retrieve`` then reads the run's config.json), and
``world_size`` (the processes that trained it; informative: any number may resume it).
Format 1 files (no ``epoch_started``, ``epoch_totals``, ``record``, ``skipped_nonfinite``) still load.
"""
from __future__ import annotations

import errno
import random
from pathlib import Path

import numpy as np
import torch

from dmlrs.atomic import atomic_open
from dmlrs.engine import faults
from dmlrs.errors import DmlrsError

FORMAT_VERSION = 2


def save_checkpoint(state: dict, path: str | Path) -> None:
    """Write ``state`` to ``path`` atomically (temp file + fsync + rename).

    An ``OSError`` (e.g. ENOSPC) becomes a one-line :class:`DmlrsError` that names the file, the
    reason and says the previous checkpoint is intact (the temporary file is removed)."""
    path = Path(path)
    existed = path.is_file()
    try:
        with atomic_open(path, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            faults.reached("save")  # test-only: a kill between writing and renaming
    except OSError as exc:
        reason = exc.strerror or str(exc) or exc.__class__.__name__
        code = errno.errorcode.get(exc.errno) if exc.errno else None
        kept = (f"the previous {path.name} is intact" if existed
                else f"no earlier {path.name} existed, nothing was overwritten")
        hint = " (free disk space" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else " (check the disk"
        raise DmlrsError(f"could not write checkpoint {path}: {reason}{f' [{code}]' if code else ''}; "
                         f"{kept}{hint}, then continue with --resume auto)") from exc


#: what to do instead, when a file given to a training script is not a training checkpoint
TRAINING_HINT = "to start from plain model weights use --weights PATH instead"


def load_checkpoint(path: str | Path, *, hint: str | None = TRAINING_HINT) -> dict:
    """Load a dmlrs checkpoint on the CPU with ``weights_only=True``.

    ``hint`` ends the message for a readable file that is not a training checkpoint: what the
    caller's user should do instead (the training scripts' advice by default; None: no advice)."""
    path = Path(path)
    if not path.is_file():
        raise DmlrsError(f"checkpoint not found: {path} (check the path given to --resume/--evaluate)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt or foreign files
        raise DmlrsError(f"cannot read checkpoint {path}: {exc.__class__.__name__}: {exc}. "
                         "It is not a dmlrs checkpoint or it is damaged.") from exc
    if not isinstance(state, dict) or "method" not in state or "epoch" not in state:
        raise DmlrsError(f"{path} is not a dmlrs training checkpoint (no 'method'/'epoch' entries)"
                         + (f"; {hint}." if hint else "."))
    return state


def capture_rng_state() -> dict:
    """The state of every random number generator the training loop touches, as plain data."""
    np_state = np.random.get_state()
    state = {
        "python": _to_plain(random.getstate()),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]),
                  "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
        # the current device's own (under torchrun: this rank's GPU, which is another index on
        # each rank); restored onto the current device, so every rank continues rank 0's stream
        state["cuda_current"] = torch.cuda.get_rng_state()
    return state


def restore_rng_state(state: dict) -> None:
    """Inverse of :func:`capture_rng_state`."""
    random.setstate(_to_tuple(state["python"]))
    np_state = state["numpy"]
    np.random.set_state(("MT19937", np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
        if "cuda_current" in state:
            torch.cuda.set_rng_state(state["cuda_current"])


def _to_plain(value):
    """Tuples -> lists, recursively (weights_only loading keeps lists)."""
    if isinstance(value, (tuple, list)):
        return [_to_plain(v) for v in value]
    return value


def _to_tuple(value):
    if isinstance(value, list):
        return tuple(_to_tuple(v) for v in value)
    return value
