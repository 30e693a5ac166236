"""``build_data``: from a dataset name and folder to ready-to-use train/val/test datasets.

Steps: scan the folder (or list the demo items) -> make the split manifest (or reuse
``split_file``) -> optional semi-supervised labelled/unlabelled partition -> optional label
noise on the train split -> :class:`SceneDataset` objects with the papers' transforms.
Everything is deterministic given ``seed``.

``split_protocol`` (see :mod:`dmlrs.data.splits` and :mod:`dmlrs.data.noise`):

* ``"original"`` (default) reproduces the authors' code file for file: per class the sorted
  file names shuffled by ``random.Random(seed)`` (re-seeded per class), cut at
  ``int(0.7 * n)`` / ``int(0.8 * n)``; lists in the original order (class by class, shuffled
  within a class), so dataset index ``i`` -- also the memory-bank slot -- is the original's
  ``idx``; label noise drawn with ``RandomState(seed).multinomial(1, T[y])`` walking the train
  list.  With ``train_per`` and ``transductive=True`` it is HR-S2DML's protocol: per class
  ``files[:int(train_per * n)]`` labelled, the rest is the test split, which is also the
  unlabelled pool and the validation split (model selection on the test images, as the
  original does; warned as test-set leakage).
* ``"stratified"`` (opt-in; also what manifests without a ``"protocol"`` key were made with):
  dmlrs's per-class-seeded shuffle of stem-sorted files, round-half-up counts, lists sorted by
  (label, stem), inverse-CDF noise from ``default_rng(seed)``.

A reused ``split_file`` keeps its own protocol (lists and noise sampler); a different
``split_protocol`` argument only adds a note to ``DataBundle.warnings``.
"""
from __future__ import annotations

import logging
import shlex
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from dmlrs.data.demo import DEMO_CLASSES, DEMO_SIZE, DemoImageLoader, demo_samples
from dmlrs.data.images import load_rgb
from dmlrs.data.noise import NOISE_TYPES, apply_label_noise
from dmlrs.data.splits import (DEFAULT_FRACTIONS, DEFAULT_PROTOCOL, SPLIT_NAMES, TRANSDUCTIVE_WARNING,
                               add_semi_supervised, check_manifest_matches, check_protocol, load_manifest,
                               check_splits_not_empty, make_manifest, manifest_hash, manifest_protocol,
                               split_gaps)
from dmlrs.errors import DmlrsError

if TYPE_CHECKING:  # torch is imported by build_data itself, so that prepare_data works without it
    import torch
    from torch.utils.data import Dataset

logger = logging.getLogger(__name__)

DEMO_NAME = "demo"
PAPER_IMAGE_SIZE = 256
#: ``--input-pipeline``: "cached" (decoded-image cache + batched augmentation on the device) or
#: "pil" (the reference: decode, resize and augment every image with PIL in the loader)
INPUT_PIPELINES = ("cached", "pil")
_SEMI_KEYS = ("train_per", "transductive", "labelled", "unlabelled", "unlabelled_source")


@dataclass
class DataPlan:
    """What :func:`prepare_data` decides, without torch: the split and labels, not yet datasets."""

    name: str
    root: Path | None
    classes: list[str]
    image_size: int
    loader: object  # reads one item: load_rgb, or the demo's generator
    manifest: dict
    noise: dict | None
    train_items: list  # [relpath, label] of the (labelled part of the) train split
    train_clean: list[int]
    train_noisy: list[int]
    pool_items: list | None  # the unlabelled pool (semi-supervised), else None
    check_command: str
    warnings: list[str] = field(default_factory=list)
    duplicates: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    skip_reasons: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def manifest_hash(self) -> str:
        return manifest_hash(self.manifest)

    def summary(self) -> str:
        return describe_data(self)


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
    skip_reasons: dict[str, str] = field(default_factory=dict)  # skipped file -> why it is unreadable
    notes: list[str] = field(default_factory=list)  # what was checked and how (not problems)
    input_pipeline: str = "pil"  # "cached": images are uint8 (+ "augment" parameters), finished on the device

    def summary(self) -> str:
        """Human-readable report: classes, images per class, split sizes, noise, problems."""
        return describe_data(self)


def _semi_supervised_settings(manifest: dict) -> tuple[float, bool]:
    return float(manifest["train_per"]), bool(manifest.get("transductive", False))


