"""Find a scene dataset on disk, check it, and list its images as (relative path, label).

``scan_dataset("UCMD", "/datasets")`` looks for a known dataset under ``--data``;
``scan_dataset("/path/to/folder", None)`` reads any class-per-folder directory
(``<folder>/<class>/<image>``). Problems a user can fix raise ``DmlrsError`` with one message
that says what was looked at and what to do; differences that can be legitimate (fewer images
than the official count, non-RGB images, duplicates) become ``SceneIndex.warnings``.  Images are
checked by :mod:`dmlrs.data.verify` (headers or full decodes, in parallel, with a cache); every
unreadable file is named in one :class:`CorruptImagesError`, or left out with ``skip_corrupt``.
"""
from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from dmlrs.data.specs import DatasetSpec, describe_known_datasets, get_spec
from dmlrs.data.verify import CheckReport, check_images
from dmlrs.errors import DmlrsError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp"})
VERIFY_MODES = ("none", "header", "full")
_EXAMPLES_SHOWN = 5


@dataclass
class SceneIndex:
    """What :func:`scan_dataset` found: the class folders and the images to use."""

    name: str  # canonical dataset name, or the folder name for a generic folder
    root: Path  # the folder that directly contains the class folders
    classes: list[str]  # sorted by name; label i is classes[i]
    samples: list[tuple[str, int]]  # (path relative to root, POSIX separators, label), sorted by path
    spec: DatasetSpec | None
    warnings: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # corrupt files left out (relative paths)
    duplicates: list[tuple[str, str]] = field(default_factory=list)  # byte-identical (kept, copy)
    sizes: dict[str, int] = field(default_factory=dict)  # bytes of every image file listed (skipped ones too)
    skip_reasons: dict[str, str] = field(default_factory=dict)  # why each skipped file is unreadable
    notes: list[str] = field(default_factory=list)  # what was checked and how (not problems)

    def class_counts(self) -> dict[str, int]:
        """Number of samples per class, in label order (classes without samples count 0)."""
        per_label = Counter(label for _, label in self.samples)
        return {name: per_label[label] for label, name in enumerate(self.classes)}


def _listing(items: list[str]) -> str:
    """``a, b, c`` or ``a, b, c, d, e, ... (12 in all)`` for long lists."""
    shown = ", ".join(items[:_EXAMPLES_SHOWN])
    return shown if len(items) <= _EXAMPLES_SHOWN else f"{shown}, ... ({len(items)} in all)"


class CorruptImagesError(DmlrsError):
    """Images that cannot be read; ``files`` lists every one as ``(absolute path, reason)``."""

    def __init__(self, message: str, files: Sequence[tuple[str, str]] = ()):
        super().__init__(message)
        self.files = list(files)

    @classmethod
    def for_files(cls, root: Path, bad: list[tuple[str, str]]) -> "CorruptImagesError":
        """One message for the unreadable ``(relative path, reason)`` files ``bad`` under ``root``."""
        if len(bad) == 1:
            message = (f"corrupt image {root / bad[0][0]} ({bad[0][1]}). Replace or delete it, or pass "
                       f"--skip-corrupt to leave bad files out.")
        else:
            message = (f"{len(bad)} corrupt images under {root}: {_listing([f'{r} ({why})' for r, why in bad])}. "
                       f"Replace or delete them, or pass --skip-corrupt to leave bad files out.")
        return cls(message, [(str(root / rel), reason) for rel, reason in bad])


def _visible_children(folder: Path) -> list[Path]:
    """Entries of ``folder`` sorted by name, without hidden ones (``.DS_Store``, ``._x.jpg``)."""
    return sorted((p for p in folder.iterdir() if not p.name.startswith(".")), key=lambda p: p.name)


def _subfolders(folder: Path) -> list[Path]:
    return [p for p in _visible_children(folder) if p.is_dir()]


def _is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS


# --------------------------------------------------------------------------- locating the root


def candidate_roots(spec: DatasetSpec, data: Path) -> list[Path]:
    """Folders that may hold the class folders of ``spec``, in the order they are tried.

    1. ``<data>/<archive layout>`` (e.g. ``UCMerced_LandUse/Images``, ``PatternNet/images``);
    2. the shorter tails of that layout (``<data>/Images`` when ``--data`` is the unpacked
       ``UCMerced_LandUse`` folder itself);
    3. ``<data>/<name>`` for the canonical name and each alias, the folder name matched
       ignoring case (``<data>/ucmerced``, ``<data>/UCM``, ...);
    4. ``<data>`` itself (``--data`` is the dataset folder).
    """
    layout_parts = spec.archive_layout.split("/")
    candidates = [data.joinpath(*layout_parts[start:]) for start in range(len(layout_parts))]
    existing = {}
    if data.is_dir():
        for child in _subfolders(data):
            existing.setdefault(child.name.lower(), child)
    candidates += [existing.get(name.lower(), data / name) for name in spec.names]
    candidates.append(data)
    return list(dict.fromkeys(candidates))  # drop repeats, keep order


