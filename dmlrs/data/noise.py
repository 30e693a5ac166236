"""Synthetic label noise for the train split (t-RNSL paper protocol), seeded and reproducible.

Kang et al., "Robust Normalized Softmax Loss for Deep Metric Learning-based Characterization
of Remote Sensing Images with Label Noise", TGRS 2020.  A noisy label is drawn from row
``y`` of a C x C transition matrix ``T``: ``P(noisy = k | clean = y) = T[y, k]``.

* ``symmetric``: ``T[y, y] = 1 - r``, ``T[y, k] = r / (C - 1)`` for every other class k.
* ``dependent``: the published tables (paper Tables V and VI) for AID and NWPU-RESISC45 at
  r in {0.1, 0.3, 0.5, 0.7}, packaged in ``label_dependent_noise.json`` as
  ``matrices[rate][true_class][noisy_class]``; rows are mapped onto our label order by class name.
* ``pairflip``: the same tables. That is what the original RNSL code's ``--noiseType pairflip``
  means (its plain pair-flip function is never called), so an original command line gives the
  original noise; on a dataset without tables it is refused, naming ``--noiseType cyclic``.
* ``cyclic``: the classic pair flip ``T[y, y] = 1 - r``, ``T[y, (y + 1) mod C] = r`` (a dmlrs
  addition; no table needed).

How the labels are drawn depends on the split protocol (``split_protocol``, see
:mod:`dmlrs.data.splits`):

* ``"original"`` (default; the authors' code, draw for draw): one ``numpy.random.RandomState(seed)``
  created once (seed 42 by default), walking the train samples in the train list's order (the
  original order: class by class, shuffled within a class); sample ``i`` with clean label ``y``
  gets ``argmax(rs.multinomial(1, T[y, :]))``.  Rows must sum to 1 and ``T >= 0``
  (:func:`sample_multinomial`).
* ``"stratified"`` (dmlrs's opt-in protocol): inverse-CDF sampling with one uniform per sample
  from ``np.random.default_rng(seed)`` (:func:`sample_from_matrix`).

Rate 0 gives the identity (labels unchanged, nothing drawn).  Only the train split gets noise;
val and test stay clean, and callers keep the clean labels alongside.
"""
from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np

from dmlrs.errors import DmlrsError

NOISE_PROTOCOLS = ("original", "stratified")  # = dmlrs.data.splits.PROTOCOLS (not imported: no cycle)

NOISE_TYPES = ("symmetric", "pairflip", "dependent", "cyclic")
TABLE_NOISE_TYPES = ("pairflip", "dependent")  # both read the published label-dependent tables
DEPENDENT_TABLES_FILE = Path(__file__).with_name("label_dependent_noise.json")
# dataset names people use -> key of the packaged tables
_TABLE_ALIASES = {"AID": "AID", "NWPU45": "NWPU45", "NWPURESISC45": "NWPU45", "RESISC45": "NWPU45",
                  "NWPU": "NWPU45"}


def _norm(name: str) -> str:
    """Compare names ignoring case, '-', '_' and spaces (``Dense_Residential`` == ``denseresidential``)."""
    return re.sub(r"[\s_\-]", "", str(name)).lower()


@lru_cache(maxsize=1)
def dependent_tables() -> dict:
    """The packaged label-dependent transition tables (see module doc for the layout)."""
    return json.loads(DEPENDENT_TABLES_FILE.read_text(encoding="utf-8"))


def _dependent_matrix(noise_type: str, rate: float, class_names: Sequence[str] | None,
                      dataset: str | None) -> np.ndarray:
    tables = dependent_tables()
    available = ", ".join(f"{k} at rates {sorted(v['matrices'])}" for k, v in tables.items())
    key = _TABLE_ALIASES.get(re.sub(r"[\s_\-]", "", str(dataset or "")).upper())
    if key is None:
        meaning = (" (the original code's pairflip is this label-dependent noise)" if noise_type == "pairflip" else "")
        raise DmlrsError(f"--noiseType {noise_type}{meaning} has published tables only for: {available}; "
                         f"dataset {dataset!r} has none: use --noiseType symmetric, or --noiseType cyclic "
                         "for the classic pair flip (class c -> c + 1)")
    table = tables[key]
    rate_key = next((k for k in table["matrices"] if abs(float(k) - rate) < 1e-9), None)
    if rate_key is None:
        raise DmlrsError(f"--noiseRate {rate} has no published {noise_type} table for {key}; "
                         f"tables exist for: {available}")
    if class_names is None:
        raise DmlrsError("dependent noise needs the dataset's class names to map the table rows")
    by_norm = {_norm(c): i for i, c in enumerate(class_names)}
    table_norm = {_norm(c): c for c in table["classes"]}
    if set(by_norm) != set(table_norm) or len(by_norm) != len(class_names):
        missing = sorted(set(table_norm) - set(by_norm))
        extra = sorted(set(by_norm) - set(table_norm))
        raise DmlrsError(f"dependent noise table for {key} does not fit the dataset's classes "
                         f"(table classes not in data: {missing[:5]}, data classes not in table: {extra[:5]})")
    c = len(class_names)
    matrix = np.zeros((c, c), dtype=np.float64)
    for true_name, row in table["matrices"][rate_key].items():
        for noisy_name, p in row.items():
            matrix[by_norm[_norm(true_name)], by_norm[_norm(noisy_name)]] = float(p)
    return matrix


