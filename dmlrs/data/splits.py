"""Deterministic train/val/test splits of a scene dataset and their ``split.json`` manifests.

Two split protocols; ``"original"`` is the default everywhere a manifest is made
(:func:`make_manifest`, ``build_data``, ``python -m dmlrs.data``).

``"original"`` -- the authors' code (jiankang1991/SNCA_CE, CDNE, RNSL, HR-S2DML), file for file
-----------------------------------------------------------------------------------------------
1. classes = the sorted sub-folder names, label = index in that order;
2. per class: the images sorted by path string (``sorted(glob(class_dir/'*.<ext>'))``, i.e. by
   file name within the class folder), then shuffled by a *fresh* ``random.Random(seed)`` for
   EVERY class (the original calls ``random.seed(42); random.shuffle(files)`` per class; dmlrs
   uses a local instance, never the global ``random`` state, which draws the same permutation);
3. cut points ``cut1 = int(f_train * n)`` and ``cut2 = int(f_cum * n)``: train = ``files[:cut1]``,
   val = ``files[cut1:cut2]``, test = ``files[cut2:]``.  ``f_cum`` is the *literal* cumulative
   fraction, the float nearest the decimal sum of ``f_train`` and ``f_val`` (0.7 + 0.1 -> 0.8,
   whereas the float sum 0.7 + 0.1 == 0.7999999999999999 would cut one image early for
   n = 5, 10, 15, ...), so the defaults give exactly the original's ``int(0.7 * n)`` and
   ``int(0.8 * n)`` (float truncation included: ``int(0.7 * 700) == 489``);
4. the lists keep the original order -- class by class in label order, within a class in the
   shuffled order (not re-sorted) -- so dataset index ``i`` (also the memory-bank slot) is the
   original's ``idx`` ``i``.  The original's label noise walks the train list in this order
   (see :mod:`dmlrs.data.noise`).

Small classes are cut as the original cuts them: 3 images -> 2/0/1, 1 image -> 0/0/1.

Where dmlrs differs from the original listing: the original globs only ``*.<imgExt>``
(case-sensitive on Linux: ``*.jpg`` misses ``x.JPG`` and ``x.png``); dmlrs's scanner lists every
image extension (jpg/jpeg/png/tif/tiff/bmp/webp, any case) and sorts by the relative path
string, so a file with another extension (or another case of it) is included and takes its
place in the sorted list by its full name.  For a folder whose images all end in the dataset's
official extension the lists are identical; otherwise ``build_data`` warns.

``"stratified"`` -- dmlrs's own protocol (opt-in; manifests without a ``"protocol"`` key, written
by earlier dmlrs versions, are read as this)
-----------------------------------------------------------------------------------------------
Reproducible and independent of everything except (seed, class name, the set of image *stems*):

1. the images of a class are sorted by their relative path **without extension**
   (so ``a.tif`` and ``a.png`` sort alike, and filesystem listing order is irrelevant);
2. each class gets its own RNG seeded from ``(seed, sha256(class name))``, so adding or
   removing a class never reshuffles the others;
3. the permuted list is cut into ``n_train, n_val, n_test`` (see :func:`split_counts`);
4. each list is stored sorted by (label, stem) for readability.

Rounding (:func:`split_counts`), for a class of ``n`` images and fractions ``(f_tr, f_va, f_te)``::

    n_test = floor(n * f_te + 0.5)     (round half up)
    n_val  = floor(n * f_va + 0.5)
    if n >= 3: n_test >= 1 when f_te > 0, and n_val >= 1 when f_va > 0
    n_train = n - n_val - n_test, and n_train >= 1 (taken back from val, then test)

So a class of 3 images gives 1/1/1, of 2 images 2/0/0, of 1 image 1/0/0 (defaults),
and AID's smallest class (220 images) gives 154/22/44 (the original protocol: 154/22/44 too;
but AID's 360 give 252/36/72 here and 251/37/72 in the original, NWPU's 700 give 490/70/140
here and 489/71/140 in the original: float truncation of 0.7 * n).

Semi-supervised mode (``train_per``)
------------------------------------
* ``transductive=False`` (dmlrs's clean protocol, both split protocols): the 70/10/20 split as
  above; ``labelled`` = a seeded ``train_per`` fraction of each class's train images
  (:func:`labelled_subset`), ``unlabelled`` = the other train images.  Val and test are unseen.
* ``transductive=True`` (HR-S2DML's protocol, ``--train_per`` 0.2 there): the WHOLE class is cut
  once -- train (= the labelled images) = ``files[:int(train_per * n)]`` of the shuffled class
  (original protocol; stratified: ``max(1, round-half-up(n * train_per))`` of its own shuffle),
  test = the rest; there is no validation split: val IS the test split (the original selects
  the checkpoint by kNN accuracy on the test images, the labelled images as gallery), and the
  unlabelled pool is the test split too.  The test images are trained on and used for model
  selection, so test metrics are optimistic: :data:`TRANSDUCTIVE_WARNING` is logged and warned.
  In such a manifest ``val == test`` (each test image is listed twice), which every reader here
  expects.

Manifest (``split.json``)::

    {"version": 1, "dataset": str, "root": str|None, "classes": [...], "seed": int,
     "protocol": "original" | "stratified",
     "fractions": [f_tr, f_va, f_te], "train": [[relpath, label], ...], "val": ..., "test": ...,
     "file_sizes": {relpath: bytes, ...},   # image folders (not the demo); absent in older manifests
     # semi-supervised mode only:
     "train_per": float, "transductive": bool,
     "labelled": [indices into train], "unlabelled": [indices into train (or test if transductive)],
     "unlabelled_source": "train" | "test"}

A reused manifest (``--split-file``, or the run's own ``split.json`` on ``--resume``) must list
exactly the images on disk: :func:`check_manifest_matches` refuses it, listing the differences,
when listed files are missing, files on disk are in no split, files have another class, or (when
the manifest has ``file_sizes``) files changed size.  ``file_sizes`` is not part of
:func:`manifest_hash`, so checkpoints of runs made before it existed still match.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import warnings
from collections import Counter
from decimal import Decimal
from pathlib import Path, PurePosixPath
from typing import Iterable, Mapping, Sequence

import numpy as np

from dmlrs.atomic import atomic_open
from dmlrs.errors import DmlrsError

logger = logging.getLogger(__name__)

MANIFEST_VERSION = 1
DEFAULT_FRACTIONS = (0.7, 0.1, 0.2)
SPLIT_NAMES = ("train", "val", "test")
PROTOCOLS = ("original", "stratified")
DEFAULT_PROTOCOL = "original"
LEGACY_PROTOCOL = "stratified"  # manifests without a "protocol" key were made by this one
TRANSDUCTIVE_WARNING = (
    "transductive=True (HR-S2DML's original protocol): the TEST images are trained on (they are the "
    "unlabelled pool, through the BNM loss) AND used for model selection (there is no validation split: "
    "val is the test split, so the best checkpoint is picked on the test images), as in the original code. "
    "Test metrics are therefore optimistic (test-set leakage)."
)


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def check_protocol(protocol: str) -> str:
    """Validate a split protocol name (``"original"`` or ``"stratified"``)."""
    if protocol not in PROTOCOLS:
        raise DmlrsError(f"--split-protocol {protocol!r} is unknown; choose original (the authors' code, "
                         "the default) or stratified (dmlrs's per-class-seeded protocol)")
    return protocol


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
    """Stratified protocol: number of train/val/test images of a class of ``n`` (rule in module doc)."""
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


def literal_sum(a: float, b: float) -> float:
    """The float nearest the decimal sum of two literals: ``literal_sum(0.7, 0.1) == 0.8``.

    (The float sum ``0.7 + 0.1`` is ``0.7999999999999999``; the original code writes ``0.8``.)
    """
    return float(Decimal(repr(float(a))) + Decimal(repr(float(b))))


def original_cut_points(n: int, fractions: Sequence[float] = DEFAULT_FRACTIONS) -> tuple[int, int]:
    """Original protocol: ``(int(f_train * n), int(f_cum * n))`` with ``f_cum = literal_sum(f_train, f_val)``.

    For the defaults these are exactly the original's ``int(0.7 * n)`` and ``int(0.8 * n)``.
    """
    f_train, f_val, _ = check_fractions(fractions)
    cut1 = int(f_train * n)
    cut2 = int(literal_sum(f_train, f_val) * n)
    return min(cut1, n), min(max(cut2, cut1), n)


def original_split_counts(n: int, fractions: Sequence[float] = DEFAULT_FRACTIONS) -> tuple[int, int, int]:
    """Original protocol: number of train/val/test images of a class of ``n`` (float truncation)."""
    cut1, cut2 = original_cut_points(n, fractions)
    return cut1, cut2 - cut1, n - cut2


def stem_key(relpath: str) -> str:
    """Sort key of an image: its relative path without the file extension (``a/b.tif`` -> ``a/b``)."""
    p = PurePosixPath(str(relpath).replace("\\", "/"))
    return str(p.with_suffix("")) if p.suffix else str(p)


def class_rng(seed: int, class_name: str) -> np.random.Generator:
    """An RNG that depends only on (seed, class name): adding a class never reshuffles others."""
    digest = hashlib.sha256(str(class_name).encode("utf-8")).digest()
    return np.random.default_rng([int(seed), int.from_bytes(digest[:8], "little")])


def _seeded_order(relpaths: list[str], seed: int, class_name: str) -> list[str]:
    """Stratified protocol: sort by stem (full path breaks ties), then apply the class's seeded permutation."""
    ordered = sorted(relpaths, key=lambda r: (stem_key(r), r))
    perm = class_rng(seed, class_name).permutation(len(ordered))
    return [ordered[i] for i in perm]