def _official_class_folders(spec: DatasetSpec, folder: Path) -> list[str]:
    if not folder.is_dir():
        return []
    return [name for name in spec.classes if (folder / name).is_dir()]


def find_dataset_root(spec: DatasetSpec, data: str | Path | None) -> Path:
    """The candidate root (see :func:`candidate_roots`) holding the most official class folders.

    Ties go to the earlier candidate. Raises ``DmlrsError`` when ``--data`` is missing or no
    candidate holds any official class folder (listing the paths tried and the download page).
    """
    if data is None:
        raise DmlrsError(
            f"--dataset {spec.name} needs --data DIR: the folder that holds the unpacked "
            f"{spec.name} archive ({spec.archive_layout}/<class>/...). Download: {spec.url}"
        )
    data = Path(data).expanduser()
    if not data.is_dir():
        raise DmlrsError(
            f"--data {data} is not an existing folder. Download {spec.name} from {spec.url} and "
            f"unpack it so that {data / spec.archive_layout}/<class>/ exists."
        )
    candidates = candidate_roots(spec, data)
    found = [len(_official_class_folders(spec, folder)) for folder in candidates]
    best = max(range(len(candidates)), key=lambda i: (found[i], -i))
    if found[best] == 0:
        tried = ", ".join(str(p) for p in candidates)
        raise DmlrsError(
            f"{spec.name} not found under --data {data}: none of these folders holds its class "
            f"folders (e.g. '{spec.classes[0]}/'): {tried}. Download it from {spec.url} and unpack "
            f"it into {data} (expected {data / spec.archive_layout}/<class>/<image>{spec.extension}), "
            f"or pass --data the folder that directly contains the class folders."
        )
    return candidates[best]


def _check_official_classes(spec: DatasetSpec, root: Path, warnings: list[str]) -> list[str]:
    """Error on missing official class folders; warn about extra folders. Returns the classes."""
    present = {p.name for p in _subfolders(root)}
    missing = [name for name in spec.classes if name not in present]
    if missing:
        by_lower = {name.lower(): name for name in present}
        hints = [f"'{by_lower[m.lower()]}' should be named '{m}'" for m in missing if m.lower() in by_lower]
        hint = f" ({_listing(hints)}: folder names must match exactly)" if hints else ""
        raise DmlrsError(
            f"{root} is missing {len(missing)} of the {len(spec.classes)} {spec.name} class folders: "
            f"{', '.join(missing)}{hint}. Re-download {spec.name} from {spec.url}, or pass the folder "
            f"as --dataset PATH to use it as a generic class-per-folder dataset."
        )
    extra = sorted(present - set(spec.classes))
    if extra:
        warnings.append(f"ignored folders in {root} that are not {spec.name} classes: {_listing(extra)}")
    return list(spec.classes)


def _resolve_generic_folder(dataset: str | Path, data: str | Path | None) -> Path:
    """``<data>/<dataset>`` (when --data is given) or ``<dataset>`` itself, whichever is a folder."""
    path = Path(dataset).expanduser()
    candidates = ([Path(data).expanduser() / path] if data is not None else []) + [path]
    for candidate in dict.fromkeys(candidates):
        if candidate.is_dir():
            return candidate
    tried = ", ".join(str(p) for p in dict.fromkeys(candidates))
    raise DmlrsError(
        f"unknown --dataset '{dataset}': it is not a known dataset name ({describe_known_datasets()}) "
        f"and not a folder (tried {tried}). Pass a known name with --data DIR, or the path of a "
        f"folder with one sub-folder of images per class."
    )


def _generic_classes(root: Path) -> list[str]:
    classes = [p.name for p in _subfolders(root)]
    if not classes:
        loose_images = [p for p in _visible_children(root) if _is_image_file(p)]
        hint = (
            f" It directly holds {len(loose_images)} images: put them in one sub-folder per class, "
            f"or pass the parent folder."
            if loose_images
            else ""
        )
        raise DmlrsError(
            f"no class folders in {root}: expected one sub-folder per class holding its images "
            f"({root}/<class>/<image>).{hint}"
        )
    return classes


