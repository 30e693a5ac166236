"""Dataset specs: loaded faithfully from specs.json, facts of the four datasets, alias lookup."""
import dataclasses
import json
from importlib import resources

import pytest

from dmlrs.data.specs import DATASET_SPECS, DatasetSpec, describe_known_datasets, get_spec

ALIASES = {
    "UCMD": ["ucmerced", "UCM", "UCMD", "UC_Merced"],
    "AID": ["AID"],
    "NWPU-RESISC45": ["NWPU45", "NWPU-RESISC45", "RESISC45", "NWPU"],
    "PatternNet": ["PatternNet"],
}
# (classes, images per class or None when they vary, extension, (width, height), archive layout)
FACTS = {
    "UCMD": (21, 100, ".tif", (256, 256), "UCMerced_LandUse/Images"),
    "AID": (30, None, ".jpg", (600, 600), "AID"),
    "NWPU-RESISC45": (45, 700, ".jpg", (256, 256), "NWPU-RESISC45"),
    "PatternNet": (38, 800, ".jpg", (256, 256), "PatternNet/images"),
}


def test_the_four_datasets_are_known_by_canonical_name():
    assert list(DATASET_SPECS) == ["UCMD", "AID", "NWPU-RESISC45", "PatternNet"]
    for name, spec in DATASET_SPECS.items():
        assert isinstance(spec, DatasetSpec) and spec.name == name


@pytest.mark.parametrize("name", list(FACTS))
def test_spec_facts(name):
    n_classes, per_class, extension, size, layout = FACTS[name]
    spec = DATASET_SPECS[name]
    assert len(spec.classes) == n_classes == len(spec.counts)
    assert len(set(spec.classes)) == n_classes
    assert list(spec.classes) == sorted(spec.classes)  # label order = sorted folder names
    if per_class is not None:
        assert set(spec.counts) == {per_class}
        assert spec.total == n_classes * per_class
    assert (spec.extension, spec.image_size, spec.archive_layout) == (extension, size, layout)
    assert spec.url.startswith(("http://", "https://"))
    assert spec.paper


def test_aid_counts_are_the_official_ones():
    spec = DATASET_SPECS["AID"]
    total = 0
    for name in spec.classes:
        total += spec.expected_counts[name]
    assert total == 10_000 == spec.total
    assert min(spec.counts) == 220 and max(spec.counts) == 420
    assert all(count % 10 == 0 for count in spec.counts)
    assert spec.expected_counts["Industrial"] == 390
    assert spec.expected_counts["BaseballField"] == 220
    assert spec.expected_counts["Pond"] == 420


def test_class_names_spot_checks():
    assert DATASET_SPECS["UCMD"].classes[:3] == ("agricultural", "airplane", "baseballdiamond")
    assert DATASET_SPECS["AID"].classes[:3] == ("Airport", "BareLand", "BaseballField")
    assert DATASET_SPECS["NWPU-RESISC45"].classes[-1] == "wetland"
    assert DATASET_SPECS["PatternNet"].classes[-1] == "wastewater_treatment_plant"


def test_specs_equal_the_json_file():
    """The loader keeps every class, count and field of specs.json, in file order."""
    raw = json.loads(resources.files("dmlrs.data").joinpath("specs.json").read_text(encoding="utf-8"))
    entries = {k: v for k, v in raw.items() if not k.startswith("_")}
    assert list(entries) == list(DATASET_SPECS)
    for name, entry in entries.items():
        spec = DATASET_SPECS[name]
        assert [(c, n) for c, n in entry["classes"].items()] == list(zip(spec.classes, spec.counts))
        assert list(entry["aliases"]) == list(spec.aliases)
        assert entry["url"] == spec.url and entry["extension"] == spec.extension


@pytest.mark.parametrize("canonical,alias", [(c, a) for c, aliases in ALIASES.items() for a in aliases])
def test_every_alias_in_every_case(canonical, alias):
    for spelling in (alias, alias.lower(), alias.upper(), f" {alias} "):
        assert get_spec(spelling) is DATASET_SPECS[canonical]


def test_no_alias_names_two_datasets():
    seen = {}
    for spec in DATASET_SPECS.values():
        for alias in spec.names:
            assert seen.setdefault(alias.lower(), spec.name) == spec.name


@pytest.mark.parametrize("name", ["", "UCMerced_LandUse", "imagenet", "NWPU-RESISC", "AID_150"])
def test_unknown_names_give_none(name):
    assert get_spec(name) is None


def test_specs_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        DATASET_SPECS["UCMD"].extension = ".png"


def test_describe_known_datasets_lists_every_name():
    text = describe_known_datasets()
    for aliases in ALIASES.values():
        for alias in aliases:
            assert alias in text
