"""Deterministic stratified train/val/test splits and their ``split.json`` manifests.

Protocol of the papers: per class, shuffle the images with a seed and cut them into
train/val/test fractions (default 70/10/20).  Here the shuffle is made reproducible and
independent of everything except (seed, class name, the set of image *stems*):

1. the images of a class are sorted by their relative path **without extension**
   (so ``a.tif`` and ``a.png`` sort alike, and filesystem listing order is irrelevant);
2. each class gets its own RNG seeded from ``(seed, sha256(class name))``, so adding or
   removing a class never reshuffles the others;
3. the permuted list is cut into ``n_train, n_val, n_test`` (see :func:`split_counts`).

Rounding (:func:`split_counts`), for a class of ``n`` images and fractions ``(f_tr, f_va, f_te)``::

    n_test = floor(n * f_te + 0.5)     (round half up)
    n_val  = floor(n * f_va + 0.5)
    if n >= 3: n_test >= 1 when f_te > 0, and n_val >= 1 when f_va > 0
    n_train = n - n_val - n_test, and n_train >= 1 (taken back from val, then test)

So a class of 3 images gives 1/1/1, of 2 images 2/0/0, of 1 image 1/0/0 (defaults),
and AID's smallest class (220 images) gives 154/22/44.

Manifest (``split.json``)::

    {"version": 1, "dataset": str, "root": str|None, "classes": [...], "seed": int,
     "fractions": [f_tr, f_va, f_te], "train": [[relpath, label], ...], "val": ..., "test": ...,
     # semi-supervised mode only:
     "train_per": float, "transductive": bool,
     "labelled": [indices into train], "unlabelled": [indices into train (or test if transductive)],
     "unlabelled_source": "train" | "test"}
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import warnings
from pathlib import Path, PurePosixPath
from typing import Iterable, Sequence

import numpy as np

from dmlrs.atomic import atomic_open
from dmlrs.errors import DmlrsError

logger = logging.getLogger(__name__)

MANIFEST_VERSION = 1
DEFAULT_FRACTIONS = (0.7, 0.1, 0.2)
SPLIT_NAMES = ("train", "val", "test")
TRANSDUCTIVE_WARNING = (
    "transductive=True: the unlabelled pool is the TEST split (the papers' protocol). "
    "The test images are seen during training, so test metrics are optimistic (test-set leakage)."
)


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    """Validate ``(train, val, test)`` fractions: three numbers >= 0, train > 0, summing to 1."""
    try:
        fr = tuple(float(f) for f in fractions)
    except (TypeError, ValueError):
        raise DmlrsError(f"split fractions {fractions!r} must be three numbers (train, val, test)") from None
    if len(fr) != 3 or any(f < 0 for f in fr) or fr[0] <= 0 or abs(sum(fr) - 1.0) > 1e-6:
        raise DmlrsError(
            f"split fractions {fractions!r} must be three numbers (train, val, test) >= 0 "
            "with train > 0 and summing to 1, e.g. (0.7, 0.1, 0.2)"
        )
    return fr  # type: ignore[return-value]


def split_counts(n: int, fractions: Sequence[float] = DEFAULT_FRACTIONS) -> tuple[int, int, int]:
    """Number of train/val/test images for a class of ``n`` images (rounding rule in module doc)."""
    _, f_val, f_test = check_fractions(fractions)
    n_test = _round_half_up(n * f_test)
    n_val = _round_half_up(n * f_val)
    if n >= 3:
        n_test = max(n_test, 1 if f_test > 0 else 0)
        n_val = max(n_val, 1 if f_val > 0 else 0)
    # keep at least one training image: take back from val first, then test
    while n - n_val - n_test < 1 and n_val + n_test > 0:
        if n_val > 0:
            n_val -= 1
        else:
            n_test -= 1
    return n - n_val - n_test, n_val, n_test


def stem_key(relpath: str) -> str:
    """Sort key of an image: its relative path without the file extension (``a/b.tif`` -> ``a/b``)."""
    p = PurePosixPath(str(relpath).replace("\\", "/"))
    return str(p.with_suffix("")) if p.suffix else str(p)


def class_rng(seed: int, class_name: str) -> np.random.Generator:
    """An RNG that depends only on (seed, class name): adding a class never reshuffles others."""
    digest = hashlib.sha256(str(class_name).encode("utf-8")).digest()
    return np.random.default_rng([int(seed), int.from_bytes(digest[:8], "little")])


def _seeded_order(relpaths: list[str], seed: int, class_name: str) -> list[str]:
    """Sort by stem (full path breaks ties), then apply the class's seeded permutation."""
    ordered = sorted(relpaths, key=lambda r: (stem_key(r), r))
    perm = class_rng(seed, class_name).permutation(len(ordered))
    return [ordered[i] for i in perm]