# --------------------------------------------------------------------------- listing and checking


def _list_images(root: Path, classes: list[str]) -> tuple[list[tuple[str, int]], list[str]]:
    """(samples sorted by path, ignored non-image entries) for the class folders of ``root``."""
    samples, ignored = [], []
    for label, name in enumerate(classes):
        for entry in _visible_children(root / name):
            relative = f"{name}/{entry.name}"
            if _is_image_file(entry):
                samples.append((relative, label))
            else:
                ignored.append(relative + ("/" if entry.is_dir() else ""))
    samples.sort()
    _check_no_empty_class(root, classes, samples, "no image files")
    return samples, ignored


def _check_no_empty_class(root: Path, classes: list[str], samples: list[tuple[str, int]], why: str) -> None:
    per_label = Counter(label for _, label in samples)
    empty = [name for label, name in enumerate(classes) if per_label[label] == 0]
    if empty:
        raise DmlrsError(
            f"empty class folders in {root} ({why}; images are "
            f"{'/'.join(sorted(e[1:] for e in IMAGE_EXTENSIONS))} files): {', '.join(empty)}. "
            f"Add their images or remove the folders."
        )


def _file_sizes(root: Path, samples: list[tuple[str, int]]) -> dict[str, int]:
    sizes = {}
    for rel, _ in samples:
        try:
            sizes[rel] = (root / rel).stat().st_size
        except OSError:  # vanished or unreadable: the image check reports it
            continue
    return sizes


def _verify(root: Path, samples: list[tuple[str, int]], report: CheckReport, skip_corrupt: bool
            ) -> tuple[list[tuple[str, int]], dict[str, str], Counter, list]:
    """(readable samples, {skipped path: reason}, count per image mode, (width, height) per readable sample)."""
    bad = [(rel, result.error) for (rel, _), result in zip(samples, report.results) if not result.ok]
    if bad and not skip_corrupt:
        raise CorruptImagesError.for_files(root, bad)
    good, modes, sizes = [], Counter(), []
    for sample, result in zip(samples, report.results):
        if result.ok:
            good.append(sample)
            modes[result.mode] += 1
            sizes.append(result.size)
    return good, dict(bad), modes, sizes


def _check_note(report: CheckReport, decode: bool) -> str:
    what = "decoded" if decode else "opened (header only)"
    cache = f"unchanged since the last full check (cache {report.cache_path})"
    if report.checked == 0 and report.cached:
        return f"all {report.cached:,} images {cache}: none {what}, {report.seconds:.1f} s"
    note = f"{what} {report.checked:,} images in {report.seconds:.1f} s with {report.workers} process(es)"
    return note + (f"; {report.cached:,} {cache}" if report.cached else "")


def _file_digest(path: Path) -> str:
    return hashlib.blake2b(path.read_bytes(), digest_size=20).hexdigest()


def find_duplicates(root: Path, relative_paths: list[str]) -> list[tuple[str, str]]:
    """Byte-identical files as (first path, later copy) pairs, sorted; size first, then a hash.

    A file with k identical copies gives k - 1 pairs, each copy paired with the first path.
    """
    by_size: dict[int, list[str]] = defaultdict(list)
    for relative in relative_paths:
        by_size[(root / relative).stat().st_size].append(relative)
    pairs = []
    for same_size in by_size.values():
        if len(same_size) < 2:
            continue
        by_digest: dict[str, list[str]] = defaultdict(list)
        for relative in same_size:
            by_digest[_file_digest(root / relative)].append(relative)
        for group in by_digest.values():
            first, *copies = sorted(group)
            pairs += [(first, copy) for copy in copies]
    return sorted(pairs)


def _count_warnings(spec: DatasetSpec, counts: dict[str, int]) -> list[str]:
    differ = [f"{name} {counts[name]}/{expected}" for name, expected in spec.expected_counts.items()
              if counts[name] != expected]
    if not differ:
        return []
    return [
        f"{len(differ)} of {len(spec.classes)} classes differ from the official {spec.name} counts "
        f"(found/official): {_listing(differ)}; {sum(counts.values())} images vs {spec.total}. "
        f"Fine for a subset; otherwise re-download from {spec.url}."
    ]