def original_order(relpaths: Sequence[str], seed: int) -> list[str]:
    """Original protocol: ``files = sorted(paths); random.seed(seed); random.shuffle(files)``.

    A fresh local ``random.Random(seed)`` per call (the original re-seeds for every class); the
    global ``random`` state is neither used nor touched.
    """
    files = sorted(str(p) for p in relpaths)
    random.Random(int(seed)).shuffle(files)
    return files


def _sorted_by_stem(paths: Iterable[str]) -> list[str]:
    return sorted(paths, key=lambda r: (stem_key(r), r))


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
    """Stratified protocol: split ``(relpath, label)`` samples per class into ``{"train", "val", "test"}``.

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
            parts[name].extend([p, label] for p in _sorted_by_stem(cuts[name]))
    return parts


def original_split(
    samples: Iterable[Sequence], classes: Sequence[str], *, seed: int = 42,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
) -> dict[str, list[list]]:
    """Original protocol: the authors' per-class sort + ``random.Random(seed)`` shuffle + ``int()`` cuts.

    Lists are in the original order: class by class in label order, the shuffled order within
    a class, so index ``i`` of a list is the original code's ``idx`` ``i``.
    """
    fractions = check_fractions(fractions)
    parts: dict[str, list[list]] = {name: [] for name in SPLIT_NAMES}
    for label, paths in enumerate(_by_class(samples, len(classes))):
        files = original_order(paths, seed)
        cut1, cut2 = original_cut_points(len(files), fractions)
        for name, chunk in zip(SPLIT_NAMES, (files[:cut1], files[cut1:cut2], files[cut2:])):
            parts[name].extend([p, label] for p in chunk)
    return parts


def split_samples(
    samples: Iterable[Sequence], classes: Sequence[str], *, seed: int = 42,
    fractions: Sequence[float] = DEFAULT_FRACTIONS, split_protocol: str = DEFAULT_PROTOCOL,
) -> dict[str, list[list]]:
    """The train/val/test lists of ``split_protocol`` (:func:`original_split` or :func:`stratified_split`)."""
    split = original_split if check_protocol(split_protocol) == "original" else stratified_split
    return split(samples, classes, seed=seed, fractions=fractions)


def _check_train_per(train_per: float, *, transductive: bool) -> float:
    if not 0.0 < float(train_per) <= 1.0 or (transductive and float(train_per) >= 1.0):
        if transductive:
            raise DmlrsError(f"--train-per {train_per} must be in (0, 1) with --transductive: the labelled "
                             "fraction of each class (the rest of the class is the test split)")
        raise DmlrsError(f"--train-per {train_per} must be in (0, 1]: the labelled fraction of the train split")
    return float(train_per)


def transductive_split(
    samples: Iterable[Sequence], classes: Sequence[str], train_per: float, *, seed: int = 42,
    split_protocol: str = DEFAULT_PROTOCOL,
) -> dict[str, list[list]]:
    """HR-S2DML's split: per class, train (= labelled) = the first part of the shuffled class, test = the rest.

    Original protocol: ``files[:int(train_per * n)]`` of :func:`original_order`, lists in the
    original order.  Stratified: ``min(n, max(1, round-half-up(n * train_per)))`` images of the
    class's seeded order, lists sorted by (label, stem).  ``val`` is a copy of ``test`` (the
    original selects the checkpoint on the test images).
    """
    train_per = _check_train_per(train_per, transductive=True)
    original = check_protocol(split_protocol) == "original"
    parts: dict[str, list[list]] = {"train": [], "test": []}
    for label, (class_name, paths) in enumerate(zip(classes, _by_class(samples, len(classes)))):
        if original:
            files = original_order(paths, seed)
            k = min(int(train_per * len(files)), len(files))
            chunks = (files[:k], files[k:])
        else:
            files = _seeded_order(paths, seed, class_name)
            k = min(len(files), max(1, _round_half_up(len(files) * train_per)))
            chunks = (_sorted_by_stem(files[:k]), _sorted_by_stem(files[k:]))
        for name, chunk in zip(("train", "test"), chunks):
            parts[name].extend([p, label] for p in chunk)
    return {"train": parts["train"], "val": [list(p) for p in parts["test"]], "test": parts["test"]}


def labelled_subset(train: Sequence[Sequence], train_per: float, seed: int, classes: Sequence[str]) -> list[int]:
    """Indices (into ``train``) of the labelled fraction: per class, seeded, >= 1 image per class.

    Per class with ``m`` training images: ``k = max(1, floor(m * train_per + 0.5))`` (capped at m).
    Used by both split protocols for the clean (non-transductive) semi-supervised mode.
    """
    train_per = _check_train_per(train_per, transductive=False)
    per_class: dict[int, list[int]] = {}
    for i, (_, label) in enumerate(train):
        per_class.setdefault(int(label), []).append(i)
    chosen: list[int] = []
    for label, idx in sorted(per_class.items()):
        k = min(len(idx), max(1, _round_half_up(len(idx) * train_per)))
        rng = class_rng(seed, "labelled/" + str(classes[label]))
        chosen.extend(idx[j] for j in rng.permutation(len(idx))[:k])
    return sorted(chosen)


def _warn_transductive() -> None:
    warnings.warn(TRANSDUCTIVE_WARNING, stacklevel=3)
    logger.warning(TRANSDUCTIVE_WARNING)


def manifest_protocol(manifest: dict) -> str:
    """The split protocol of a manifest (``"stratified"`` when it has no ``"protocol"`` key)."""
    return manifest.get("protocol", LEGACY_PROTOCOL)


def add_semi_supervised(manifest: dict, train_per: float, *, transductive: bool = False) -> dict:
    """Add the labelled/unlabelled partition to ``manifest`` (in place; also returned).

    Default: labelled = a seeded ``train_per`` fraction of the train split, unlabelled pool =
    the other train images; val and test are unchanged.
    ``transductive=True`` (HR-S2DML's protocol): the images of the manifest are re-cut by
    :func:`transductive_split` with the manifest's seed and protocol (train = labelled,
    val = test = the rest, unlabelled pool = the test split); warns about the leakage.
    """
    if transductive:
        train_per = _check_train_per(train_per, transductive=True)
        samples = list(dict.fromkeys((p, lab) for key in SPLIT_NAMES for p, lab in manifest[key]))
        manifest.update(transductive_split(samples, manifest["classes"], train_per, seed=manifest["seed"],
                                           split_protocol=manifest_protocol(manifest)))
        _warn_transductive()
        labelled, unlabelled, source = list(range(len(manifest["train"]))), list(range(len(manifest["test"]))), "test"
    else:
        labelled = labelled_subset(manifest["train"], train_per, manifest["seed"], manifest["classes"])
        taken = set(labelled)
        unlabelled, source = [i for i in range(len(manifest["train"])) if i not in taken], "train"
    manifest.update(train_per=float(train_per), transductive=bool(transductive), labelled=labelled,
                    unlabelled=unlabelled, unlabelled_source=source)
    return manifest


def make_manifest(
    dataset: str, root: str | Path | None, classes: Sequence[str], samples: Iterable[Sequence], *,
    seed: int = 42, fractions: Sequence[float] = DEFAULT_FRACTIONS, train_per: float | None = None,
    transductive: bool = False, split_protocol: str = DEFAULT_PROTOCOL,
    file_sizes: Mapping[str, int] | None = None,
) -> dict:
    """Build a fresh manifest (see module doc) for a scanned dataset; ``split_protocol`` defaults to the original.

    ``file_sizes`` (bytes per relative path, e.g. ``SceneIndex.sizes``) is recorded for the
    listed images, so that a reused manifest notices files that changed.
    """
    fractions = check_fractions(fractions)
    check_protocol(split_protocol)
    if transductive and train_per is None:
        raise DmlrsError("--transductive needs --train-per (it only applies to semi-supervised training)")
    samples = list(samples)
    manifest = {
        "version": MANIFEST_VERSION, "dataset": str(dataset), "root": None if root is None else str(root),
        "classes": list(classes), "seed": int(seed), "protocol": split_protocol, "fractions": list(fractions),
    }
    if transductive:
        manifest.update(transductive_split(samples, classes, train_per, seed=seed, split_protocol=split_protocol))
        _warn_transductive()
        manifest.update(train_per=float(train_per), transductive=True,
                        labelled=list(range(len(manifest["train"]))),
                        unlabelled=list(range(len(manifest["test"]))), unlabelled_source="test")
        return _with_sizes(manifest, file_sizes)
    manifest.update(split_samples(samples, classes, seed=seed, fractions=fractions, split_protocol=split_protocol))
    if train_per is not None:
        add_semi_supervised(manifest, train_per, transductive=False)
    return _with_sizes(manifest, file_sizes)


def _with_sizes(manifest: dict, file_sizes: Mapping[str, int] | None) -> dict:
    """Record ``file_sizes`` of the listed images in ``manifest`` (in place; also returned)."""
    if file_sizes is not None:
        listed = sorted({p for key in SPLIT_NAMES for p, _ in manifest[key]})
        manifest["file_sizes"] = {p: int(file_sizes[p]) for p in listed if p in file_sizes}
    return manifest


def manifest_hash(manifest: dict) -> str:
    """sha256 of the canonical JSON of the classes, split lists and semi-supervised partition.

    Content only: seed, root, protocol and fractions are not hashed (the lists they produced are).
    """
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


_FIX = "regenerate it by omitting --split-file (a resumed run needs its own intact split.json: restore it from a copy)"


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_pairs(manifest: dict, key: str, num_classes: int, path: Path) -> None:
    pairs = manifest[key]
    if not isinstance(pairs, list) or not all(
        isinstance(p, list) and len(p) == 2 and isinstance(p[0], str) and _is_int(p[1])
        and 0 <= p[1] < num_classes for p in pairs
    ):
        raise DmlrsError(f"split file {path}: '{key}' must be a list of [relpath, label] pairs "
                         f"with labels in 0..{num_classes - 1}; {_FIX}")


def _check_listed_once(manifest: dict, path: Path) -> None:
    """Every image in one split only (a transductive manifest's ``val`` is a copy of ``test``)."""
    keys = ("train", "test") if manifest.get("transductive") is True and manifest["val"] == manifest["test"] \
        else SPLIT_NAMES
    seen: dict[str, str] = {}
    repeated = []
    for key in keys:
        for relpath, _ in manifest[key]:
            if relpath in seen:
                repeated.append(f"{relpath} ({seen[relpath]}, {key})")
            seen.setdefault(relpath, key)
    if repeated:
        raise DmlrsError(f"split file {path} lists {len(repeated)} image(s) more than once, e.g. "
                         f"{_listing(repeated, 3)}: an image in two splits leaks between them; {_FIX}")


def _check_optional_fields(manifest: dict, path: Path) -> None:
    """Types of the optional keys (a hand-edited file must fail here, not deep inside training)."""
    problems = []
    for key in ("dataset", "root"):
        if manifest.get(key) is not None and not isinstance(manifest[key], str):
            problems.append(f"'{key}' must be a string")
    if "seed" in manifest and not _is_int(manifest["seed"]):
        problems.append("'seed' must be an integer")
    if "fractions" in manifest:
        fractions = manifest["fractions"]
        if not (isinstance(fractions, list) and len(fractions) == 3 and all(_is_number(f) for f in fractions)):
            problems.append("'fractions' must be three numbers")
    if "transductive" in manifest and not isinstance(manifest["transductive"], bool):
        problems.append("'transductive' must be true or false")
    if "train_per" in manifest and not (_is_number(manifest["train_per"]) and 0 < manifest["train_per"] <= 1):
        problems.append("'train_per' must be a number in (0, 1]")
    if "labelled" in manifest and "train_per" not in manifest:
        problems.append("'labelled' needs 'train_per'")
    if "file_sizes" in manifest:
        sizes = manifest["file_sizes"]
        if not (isinstance(sizes, dict) and all(_is_int(v) and v >= 0 for v in sizes.values())):
            problems.append("'file_sizes' must map relpaths to byte counts")
    if problems:
        raise DmlrsError(f"split file {path}: {'; '.join(problems)}; {_FIX}")


def load_manifest(path: str | Path) -> dict:
    """Read and validate a ``split.json``; any problem raises one DmlrsError naming the file.

    A manifest without ``"protocol"`` (written before dmlrs had the original protocol) is
    returned with ``"protocol": "stratified"``, the protocol that made it.
    """
    path = Path(path)
    if not path.is_file():
        raise DmlrsError(f"split file {path} not found; pass an existing split.json or omit --split-file")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise DmlrsError(f"cannot read split file {path} ({type(exc).__name__}: {exc}); check its permissions "
                         f"or {_FIX}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DmlrsError(f"split file {path} is not valid JSON ({exc}); {_FIX}") from None
    except RecursionError:
        raise DmlrsError(f"split file {path} is not a dmlrs split file (nested too deeply); {_FIX}") from None
    if not isinstance(manifest, dict):
        raise DmlrsError(f"split file {path} must hold a JSON object; {_FIX}")
    missing = [k for k in ("version", "classes", "train", "val", "test") if k not in manifest]
    if missing:
        raise DmlrsError(f"split file {path} lacks {missing}; {_FIX}")
    if manifest["version"] != MANIFEST_VERSION:
        raise DmlrsError(f"split file {path} has version {manifest['version']!r}, this dmlrs reads "
                         f"version {MANIFEST_VERSION}; {_FIX}")
    manifest.setdefault("protocol", LEGACY_PROTOCOL)
    if not isinstance(manifest["protocol"], str) or manifest["protocol"] not in PROTOCOLS:
        raise DmlrsError(f"split file {path} has protocol {manifest['protocol']!r}, this dmlrs knows "
                         f"{', '.join(PROTOCOLS)}; {_FIX}")
    classes = manifest["classes"]
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes) \
            or len(set(classes)) != len(classes):
        raise DmlrsError(f"split file {path}: 'classes' must be a list of distinct class names; {_FIX}")
    for key in SPLIT_NAMES:
        _check_pairs(manifest, key, len(classes), path)
    _check_optional_fields(manifest, path)
    _check_listed_once(manifest, path)
    if "labelled" in manifest:
        source = manifest.get("unlabelled_source", "train")
        if source not in ("train", "test"):
            raise DmlrsError(f"split file {path}: 'unlabelled_source' must be 'train' or 'test', not {source!r}; "
                             f"{_FIX}")
        for key, pool in (("labelled", "train"), ("unlabelled", source)):
            idx = manifest.get(key)
            n = len(manifest.get(pool, []))
            if not isinstance(idx, list) or not all(_is_int(i) and 0 <= i < n for i in idx):
                raise DmlrsError(f"split file {path}: '{key}' must list indices into '{pool}' (0..{n - 1}); {_FIX}")
    return manifest


def split_gaps(manifest: dict) -> list[str]:
    """Notes for splits that miss whole classes (the original protocol cuts 3 images into 2/0/1)."""
    notes = []
    classes = manifest["classes"]
    for key in SPLIT_NAMES:
        if key == "val" and manifest.get("transductive") and manifest["val"] == manifest["test"]:
            continue  # val is the test split; reported once, under test
        present = {label for _, label in manifest[key]}
        absent = [c for label, c in enumerate(classes) if label not in present]
        if absent:
            shown = ", ".join(absent[:5]) + (f", ... ({len(absent)} in all)" if len(absent) > 5 else "")
            notes.append(f"the {key} split has no images of {len(absent)} class(es) "
                         f"({manifest_protocol(manifest)} split protocol, classes too small): {shown}")
    return notes


_SPLIT_WORDS = {"train": "training", "val": "validation", "test": "test"}


def _part_counts(protocol: str, fractions: Sequence[float]):
    """``n -> (n_train, n_val, n_test)`` of one class under ``protocol``."""
    if protocol == "original":
        return lambda n: original_split_counts(n, fractions)
    return lambda n: split_counts(n, fractions)


def smallest_class_for(split: str, protocol: str, fractions: Sequence[float] = DEFAULT_FRACTIONS
                       ) -> tuple[int | None, list[int]]:
    """``(N, exceptions)``: under ``protocol`` every class of ``N`` or more images has an image in
    ``split``, and of the smaller sizes only those in ``exceptions`` do (the original protocol's
    ``int()`` cuts are not monotone: 4 and 5 images give a validation image, 6 does not). ``N`` is
    None when the fractions give the split nothing."""
    position = SPLIT_NAMES.index(split)
    fraction = check_fractions(fractions)[position]
    if fraction <= 0:
        return None, []
    counts = _part_counts(protocol, fractions)
    limit = int(2 / fraction) + 3  # beyond it fraction * n >= 2: every cut leaves an image
    empty = [n for n in range(1, limit + 1) if counts(n)[position] == 0]
    needed = max(empty, default=0) + 1
    return needed, [n for n in range(1, needed) if n not in empty]


def _needs(split: str, protocol: str, fractions: Sequence[float]) -> str:
    """``"a validation image from 7 images on (and with 4 or 5)"``."""
    needed, exceptions = smallest_class_for(split, protocol, fractions)
    if needed is None:
        return f"no {_SPLIT_WORDS[split]} image (its fraction is 0)"
    text = f"a {_SPLIT_WORDS[split]} image from {needed} image{'s' if needed > 1 else ''} on"
    if exceptions:
        shown = [str(n) for n in exceptions[:3]] + (["..."] if len(exceptions) > 3 else [])
        text += f" (and with {', '.join(shown[:-1]) + ' or ' + shown[-1] if len(shown) > 1 else shown[0]})"
    return text


def _cut_rule(protocol: str, fractions: Sequence[float]) -> str:
    f_train, f_val, f_test = check_fractions(fractions)
    if protocol == "original":
        return f"cuts each class of n images at int({f_train:g} n) and int({literal_sum(f_train, f_val):g} n)"
    return f"gives each class of n images round({f_val:g} n) validation and round({f_test:g} n) test images"


def check_splits_not_empty(manifest: dict, dataset: str, *, split_file: str | Path | None = None) -> None:
    """Raise one :class:`DmlrsError` when the train, validation or test split of ``manifest`` holds
    no image at all (training would fail later: no batch, or nothing to validate or test on).

    The message names ``dataset``, the empty split(s), how many images per class the manifest's
    protocol needs for them, the class sizes here, and what to do. Splits that only miss *some*
    classes are allowed (the original protocol cuts a class of 3 images into 2/0/1): they are
    reported as notes by :func:`split_gaps`. A transductive manifest's train split is left to the
    semi-supervised script's own check (it names the ``--train_per`` that labels every class).
    """
    keys = [k for k in SPLIT_NAMES if not manifest[k] and not (k == "train" and manifest.get("transductive"))]
    if not keys:
        return
    words = [_SPLIT_WORDS[k] for k in keys]
    empty = (f"the {words[0]} split is empty" if len(words) == 1
             else f"the {', '.join(words[:-1])} and {words[-1]} splits are empty")
    if split_file is not None:
        raise DmlrsError(f"dataset {dataset}: {empty} in split file {split_file}; training needs training, "
                         "validation and test images: omit --split-file to make a new split, or fix the file")
    protocol, fractions = manifest_protocol(manifest), manifest.get("fractions", DEFAULT_FRACTIONS)
    sizes = Counter(label for _, label in dict.fromkeys(
        (p, label) for key in SPLIT_NAMES for p, label in manifest[key]))
    low, high = min(sizes.values(), default=0), max(sizes.values(), default=0)
    have = (f"{high} image{'s' if high != 1 else ''} each" if low == high
            else f"{low} {'or' if high == low + 1 else 'to'} {high} images")
    needs = " and ".join(_needs(k, protocol, fractions) for k in keys)
    fix = "add images to the classes"
    wanted = [smallest_class_for(k, protocol, fractions)[0] for k in keys]
    if None not in wanted:
        fix += f" (at least {max(wanted)} per class)"
    other = "stratified" if protocol == "original" else "original"
    other_counts = _part_counts(other, fractions)
    if all(sum(other_counts(n)[SPLIT_NAMES.index(k)] for n in sizes.values()) for k in keys):
        fix += f", or use --split-protocol {other} (it gives {' and '.join(_needs(k, other, fractions) for k in keys)})"
    raise DmlrsError(f"dataset {dataset}: {empty}: the {protocol} split protocol {_cut_rule(protocol, fractions)}, "
                     f"which gives a class {needs}, and the {len(sizes)} classes here have {have}; {fix}")


def _listing(items: Sequence[str], shown: int = 3) -> str:
    """``a, b, c`` or ``a, b, c, ... (12 in all)``."""
    head = ", ".join(items[:shown])
    return head if len(items) <= shown else f"{head}, ... ({len(items)} in all)"


def check_manifest_matches(manifest: dict, classes: Sequence[str], samples: Iterable[Sequence],
                           source: str = "split file", *, sizes: Mapping[str, int] | None = None,
                           unreadable: Iterable[str] = ()) -> list[str]:
    """Check a reused manifest against the scanned dataset; raises one DmlrsError listing every difference.

    ``samples``: the ``(relpath, label)`` images on disk (include unreadable ones, which are also
    named in ``unreadable``); ``sizes``: their sizes in bytes.  Refused when the classes differ, or
    when any of these is non-empty: listed images missing from disk, images on disk in no split
    ("added"), images whose folder gives another class than listed, and -- when the manifest has
    ``file_sizes`` and ``sizes`` is given -- listed images whose size changed.  An unreadable file
    that is listed counts as present (``--skip-corrupt`` replaces it when loaded) and is not
    size-checked; one that is not listed is not "added".  An image listed in two splits
    (``val == test`` in a transductive manifest) is fine.  Returns notes (currently none).
    """
    if list(manifest["classes"]) != list(classes):
        only_m = sorted(set(manifest["classes"]) - set(classes))
        only_d = sorted(set(classes) - set(manifest["classes"]))
        detail = f"only in the split file: {only_m[:5]}, only in the data: {only_d[:5]}" if (only_m or only_d) \
            else "same names in a different order"
        made_for = f", made for dataset {manifest['dataset']!r}" if manifest.get("dataset") else ""
        raise DmlrsError(f"{source}{made_for}: its classes do not match the dataset ({detail}); "
                         "use the split file made for this dataset or omit --split-file")
    unreadable = {str(r) for r in unreadable}
    on_disk = {str(r): int(lab) for r, lab in samples}
    listed = {p: lab for key in SPLIT_NAMES for p, lab in manifest[key]}
    removed = [p for p in listed if p not in on_disk]
    relabelled = [f"{p} (listed as {manifest['classes'][lab]})" for p, lab in listed.items()
                  if p in on_disk and on_disk[p] != lab]
    added = sorted(p for p in on_disk if p not in listed and p not in unreadable)
    recorded = manifest.get("file_sizes") or {}
    changed = []
    if sizes is not None:
        changed = [f"{p}: {recorded[p]} -> {sizes[p]} bytes" for p in listed
                   if p in recorded and p in sizes and p not in unreadable and recorded[p] != sizes[p]]
    parts = []
    if removed:
        parts.append(f"{len(removed)} listed image(s) are missing ({_listing(removed)})")
    if added:
        parts.append(f"{len(added)} image(s) on disk are in no split ({_listing(added)})")
    if changed:
        parts.append(f"{len(changed)} image(s) changed since the split was made ({_listing(changed)})")
    if relabelled:
        parts.append(f"{len(relabelled)} image(s) are in another class folder ({_listing(relabelled)})")
    if parts:
        raise DmlrsError(
            f"{source} no longer matches the dataset: {'; '.join(parts)}. Make the folder match the split "
            f"(restore missing or changed files from the archive, remove added ones), or make a new split: "
            f"start a new run without --split-file (a resumed run must keep its split)"
        )
    return []