def _resolve_manifest(name: str, root: Path | None, classes: list[str], samples: list, *, split_file,
                      seed: int, fractions, train_per: float | None, transductive: bool,
                      split_protocol: str, sizes: dict | None = None, unreadable: Sequence[str] = ()
                      ) -> tuple[dict, list[str]]:
    """A fresh manifest, or the reused ``split_file`` checked against the data.

    ``sizes``: bytes per image file (recorded in a fresh manifest, compared with a reused one);
    ``unreadable``: image files on disk left out as corrupt (``--skip-corrupt``): a reused manifest
    may list them (the dataset replaces them when loaded).
    """
    if split_file is None:
        return make_manifest(name, root, classes, samples, seed=seed, fractions=fractions, train_per=train_per,
                             transductive=transductive, split_protocol=split_protocol, file_sizes=sizes), []
    manifest = load_manifest(split_file)
    class_of = {c: label for label, c in enumerate(classes)}
    present = list(samples) + [(rel, class_of[rel.split("/", 1)[0]]) for rel in unreadable]
    notes = check_manifest_matches(manifest, classes, present, source=f"split file {split_file}", sizes=sizes,
                                   unreadable=unreadable)
    if "file_sizes" not in manifest and sizes is not None:  # an older manifest: record them from now on
        manifest["file_sizes"] = {p: sizes[p] for p in sorted({p for key in SPLIT_NAMES for p, _ in manifest[key]})
                                  if p in sizes}
    if manifest.get("dataset") not in (None, name):
        notes.append(f"split file {split_file} was made for dataset {manifest['dataset']!r}, used for {name!r}")
    if manifest_protocol(manifest) != split_protocol:
        notes.append(f"split file {split_file} was made with the {manifest_protocol(manifest)!r} split protocol; "
                     f"its lists and label-noise sampler are used (this run asked {split_protocol!r})")
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


def _scan(dataset: str, data, **options):
    from dmlrs.data.scan import scan_dataset  # imported here: the demo needs no scanning

    return scan_dataset(dataset, data, **options)


def check_command(dataset: str, data) -> str:
    """``python -m dmlrs.data --dataset X [--data Y]``: the command that checks every image of a dataset."""
    words = ["python", "-m", "dmlrs.data", "--dataset", shlex.quote(str(dataset))]
    if data is not None:
        words += ["--data", shlex.quote(str(data))]
    return " ".join(words)