def _by_class(samples: Iterable[Sequence], num_classes: int) -> list[list[str]]:
    groups: list[list[str]] = [[] for _ in range(num_classes)]
    for relpath, label in samples:
        if not 0 <= int(label) < num_classes:
            raise DmlrsError(f"sample {relpath!r} has label {label}, outside 0..{num_classes - 1}")
        groups[int(label)].append(str(relpath))
    return groups


def stratified_split(
    samples: Iterable[Sequence], classes: Sequence[str], *, seed: int = 42,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
) -> dict[str, list[list]]:
    """Split ``(relpath, label)`` samples per class into ``{"train", "val", "test"}`` lists.

    Each list holds ``[relpath, label]`` pairs sorted by (label, stem) for readability.
    """
    fractions = check_fractions(fractions)
    parts: dict[str, list[list]] = {name: [] for name in SPLIT_NAMES}
    for label, (class_name, paths) in enumerate(zip(classes, _by_class(samples, len(classes)))):
        shuffled = _seeded_order(paths, seed, class_name)
        n_train, n_val, _ = split_counts(len(shuffled), fractions)
        cuts = {"train": shuffled[:n_train], "val": shuffled[n_train:n_train + n_val],
                "test": shuffled[n_train + n_val:]}
        for name in SPLIT_NAMES:
            parts[name].extend([p, label] for p in sorted(cuts[name], key=lambda r: (stem_key(r), r)))
    return parts


def labelled_subset(train: Sequence[Sequence], train_per: float, seed: int, classes: Sequence[str]) -> list[int]:
    """Indices (into ``train``) of the labelled fraction: per class, seeded, >= 1 image per class.

    Per class with ``m`` training images: ``k = max(1, floor(m * train_per + 0.5))`` (capped at m).
    """
    if not 0.0 < float(train_per) <= 1.0:
        raise DmlrsError(f"--train-per {train_per} must be in (0, 1]: the labelled fraction of the train split")
    per_class: dict[int, list[int]] = {}
    for i, (_, label) in enumerate(train):
        per_class.setdefault(int(label), []).append(i)
    chosen: list[int] = []
    for label, idx in sorted(per_class.items()):
        k = min(len(idx), max(1, _round_half_up(len(idx) * float(train_per))))
        rng = class_rng(seed, "labelled/" + str(classes[label]))
        chosen.extend(idx[j] for j in rng.permutation(len(idx))[:k])
    return sorted(chosen)


def add_semi_supervised(manifest: dict, train_per: float, *, transductive: bool = False) -> dict:
    """Add the labelled/unlabelled partition to ``manifest`` (in place; also returned).

    Default: unlabelled pool = the train images that are not labelled.
    ``transductive=True`` (papers' protocol): unlabelled pool = the whole test split; warns about leakage.
    """
    labelled = labelled_subset(manifest["train"], train_per, manifest["seed"], manifest["classes"])
    if transductive:
        warnings.warn(TRANSDUCTIVE_WARNING, stacklevel=2)
        logger.warning(TRANSDUCTIVE_WARNING)
        unlabelled, source = list(range(len(manifest["test"]))), "test"
    else:
        taken = set(labelled)
        unlabelled, source = [i for i in range(len(manifest["train"])) if i not in taken], "train"
    manifest.update(train_per=float(train_per), transductive=bool(transductive), labelled=labelled,
                    unlabelled=unlabelled, unlabelled_source=source)
    return manifest


def make_manifest(
    dataset: str, root: str | Path | None, classes: Sequence[str], samples: Iterable[Sequence], *,
    seed: int = 42, fractions: Sequence[float] = DEFAULT_FRACTIONS, train_per: float | None = None,
    transductive: bool = False,
) -> dict:
    """Build a fresh manifest (see module doc) for a scanned dataset."""
    fractions = check_fractions(fractions)
    if transductive and train_per is None:
        raise DmlrsError("--transductive needs --train-per (it only applies to semi-supervised training)")
    manifest = {
        "version": MANIFEST_VERSION, "dataset": str(dataset), "root": None if root is None else str(root),
        "classes": list(classes), "seed": int(seed), "fractions": list(fractions),
        **stratified_split(samples, classes, seed=seed, fractions=fractions),
    }
    if train_per is not None:
        add_semi_supervised(manifest, train_per, transductive=transductive)
    return manifest


