"""Test-only fault injection: a real ``kill -9`` at a chosen point of a training run.

``DMLRS_KILL_AT=<point>:<n>`` makes this process send SIGKILL to itself the ``n``-th time
(1-based, counted in this process) it reaches ``<point>``:

* ``step``: right after an optimizer step (before any checkpoint of that step is written);
* ``validate``: inside validation, between embedding the train split and the val split;
* ``save``: inside ``save_checkpoint`` once the temporary file is written and flushed, before
  it is fsync'ed and renamed over the checkpoint.

The fault tests (``tests/engine/test_faults.py``) run the entry scripts as subprocesses with it
and check that ``--resume auto`` ends exactly like an uninterrupted run. Without the variable
(every normal run) :func:`reached` is a dictionary lookup.
"""
from __future__ import annotations

import os
import signal

ENV = "DMLRS_KILL_AT"
POINTS = ("step", "validate", "save")

_counts: dict[str, int] = {}


def reached(point: str) -> None:
    """Count one passage through ``point``; SIGKILL this process if it is the chosen one."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    name, _, nth = spec.partition(":")
    if name not in POINTS or not nth.isdigit():
        raise ValueError(f"{ENV}={spec!r}: expected <point>:<n> with point one of {', '.join(POINTS)}")
    if name != point:
        return
    _counts[point] = _counts.get(point, 0) + 1
    if _counts[point] == int(nth):
        os.kill(os.getpid(), signal.SIGKILL)
