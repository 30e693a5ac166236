"""The four remote-sensing scene datasets, as data.

The facts (official class folder names, per-class image counts, file extension, nominal image
size, download page, paper, archive layout, accepted names) live in ``specs.json`` next to this
file; this module only loads them into frozen :class:`DatasetSpec` objects:

- UCMD (UC Merced Land Use; Yang & Newsam, ACM GIS 2010): 21 classes x 100, .tif, 256x256.
- AID (Xia et al., IEEE TGRS 2017): 30 classes, 220-420 each, 10,000 in all, .jpg, 600x600.
- NWPU-RESISC45 (Cheng et al., Proc. IEEE 2017): 45 classes x 700, .jpg, 256x256.
- PatternNet (Zhou et al., ISPRS JPRS 2018): 38 classes x 800, .jpg, 256x256.

Lookups by name are case-insensitive and accept the canonical name and every alias
(``get_spec("ucmerced") is get_spec("UC_Merced") is DATASET_SPECS["UCMD"]``).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources

SPECS_FILE = "specs.json"


@dataclass(frozen=True)
class DatasetSpec:
    """One official dataset: what its unpacked archive must contain.

    ``classes`` are the exact class folder names, sorted (this order defines the labels);
    ``counts[i]`` is the official number of images of ``classes[i]``; ``archive_layout`` is
    the POSIX path, relative to ``--data``, of the folder that directly holds the class
    folders after unpacking the official archive; ``image_size`` is (width, height).
    """

    name: str
    aliases: tuple[str, ...]
    classes: tuple[str, ...]
    counts: tuple[int, ...]
    extension: str
    image_size: tuple[int, int]
    archive_layout: str
    url: str
    paper: str

    @property
    def expected_counts(self) -> dict[str, int]:
        """Official images per class, ``{class name: count}`` in label order."""
        return dict(zip(self.classes, self.counts))

    @property
    def total(self) -> int:
        """Official number of images in the whole dataset."""
        return sum(self.counts)

    @property
    def names(self) -> tuple[str, ...]:
        """The canonical name followed by the aliases that differ from it."""
        return (self.name,) + tuple(a for a in self.aliases if a.lower() != self.name.lower())


def _spec_from_json(name: str, entry: dict) -> DatasetSpec:
    """Build one spec from its ``specs.json`` entry (classes: ordered {folder: count})."""
    classes = entry["classes"]
    return DatasetSpec(
        name=name,
        aliases=tuple(entry["aliases"]),
        classes=tuple(classes),
        counts=tuple(int(n) for n in classes.values()),
        extension=entry["extension"],
        image_size=(int(entry["image_size"][0]), int(entry["image_size"][1])),
        archive_layout=entry["archive_layout"],
        url=entry["url"],
        paper=entry["paper"],
    )


def _load_specs() -> dict[str, DatasetSpec]:
    """Read ``specs.json`` (keys starting with ``_`` are comments)."""
    text = resources.files(__package__).joinpath(SPECS_FILE).read_text(encoding="utf-8")
    raw = json.loads(text)
    return {name: _spec_from_json(name, entry) for name, entry in raw.items() if not name.startswith("_")}


DATASET_SPECS: dict[str, DatasetSpec] = _load_specs()

_BY_LOWER_NAME: dict[str, DatasetSpec] = {
    alias.lower(): spec for spec in DATASET_SPECS.values() for alias in spec.names
}


def get_spec(name: str) -> DatasetSpec | None:
    """The spec whose canonical name or alias equals ``name`` ignoring case, else ``None``."""
    return _BY_LOWER_NAME.get(str(name).strip().lower())


def describe_known_datasets() -> str:
    """One line for error messages: ``UCMD (ucmerced, UCM, UC_Merced), AID, ...``."""
    parts = []
    for spec in DATASET_SPECS.values():
        others = spec.names[1:]
        parts.append(f"{spec.name} ({', '.join(others)})" if others else spec.name)
    return ", ".join(parts)