def transition_matrix(noise_type: str, rate: float, num_classes: int, *,
                      class_names: Sequence[str] | None = None, dataset: str | None = None) -> np.ndarray:
    """The C x C float64 matrix ``T[clean, noisy]`` of the given noise (rows sum to 1)."""
    rate = float(rate)
    if noise_type not in NOISE_TYPES:
        raise DmlrsError(f"--noiseType {noise_type!r} is unknown; choose one of {', '.join(NOISE_TYPES)}")
    if not 0.0 <= rate < 1.0:
        raise DmlrsError(f"--noiseRate {rate} must be in [0, 1)")
    c = int(num_classes)
    if rate == 0.0:
        return np.eye(c, dtype=np.float64)
    if c < 2:
        raise DmlrsError(f"label noise needs at least 2 classes, the dataset has {c}")
    if noise_type in TABLE_NOISE_TYPES:
        return _dependent_matrix(noise_type, rate, class_names, dataset)
    matrix = np.eye(c, dtype=np.float64) * (1.0 - rate)
    if noise_type == "symmetric":
        matrix += (1.0 - np.eye(c)) * (rate / (c - 1))
    else:  # cyclic
        matrix[np.arange(c), (np.arange(c) + 1) % c] = rate
    return matrix


def sample_from_matrix(labels: np.ndarray, matrix: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Draw ``noisy[i] ~ matrix[labels[i]]`` by inverse-CDF sampling with one uniform per sample.

    ``noisy = #{k : u >= cumsum(T[y])[k]}``, so ``P(noisy = k) = T[y, k]`` and an identity row
    returns ``y`` exactly.
    """
    cdf = np.cumsum(matrix, axis=1)  # (C, C)
    u = rng.random(len(labels))  # (N,)
    noisy = (u[:, None] >= cdf[labels]).sum(axis=1)  # (N, C) comparison -> (N,)
    return np.minimum(noisy, matrix.shape[1] - 1).astype(np.int64)


def sample_multinomial(labels: np.ndarray, matrix: np.ndarray, seed: int) -> np.ndarray:
    """The original code's sampler: ``rs = np.random.RandomState(seed)`` once, then for each sample in
    order ``noisy[i] = argmax(rs.multinomial(1, matrix[labels[i], :]))`` (a one-hot draw).

    Like the original, it refuses a matrix whose rows do not sum to 1 or that has negative entries.
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise DmlrsError(f"the noise transition matrix must be square, got shape {matrix.shape}")
    if (matrix < 0).any() or not np.allclose(matrix.sum(axis=1), 1.0, rtol=0.0, atol=1e-6):
        raise DmlrsError("the noise transition matrix must have entries >= 0 and rows summing to 1")
    rs = np.random.RandomState(int(seed))
    noisy = np.empty(len(labels), dtype=np.int64)
    for i, y in enumerate(labels):  # one draw per sample, in the train list's order
        noisy[i] = int(np.argmax(rs.multinomial(1, matrix[int(y), :])))
    return noisy


def apply_label_noise(labels: Sequence[int] | np.ndarray, num_classes: int, noise_type: str, rate: float, *,
                      seed: int, class_names: Sequence[str] | None = None, dataset: str | None = None,
                      split_protocol: str = "original") -> tuple[np.ndarray, float]:
    """Corrupt ``labels`` with the given noise; returns ``(noisy_labels, realised_rate)``.

    ``split_protocol="original"`` draws as the original code (:func:`sample_multinomial`,
    ``RandomState(seed)``, in the order of ``labels``); ``"stratified"`` uses
    :func:`sample_from_matrix` with ``default_rng(seed)``.  ``realised_rate`` = fraction of
    samples whose label changed.  Deterministic given ``seed``.
    """
    if split_protocol not in NOISE_PROTOCOLS:
        raise DmlrsError(f"--split-protocol {split_protocol!r} is unknown; choose one of {', '.join(NOISE_PROTOCOLS)}")
    labels = np.asarray(labels, dtype=np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DmlrsError(f"labels must lie in 0..{num_classes - 1} to add label noise")
    matrix = transition_matrix(noise_type, rate, num_classes, class_names=class_names, dataset=dataset)
    if float(rate) == 0.0:
        return labels.copy(), 0.0
    if split_protocol == "original":
        noisy = sample_multinomial(labels, matrix, int(seed))
    else:
        noisy = sample_from_matrix(labels, matrix, np.random.default_rng(int(seed)))
    realised = float((noisy != labels).mean()) if labels.size else 0.0
    return noisy, realised
