"""``build_data``: from a dataset name and folder to ready-to-use train/val/test datasets.

Steps: scan the folder (or list the demo items) -> make the stratified split manifest (or
reuse ``split_file``) -> optional semi-supervised labelled/unlabelled partition -> optional
label noise on the train split -> :class:`SceneDataset` objects with the papers' transforms.
Everything is deterministic given ``seed``.
"""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from torch.utils.data import Dataset

from dmlrs.data.dataset import SceneDataset
from dmlrs.data.demo import DEMO_CLASSES, DEMO_SIZE, DemoImageLoader, demo_samples
from dmlrs.data.images import load_rgb
from dmlrs.data.noise import apply_label_noise
from dmlrs.data.splits import (DEFAULT_FRACTIONS, SPLIT_NAMES, TRANSDUCTIVE_WARNING, add_semi_supervised,
                               check_manifest_matches, load_manifest, make_manifest, manifest_hash)
from dmlrs.data.transforms import build_transforms
from dmlrs.errors import DmlrsError

logger = logging.getLogger(__name__)

DEMO_NAME = "demo"
PAPER_IMAGE_SIZE = 256
_SEMI_KEYS = ("train_per", "transductive", "labelled", "unlabelled", "unlabelled_source")


@dataclass
class DataBundle:
    """Everything a training run needs from the data side (see ``build_data``)."""

    name: str
    root: Path | None
    classes: list[str]
    num_classes: int
    image_size: int
    train: Dataset  # augmented; training labels (noisy when noise on); labelled part only if semi-supervised
    train_eval: Dataset  # same items/order/indices as train, eval transform
    val: Dataset
    test: Dataset
    unlabelled: Dataset | None  # augmented; "label" = -1
    train_labels: torch.Tensor  # (n_train,) int64, labels used for training
    train_clean_labels: torch.Tensor  # (n_train,) int64
    manifest: dict
    manifest_hash: str
    noise: dict | None  # {"type", "rate", "realised_rate"}
    warnings: list[str] = field(default_factory=list)
    duplicates: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """Human-readable report: classes, images per class, split sizes, noise, problems."""
        return describe_data(self)


def _semi_supervised_settings(manifest: dict) -> tuple[float, bool]:
    return float(manifest["train_per"]), bool(manifest.get("transductive", False))


def _resolve_manifest(name: str, root: Path | None, classes: list[str], samples: list, *, split_file,
                      seed: int, fractions, train_per: float | None, transductive: bool) -> tuple[dict, list[str]]:
    """A fresh manifest, or the reused ``split_file`` checked against the data."""
    if split_file is None:
        return make_manifest(name, root, classes, samples, seed=seed, fractions=fractions,
                             train_per=train_per, transductive=transductive), []
    manifest = load_manifest(split_file)
    notes = check_manifest_matches(manifest, classes, samples, source=f"split file {split_file}")
    if manifest.get("dataset") not in (None, name):
        notes.append(f"split file {split_file} was made for dataset {manifest['dataset']!r}, used for {name!r}")
    if train_per is None:
        return {k: v for k, v in manifest.items() if k not in _SEMI_KEYS}, notes
    if "labelled" not in manifest:
        return add_semi_supervised(manifest, train_per, transductive=transductive), notes
    stored = _semi_supervised_settings(manifest)
    if abs(stored[0] - float(train_per)) > 1e-12 or stored[1] != bool(transductive):
        raise DmlrsError(f"split file {split_file} holds a labelled partition for train_per={stored[0]}, "
                         f"transductive={stored[1]}, but this run asks train_per={train_per}, "
                         f"transductive={transductive}; match the flags or omit --split-file")
    return manifest, notes


def _scan(dataset: str, data, *, skip_corrupt: bool, verify: str, check_duplicates: bool):
    from dmlrs.data.scan import scan_dataset  # imported here: the demo needs no scanning

    return scan_dataset(dataset, data, skip_corrupt=skip_corrupt, verify=verify, check_duplicates=check_duplicates)