def manifest_hash(manifest: dict) -> str:
    """sha256 of the canonical JSON of the classes, split lists and semi-supervised partition."""
    keys = ("classes", "train", "val", "test", "labelled", "unlabelled", "unlabelled_source")
    content = {k: manifest[k] for k in keys if k in manifest}
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def save_manifest(manifest: dict, path: str | Path) -> Path:
    """Write ``manifest`` as JSON atomically (temp file in the same folder, fsync, rename)."""
    path = Path(path)
    with atomic_open(path, "w", encoding="utf-8") as fh:
        json.dump(manifest, fh, indent=1)
        fh.write("\n")
    return path


def _check_pairs(manifest: dict, key: str, num_classes: int, path: Path) -> None:
    pairs = manifest[key]
    if not isinstance(pairs, list) or not all(
        isinstance(p, list) and len(p) == 2 and isinstance(p[0], str) and isinstance(p[1], int)
        and 0 <= p[1] < num_classes for p in pairs
    ):
        raise DmlrsError(f"split file {path}: '{key}' must be a list of [relpath, label] pairs "
                         f"with labels in 0..{num_classes - 1}; regenerate it (omit --split-file)")


def load_manifest(path: str | Path) -> dict:
    """Read and validate a ``split.json``; any problem raises one DmlrsError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise DmlrsError(f"split file {path} not found; pass an existing split.json or omit --split-file")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DmlrsError(f"split file {path} is not valid JSON ({exc}); regenerate it (omit --split-file)") from None
    if not isinstance(manifest, dict):
        raise DmlrsError(f"split file {path} must hold a JSON object; regenerate it (omit --split-file)")
    missing = [k for k in ("version", "classes", "train", "val", "test") if k not in manifest]
    if missing:
        raise DmlrsError(f"split file {path} lacks {missing}; regenerate it (omit --split-file)")
    if manifest["version"] != MANIFEST_VERSION:
        raise DmlrsError(f"split file {path} has version {manifest['version']!r}, this dmlrs reads "
                         f"version {MANIFEST_VERSION}; regenerate it (omit --split-file)")
    if not isinstance(manifest["classes"], list) or not all(isinstance(c, str) for c in manifest["classes"]):
        raise DmlrsError(f"split file {path}: 'classes' must be a list of class names")
    for key in SPLIT_NAMES:
        _check_pairs(manifest, key, len(manifest["classes"]), path)
    if "labelled" in manifest:
        source = manifest.get("unlabelled_source", "train")
        for key, pool in (("labelled", "train"), ("unlabelled", source)):
            idx = manifest.get(key)
            n = len(manifest.get(pool, []))
            if not isinstance(idx, list) or not all(isinstance(i, int) and 0 <= i < n for i in idx):
                raise DmlrsError(f"split file {path}: '{key}' must list indices into '{pool}' (0..{n - 1})")
    return manifest


def check_manifest_matches(manifest: dict, classes: Sequence[str], samples: Iterable[Sequence],
                           source: str = "split file") -> list[str]:
    """Check a reused manifest against the scanned dataset; returns warnings, raises on mismatch.

    Fails when the classes differ or when a listed image is not in the dataset (or has another
    label).  Images of the dataset that the manifest does not list only produce a warning.
    """
    if list(manifest["classes"]) != list(classes):
        only_m = sorted(set(manifest["classes"]) - set(classes))
        only_d = sorted(set(classes) - set(manifest["classes"]))
        detail = f"only in the split file: {only_m[:5]}, only in the data: {only_d[:5]}" if (only_m or only_d) \
            else "same names in a different order"
        raise DmlrsError(f"{source} classes do not match the dataset ({detail}); "
                         "use the split file made for this dataset or omit --split-file")
    on_disk = {str(r): int(lab) for r, lab in samples}
    listed = [p for key in SPLIT_NAMES for p in manifest[key]]
    missing = [r for r, _ in listed if r not in on_disk]
    if missing:
        raise DmlrsError(f"{source} lists {len(missing)} image(s) not found in the dataset, e.g. "
                         f"{missing[:3]}; point --data at the dataset it was made for or omit --split-file")
    relabelled = [r for r, lab in listed if on_disk[r] != lab]
    if relabelled:
        raise DmlrsError(f"{source} gives {len(relabelled)} image(s) another class than their folder, e.g. "
                         f"{relabelled[:3]}; regenerate the split (omit --split-file)")
    unlisted = len(on_disk) - len({r for r, _ in listed})
    return [f"{source}: {unlisted} image(s) of the dataset are in no split (added after the split was made)"] \
        if unlisted > 0 else []