def build_data(dataset: str = DEMO_NAME, data: str | Path | None = None, *, img_size: int | None = None,
               split_file: str | Path | None = None, seed: int = 42,
               fractions: Sequence[float] = DEFAULT_FRACTIONS, train_per: float | None = None,
               transductive: bool = False, noise_type: str | None = None, noise_rate: float = 0.0,
               skip_corrupt: bool = False, verify: str = "header", check_duplicates: bool = False,
               split_protocol: str = DEFAULT_PROTOCOL, workers: int | None = None, progress: bool = False,
               use_cache: bool = True, input_pipeline: str = "pil", cache_progress: bool | None = None,
               check_splits: bool = True) -> DataBundle:
    """Scan, split, (semi-supervise,) (add noise,) and wrap a dataset; see :class:`DataBundle`.

    ``dataset="demo"`` needs no ``data``.  ``img_size=None`` -> 256 (the papers) for real
    datasets, 64 for the demo.  ``split_file`` reuses a ``split.json`` (it must match the data).
    ``train_per`` turns on semi-supervised mode (that fraction of the train split is labelled);
    ``transductive=True`` is HR-S2DML's protocol: ``train_per`` of each whole class labelled, the
    rest is the test split, the unlabelled pool and the val split (test-set leakage; warns).
    ``split_protocol``: ``"original"`` (the authors' code, default) or ``"stratified"`` (module doc).
    ``check_splits`` (default): a train, validation or test split without any image is one
    ``DmlrsError`` naming the split, the images per class the protocol needs and what to do
    (:func:`~dmlrs.data.splits.check_splits_not_empty`), raised before the image cache is built;
    ``False`` builds such a bundle anyway (to inspect the split). Splits that miss only some
    classes are allowed and listed in ``warnings``.

    Bad images: ``verify`` is ``"header"`` by default (every file opened, headers read; files the
    last ``python -m dmlrs.data`` full check could not decode count as corrupt too, through the
    verification cache, see :mod:`dmlrs.data.verify`), ``"full"`` decodes every image not in the
    cache (``workers`` processes, a bar with ``progress``, ``use_cache``).  Corrupt files raise
    one ``DmlrsError`` listing them; with ``skip_corrupt`` they are left out of a fresh split, and
    every dataset replaces an image that fails later (e.g. truncated past its header) by another
    of its class, with ``"replaced": True`` in the sample (see :class:`SceneDataset`).

    ``input_pipeline``: ``"pil"`` (default here; the reference: every ``dataset[i]`` decodes,
    resizes and augments with PIL and returns a float tensor) or ``"cached"`` (the training
    scripts' default): every image of the manifest is resized once into the decoded-image cache
    (:mod:`dmlrs.data.image_cache`; built or updated now, a bar when ``cache_progress`` or, with
    None, when stderr is a terminal), datasets return its uint8 pixels, training splits add
    their augmentation parameters (``"augment"``), and the engine finishes the images on the
    device (:func:`dmlrs.data.gpu_augment.finish_images`). An image the cache build cannot
    decode stops here (one ``CorruptImagesError`` listing them) unless ``skip_corrupt``.
    """
    import torch  # here, not at the top: prepare_data (python -m dmlrs.data) needs no torch

    from dmlrs.data.dataset import SceneDataset
    from dmlrs.data.transforms import build_transforms

    if input_pipeline not in INPUT_PIPELINES:
        raise DmlrsError(f"--input-pipeline must be one of {', '.join(INPUT_PIPELINES)}, not {input_pipeline!r}")
    if img_size is None:
        img_size = DEMO_SIZE if str(dataset).lower() == DEMO_NAME else PAPER_IMAGE_SIZE
    train_tf, eval_tf = build_transforms(img_size)
    plan = prepare_data(dataset, data, img_size=img_size, split_file=split_file, seed=seed, fractions=fractions,
                        train_per=train_per, transductive=transductive, noise_type=noise_type,
                        noise_rate=noise_rate, skip_corrupt=skip_corrupt, verify=verify,
                        check_duplicates=check_duplicates, split_protocol=split_protocol, workers=workers,
                        progress=progress, use_cache=use_cache)
    if check_splits:  # before the image cache: a split without images fails training much later
        check_splits_not_empty(plan.manifest, plan.name if plan.root is None else f"{plan.name} ({plan.root})",
                               split_file=split_file)
    root, manifest = plan.root, plan.manifest
    loader = plan.loader
    if input_pipeline == "cached":
        loader = _cached_loader(plan, train_tf, skip_corrupt=skip_corrupt, workers=workers, progress=cache_progress)
        train_tf, eval_tf = _cached_transforms(train_tf)
    reading = {"loader": loader, "skip_corrupt": skip_corrupt, "check_command": plan.check_command}
    unlabelled = None
    if plan.pool_items is not None:
        unlabelled = SceneDataset(root, plan.pool_items, train_tf, labels=[-1] * len(plan.pool_items), **reading)
    clean_or_none = plan.train_clean if plan.noise is not None else None
    train_items, noisy = plan.train_items, plan.train_noisy
    return DataBundle(
        name=plan.name, root=root, classes=plan.classes, num_classes=plan.num_classes, image_size=plan.image_size,
        train=SceneDataset(root, train_items, train_tf, labels=noisy, clean_labels=clean_or_none, **reading),
        train_eval=SceneDataset(root, train_items, eval_tf, labels=noisy, clean_labels=clean_or_none, **reading),
        val=SceneDataset(root, manifest["val"], eval_tf, **reading),
        test=SceneDataset(root, manifest["test"], eval_tf, **reading),
        unlabelled=unlabelled,
        train_labels=torch.tensor(noisy, dtype=torch.long),
        train_clean_labels=torch.tensor(plan.train_clean, dtype=torch.long),
        manifest=manifest, manifest_hash=plan.manifest_hash, noise=plan.noise,
        warnings=plan.warnings, duplicates=plan.duplicates, skipped=plan.skipped, skip_reasons=plan.skip_reasons,
        notes=plan.notes, input_pipeline=input_pipeline,
    )


def _cached_transforms(reference_train):
    """(train, eval) transforms of the cached pipeline: draw the parameters of the reference's
    augmentation / nothing (the engine finishes uint8 images on the device)."""
    from dmlrs.data.gpu_augment import AugmentParams

    return AugmentParams(reference_train), None