def build_data(dataset: str = DEMO_NAME, data: str | Path | None = None, *, img_size: int | None = None,
               split_file: str | Path | None = None, seed: int = 42,
               fractions: Sequence[float] = DEFAULT_FRACTIONS, train_per: float | None = None,
               transductive: bool = False, noise_type: str | None = None, noise_rate: float = 0.0,
               skip_corrupt: bool = False, verify: str = "header", check_duplicates: bool = False) -> DataBundle:
    """Scan, split, (semi-supervise,) (add noise,) and wrap a dataset; see :class:`DataBundle`.

    ``dataset="demo"`` needs no ``data``.  ``img_size=None`` -> 256 (the papers) for real
    datasets, 64 for the demo.  ``split_file`` reuses a ``split.json`` (it must match the data).
    ``train_per`` turns on semi-supervised mode (that fraction of the train split is labelled);
    ``transductive=True`` makes the test split the unlabelled pool (test-set leakage; warns).
    """
    if transductive and train_per is None:
        raise DmlrsError("--transductive needs --train-per (it only applies to semi-supervised training)")
    if noise_type is None and float(noise_rate) != 0.0:
        raise DmlrsError(f"--noise-rate {noise_rate} needs --noise-type (symmetric, pairflip or dependent)")

    duplicates, skipped, notes = [], [], []
    if str(dataset).lower() == DEMO_NAME:
        name, root, classes, samples = DEMO_NAME, None, list(DEMO_CLASSES), demo_samples()
        image_size = DEMO_SIZE if img_size is None else img_size
        loader = DemoImageLoader(image_size)
    else:
        index = _scan(dataset, data, skip_corrupt=skip_corrupt, verify=verify, check_duplicates=check_duplicates)
        name, root, classes, samples = index.name, Path(index.root), list(index.classes), list(index.samples)
        duplicates, skipped, notes = list(index.duplicates), list(index.skipped), list(index.warnings)
        image_size = PAPER_IMAGE_SIZE if img_size is None else img_size
        loader = load_rgb
    train_tf, eval_tf = build_transforms(image_size)

    manifest, manifest_notes = _resolve_manifest(name, root, classes, samples, split_file=split_file, seed=seed,
                                                 fractions=fractions, train_per=train_per,
                                                 transductive=transductive)
    notes += manifest_notes
    if manifest.get("transductive"):
        notes.append(TRANSDUCTIVE_WARNING)

    train_items = manifest["train"]
    clean = [label for _, label in train_items]
    noise = None
    noisy = clean
    if noise_type is not None:
        noisy_arr, realised = apply_label_noise(clean, len(classes), noise_type, noise_rate, seed=seed,
                                                class_names=classes, dataset=name)
        noisy = noisy_arr.tolist()
        noise = {"type": noise_type, "rate": float(noise_rate), "realised_rate": realised}
        logger.info("label noise %s rate %.3f: realised %.4f on %d train images", noise_type, noise_rate,
                    realised, len(clean))

    unlabelled = None
    if "labelled" in manifest:
        keep = manifest["labelled"]
        train_items = [train_items[i] for i in keep]
        clean, noisy = [clean[i] for i in keep], [noisy[i] for i in keep]
        pool = manifest[manifest["unlabelled_source"]]
        pool_items = [pool[i] for i in manifest["unlabelled"]]
        unlabelled = SceneDataset(root, pool_items, train_tf, labels=[-1] * len(pool_items), loader=loader)

    clean_or_none = clean if noise is not None else None
    return DataBundle(
        name=name, root=root, classes=classes, num_classes=len(classes), image_size=image_size,
        train=SceneDataset(root, train_items, train_tf, labels=noisy, clean_labels=clean_or_none, loader=loader),
        train_eval=SceneDataset(root, train_items, eval_tf, labels=noisy, clean_labels=clean_or_none, loader=loader),
        val=SceneDataset(root, manifest["val"], eval_tf, loader=loader),
        test=SceneDataset(root, manifest["test"], eval_tf, loader=loader),
        unlabelled=unlabelled,
        train_labels=torch.tensor(noisy, dtype=torch.long),
        train_clean_labels=torch.tensor(clean, dtype=torch.long),
        manifest=manifest, manifest_hash=manifest_hash(manifest), noise=noise,
        warnings=notes, duplicates=duplicates, skipped=skipped,
    )


def _per_class_table(bundle: DataBundle) -> list[str]:
    counts = {key: Counter(label for _, label in bundle.manifest[key]) for key in SPLIT_NAMES}
    width = max([len("class")] + [len(c) for c in bundle.classes])
    lines = [f"  {'class':<{width}}  {'total':>6}  {'train':>6}  {'val':>5}  {'test':>5}"]
    for label, cls in enumerate(bundle.classes):
        n = [counts[key][label] for key in SPLIT_NAMES]
        lines.append(f"  {cls:<{width}}  {sum(n):>6}  {n[0]:>6}  {n[1]:>5}  {n[2]:>5}")
    return lines


def describe_data(bundle: DataBundle) -> str:
    """The text of :meth:`DataBundle.summary`."""
    m = bundle.manifest
    sizes = {key: len(m[key]) for key in SPLIT_NAMES}
    total = sum(sizes.values())
    fractions = "/".join(f"{100 * f:g}" for f in m.get("fractions", DEFAULT_FRACTIONS))
    lines = [
        f"dataset {bundle.name}: {bundle.num_classes} classes, {total:,} images"
        + (f" under {bundle.root}" if bundle.root is not None else " (synthetic, generated on the fly)"),
        f"image size {bundle.image_size}; split seed {m.get('seed')}, fractions {fractions} -> "
        f"train {sizes['train']:,} / val {sizes['val']:,} / test {sizes['test']:,}; "
        f"manifest sha256 {bundle.manifest_hash[:12]}",
    ]
    if "labelled" in m:
        lines.append(f"semi-supervised: train_per {m['train_per']:g} -> labelled {len(m['labelled']):,}, "
                     f"unlabelled {len(m['unlabelled']):,} (from the {m['unlabelled_source']} split)")
    if bundle.noise is not None:
        lines.append(f"label noise: {bundle.noise['type']} rate {bundle.noise['rate']:g} "
                     f"(realised {bundle.noise['realised_rate']:.4f} on the train split)")
    lines.append("images per class:")
    lines += _per_class_table(bundle)
    problems = list(bundle.warnings)  # the scan already reports duplicates and skipped files here
    lines.append(f"problems found: {len(problems)}" if problems else "problems found: none")
    lines += [f"  - {p}" for p in problems]
    return "\n".join(lines)