def _content_warnings(
    spec: DatasetSpec | None, samples: list[tuple[str, int]], modes: Counter, sizes: list
) -> list[str]:
    warnings = []
    if spec is not None:
        other_ext = [rel for rel, _ in samples if Path(rel).suffix.lower() != spec.extension]
        if other_ext:
            warnings.append(f"{len(other_ext)} images are not {spec.extension} like the official "
                            f"{spec.name}: {_listing(other_ext)}")
        other_size = [(rel, size) for (rel, _), size in zip(samples, sizes) if tuple(size) != spec.image_size]
        if other_size:
            width, height = spec.image_size
            found = Counter(f"{w}x{h}" for _, (w, h) in other_size)
            warnings.append(f"{len(other_size)} images are not {width}x{height} like the official "
                            f"{spec.name} (found {_listing([f'{s}: {n}' for s, n in found.most_common()])}), "
                            f"e.g. {other_size[0][0]}")
    not_rgb = sorted(f"{mode}: {n}" for mode, n in modes.items() if mode != "RGB")
    if not_rgb:
        warnings.append(f"non-RGB images ({', '.join(not_rgb)}) are converted to RGB when loaded")
    return warnings


def scan_dataset(
    dataset: str | Path,
    data: str | Path | None,
    *,
    skip_corrupt: bool = False,
    verify: str = "header",
    check_duplicates: bool = False,
    workers: int | None = None,
    progress: bool = False,
    use_cache: bool = True,
) -> SceneIndex:
    """Locate, list and check a scene dataset (``--dataset``, ``--data``).

    ``dataset`` is a known name or alias (case-insensitive; see ``dmlrs.data.specs``), found
    under ``data`` by :func:`find_dataset_root`; or otherwise a class-per-folder directory,
    ``<data>/<dataset>`` or the path ``dataset`` itself. Classes are the sub-folders sorted by
    name (for a known dataset, exactly its official classes, which are sorted); images are the
    files with extension jpg/jpeg/png/tif/tiff/bmp/webp (any case) directly inside a class
    folder; hidden entries are skipped and other files are ignored with a warning.

    ``verify``: ``"none"``; ``"header"`` opens each file and reads only its header (fast; finds
    non-images and broken headers); ``"full"`` decodes every image (also finds truncated files).
    Files are checked in parallel (``workers`` processes, default: every available core; a tqdm
    bar with ``progress``) and full decodes are remembered in the verification cache
    (``use_cache``; see :mod:`dmlrs.data.verify`), which a header check also reads: a file the
    last full check could not decode (and unchanged since) is corrupt for a header check too.
    Bad files raise one :class:`CorruptImagesError` (a ``DmlrsError``) listing them all unless
    ``skip_corrupt`` (then they are listed in ``skipped``, with reasons in ``skip_reasons``).
    ``check_duplicates`` reports byte-identical files in ``duplicates``.
    """
    if verify not in VERIFY_MODES:
        raise DmlrsError(f"--verify must be one of {', '.join(VERIFY_MODES)}, not '{verify}'")
    warnings: list[str] = []
    spec = get_spec(str(dataset))
    if spec is not None:
        root = find_dataset_root(spec, data)
        classes = _check_official_classes(spec, root, warnings)
        name = spec.name
    else:
        root = _resolve_generic_folder(dataset, data)
        classes = _generic_classes(root)
        name = root.resolve().name
    samples, ignored = _list_images(root, classes)
    if ignored:
        warnings.append(f"ignored {len(ignored)} entries that are not images: {_listing(ignored)}")

    sizes = _file_sizes(root, samples)
    skipped: dict[str, str] = {}
    notes: list[str] = []
    if verify != "none":
        report = check_images(root, [rel for rel, _ in samples], decode=verify == "full", workers=workers,
                              progress=progress, use_cache=use_cache)
        notes += [_check_note(report, verify == "full")] + report.notes
        samples, skipped, modes, image_sizes = _verify(root, samples, report, skip_corrupt)
        warnings += _content_warnings(spec, samples, modes, image_sizes)
        if skipped:
            warnings.append(f"left out {len(skipped)} corrupt images: {_listing(list(skipped))}")
            _check_no_empty_class(root, classes, samples, "every image is corrupt")
    if spec is not None:
        counts = Counter(label for _, label in samples)
        warnings += _count_warnings(spec, {c: counts[i] for i, c in enumerate(classes)})

    duplicates = find_duplicates(root, [rel for rel, _ in samples]) if check_duplicates else []
    if duplicates:
        shown = [f"{a} == {b}" for a, b in duplicates]
        warnings.append(f"{len(duplicates)} byte-identical duplicate images: {_listing(shown)}")
    return SceneIndex(name=name, root=root, classes=classes, samples=samples, spec=spec, warnings=warnings,
                      skipped=list(skipped), duplicates=duplicates, sizes=sizes, skip_reasons=skipped, notes=notes)