def _cached_loader(plan: DataPlan, reference_train, *, skip_corrupt: bool, workers, progress):
    """The decoded-image cache of every image of ``plan``'s manifest (built or updated now)."""
    from dmlrs.data.image_cache import demo_source, ensure_image_cache, folder_source
    from dmlrs.data.scan import CorruptImagesError

    keys = sorted(_distinct_images(plan.manifest))
    if plan.root is None:
        source = demo_source(keys, plan.loader)
    else:
        source = folder_source(plan.name, plan.root, keys, plan.loader)
    resize = reference_train.transforms[0]  # the reference's own Resize((s, s))
    loader, report = ensure_image_cache(source, plan.image_size, resize, workers=workers, progress=progress)
    loader.array()  # mapped now: the file may be replaced later, these pixels stay
    plan.notes.append(report.note())
    if report.built:
        logger.info(report.note())
    if report.bad:
        bad = sorted(report.bad.items())
        if not skip_corrupt:
            raise CorruptImagesError.for_files(plan.root, bad) if plan.root is not None else DmlrsError(
                f"cannot generate demo images: {bad[:3]}")
        plan.warnings.append(f"--skip-corrupt: {len(bad)} image(s) could not be decoded when caching and are "
                             f"replaced by another image of their class: "
                             + ", ".join(f"{rel} ({why})" for rel, why in bad[:5])
                             + (f", ... ({len(bad)} in all)" if len(bad) > 5 else ""))
    return loader


def prepare_data(dataset: str = DEMO_NAME, data: str | Path | None = None, *, img_size: int | None = None,
                 split_file: str | Path | None = None, seed: int = 42,
                 fractions: Sequence[float] = DEFAULT_FRACTIONS, train_per: float | None = None,
                 transductive: bool = False, noise_type: str | None = None, noise_rate: float = 0.0,
                 skip_corrupt: bool = False, verify: str = "header", check_duplicates: bool = False,
                 split_protocol: str = DEFAULT_PROTOCOL, workers: int | None = None, progress: bool = False,
                 use_cache: bool = True) -> DataPlan:
    """Everything :func:`build_data` does except making datasets and transforms: no torch needed.

    Same arguments; ``img_size`` is not validated here.  ``python -m dmlrs.data`` uses it, so a
    check does not pay for importing torch.
    """
    check_protocol(split_protocol)
    if transductive and train_per is None:
        raise DmlrsError("--transductive needs --train-per (it only applies to semi-supervised training)")
    if noise_type is None and float(noise_rate) != 0.0:
        raise DmlrsError(f"--noiseRate {noise_rate} needs --noiseType ({', '.join(NOISE_TYPES)})")

    duplicates, skipped, notes, checks, reasons = [], [], [], [], {}
    sizes = None
    extension = None  # the official extension of a known dataset (the original globs only *<extension>)
    if str(dataset).lower() == DEMO_NAME:
        name, root, classes, samples = DEMO_NAME, None, list(DEMO_CLASSES), demo_samples()
        image_size = DEMO_SIZE if img_size is None else img_size
        loader = DemoImageLoader(image_size)
    else:
        index = _scan(dataset, data, skip_corrupt=skip_corrupt, verify=verify, check_duplicates=check_duplicates,
                      workers=workers, progress=progress, use_cache=use_cache)
        name, root, classes, samples = index.name, Path(index.root), list(index.classes), list(index.samples)
        duplicates, skipped, notes = list(index.duplicates), list(index.skipped), list(index.warnings)
        checks, reasons, sizes = list(index.notes), dict(index.skip_reasons), dict(index.sizes)
        extension = index.spec.extension if index.spec is not None else None
        image_size = PAPER_IMAGE_SIZE if img_size is None else img_size
        loader = load_rgb

    manifest, manifest_notes = _resolve_manifest(name, root, classes, samples, split_file=split_file, seed=seed,
                                                 fractions=fractions, train_per=train_per,
                                                 transductive=transductive, split_protocol=split_protocol,
                                                 sizes=sizes, unreadable=skipped)
    notes += manifest_notes
    protocol = manifest_protocol(manifest)
    if protocol == "original" and extension is not None:
        notes += _extension_notes(samples, extension)
    notes += split_gaps(manifest)
    if manifest.get("transductive"):
        notes.append(TRANSDUCTIVE_WARNING)

    train_items = manifest["train"]
    clean = [label for _, label in train_items]
    noise = None
    noisy = clean
    if noise_type is not None:
        noisy_arr, realised = apply_label_noise(clean, len(classes), noise_type, noise_rate, seed=seed,
                                                class_names=classes, dataset=name, split_protocol=protocol)
        noisy = noisy_arr.tolist()
        noise = {"type": noise_type, "rate": float(noise_rate), "realised_rate": realised}
        logger.info("label noise %s rate %.3f: realised %.4f on %d train images", noise_type, noise_rate,
                    realised, len(clean))

    pool_items = None
    if "labelled" in manifest:
        keep = manifest["labelled"]
        train_items = [train_items[i] for i in keep]
        clean, noisy = [clean[i] for i in keep], [noisy[i] for i in keep]
        pool = manifest[manifest["unlabelled_source"]]
        pool_items = [pool[i] for i in manifest["unlabelled"]]
    return DataPlan(name=name, root=root, classes=classes, image_size=image_size, loader=loader, manifest=manifest,
                    noise=noise, train_items=train_items, train_clean=clean, train_noisy=noisy, pool_items=pool_items,
                    check_command=check_command(dataset, data), warnings=notes, duplicates=duplicates,
                    skipped=skipped, skip_reasons=reasons, notes=checks)


def _extension_notes(samples: list, extension: str) -> list[str]:
    """Images the original code's case-sensitive ``glob('*' + extension)`` would not list."""
    other = [rel for rel, _ in samples if not str(rel).endswith(extension)]
    if not other:
        return []
    shown = ", ".join(other[:5]) + (f", ... ({len(other)} in all)" if len(other) > 5 else "")
    return [f"{len(other)} image(s) do not end in '{extension}' exactly: dmlrs lists them, the original code "
            f"(glob '*{extension}', case-sensitive) does not, so their classes are not split exactly as the "
            f"original splits them: {shown}"]


def _distinct_images(manifest: dict) -> set[str]:
    """Every image listed in some split, once (``val == test`` in a transductive manifest)."""
    return {p for key in SPLIT_NAMES for p, _ in manifest[key]}


def _per_class_table(bundle: DataBundle) -> list[str]:
    counts = {key: Counter(label for _, label in bundle.manifest[key]) for key in SPLIT_NAMES}
    totals = Counter(label for _, label in dict.fromkeys(
        (p, lab) for key in SPLIT_NAMES for p, lab in bundle.manifest[key]))
    width = max([len("class")] + [len(c) for c in bundle.classes])
    lines = [f"  {'class':<{width}}  {'total':>6}  {'train':>6}  {'val':>5}  {'test':>5}"]
    for label, cls in enumerate(bundle.classes):
        n = [counts[key][label] for key in SPLIT_NAMES]
        lines.append(f"  {cls:<{width}}  {totals[label]:>6}  {n[0]:>6}  {n[1]:>5}  {n[2]:>5}")
    return lines


def describe_data(bundle: DataBundle | DataPlan) -> str:
    """The text of :meth:`DataBundle.summary` (and of :meth:`DataPlan.summary`)."""
    m = bundle.manifest
    sizes = {key: len(m[key]) for key in SPLIT_NAMES}
    total = len(_distinct_images(m))
    # HR-S2DML's transductive cut (older dmlrs transductive manifests kept a 70/10/20 split instead)
    val_is_test = bool(m.get("transductive")) and m["val"] == m["test"]
    if val_is_test:
        cut = f"transductive, labelled {100 * m['train_per']:g}% of each class, rest = test"
    else:
        cut = "fractions " + "/".join(f"{100 * f:g}" for f in m.get("fractions", DEFAULT_FRACTIONS))
    lines = [
        f"dataset {bundle.name}: {bundle.num_classes} classes, {total:,} images"
        + (f" under {bundle.root}" if bundle.root is not None else " (synthetic, generated on the fly)"),
        f"image size {bundle.image_size}; split protocol {manifest_protocol(m)}, seed {m.get('seed')}, {cut} -> "
        f"train {sizes['train']:,} / val {sizes['val']:,} / test {sizes['test']:,}"
        + (" (val = the test split)" if val_is_test else "")
        + f"; manifest sha256 {bundle.manifest_hash[:12]}",
    ]
    if "labelled" in m:
        lines.append(f"semi-supervised: train_per {m['train_per']:g} -> labelled {len(m['labelled']):,}, "
                     f"unlabelled {len(m['unlabelled']):,} (from the {m['unlabelled_source']} split)")
    if bundle.noise is not None:
        lines.append(f"label noise: {bundle.noise['type']} rate {bundle.noise['rate']:g} "
                     f"(realised {bundle.noise['realised_rate']:.4f} on the train split)")
    lines.append("images per class:")
    lines += _per_class_table(bundle)
    lines += [f"checked: {note}" for note in bundle.notes]
    problems = list(bundle.warnings)  # the scan already reports duplicates and skipped files here
    lines.append(f"problems found: {len(problems)}" if problems else "problems found: none")
    lines += [f"  - {p}" for p in problems]
    return "\n".join(lines)
