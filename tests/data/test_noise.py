"""Label noise: matrices built independently with loops, sampling follows them, realised rate,
rate 0, dependent tables mapped by class name, and the packaged json equals the shared reference."""
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from dmlrs.data.noise import (DEPENDENT_TABLES_FILE, NOISE_TYPES, apply_label_noise, sample_multinomial,
                              transition_matrix)
from dmlrs.errors import DmlrsError

REFERENCE_JSON = Path("/work/shared/reference/label_dependent_noise.json")
# sha256 of /work/shared/reference/label_dependent_noise.json (t-RNSL paper Tables V and VI)
REFERENCE_SHA256 = "2929ed2df22c3eac106fe29883bc38cb3f1971141bd3170f8b4e72b920b25376"
RATES = (0.1, 0.3, 0.5, 0.7)


def reference_matrix(noise_type, rate, c):
    """Slow float64 reference built entry by entry from the definitions."""
    m = np.zeros((c, c), dtype=np.float64)
    for y in range(c):
        for k in range(c):
            if k == y:
                m[y, k] = 1.0 - rate
            elif noise_type == "symmetric":
                m[y, k] = rate / (c - 1)
            elif noise_type == "cyclic" and k == (y + 1) % c:
                m[y, k] = rate
    return m


def _tables():
    return json.loads(DEPENDENT_TABLES_FILE.read_text())


@pytest.mark.parametrize("noise_type", ["symmetric", "cyclic"])
@pytest.mark.parametrize("rate", (0.0,) + RATES)
def test_symmetric_and_cyclic_matrices(noise_type, rate):
    m = transition_matrix(noise_type, rate, 6)
    np.testing.assert_allclose(m, reference_matrix(noise_type, rate, 6), rtol=0, atol=1e-15)
    np.testing.assert_allclose(m.sum(axis=1), 1.0, atol=1e-12)


@pytest.mark.parametrize("noise_type", ["dependent", "pairflip"])  # pairflip: the original's name for it
@pytest.mark.parametrize("dataset", ["AID", "NWPU-RESISC45"])
@pytest.mark.parametrize("rate", RATES)
def test_dependent_matrices_follow_the_table_by_class_name(dataset, rate, noise_type):
    key = "AID" if dataset == "AID" else "NWPU45"
    table = _tables()[key]
    names = list(reversed(table["classes"]))  # another label order: rows must follow the names
    m = transition_matrix(noise_type, rate, len(names), class_names=names, dataset=dataset)
    np.testing.assert_allclose(m.sum(axis=1), 1.0, atol=1e-9)
    for true_name, row in table["matrices"][str(rate)].items():
        for noisy_name in names:
            expected = row.get(noisy_name, 0.0)
            assert m[names.index(true_name), names.index(noisy_name)] == expected
    assert np.allclose(np.diag(m), 1.0 - rate)


@pytest.mark.parametrize("protocol", ["original", "stratified"])
@pytest.mark.parametrize("noise_type", NOISE_TYPES)
def test_sampling_follows_the_matrix(noise_type, protocol):
    classes = _tables()["AID"]["classes"][:30]
    c, per_class = 30, 4000
    labels = np.repeat(np.arange(c), per_class)
    noisy, realised = apply_label_noise(labels, c, noise_type, 0.3, seed=0, class_names=classes, dataset="AID",
                                        split_protocol=protocol)
    m = transition_matrix(noise_type, 0.3, c, class_names=classes, dataset="AID")
    freq = np.zeros((c, c))
    for y, k in zip(labels, noisy):
        freq[y, k] += 1
    freq /= per_class
    # binomial std <= sqrt(0.25 / 4000) ~ 0.008; 5 sigma
    assert np.abs(freq - m).max() < 0.04
    assert realised == pytest.approx((noisy != labels).mean())
    assert realised == pytest.approx(1 - np.diag(m).mean(), abs=0.01)


@pytest.mark.parametrize("protocol", ["original", "stratified"])
@pytest.mark.parametrize("noise_type", ["symmetric", "cyclic"])
@pytest.mark.parametrize("rate", RATES)
def test_realised_rate_is_close_to_the_nominal_rate(noise_type, rate, protocol):
    labels = np.arange(5000) % 7
    noisy, realised = apply_label_noise(labels, 7, noise_type, rate, seed=1, split_protocol=protocol)
    assert abs(realised - rate) < 0.03
    assert noisy.dtype == np.int64 and noisy.min() >= 0 and noisy.max() < 7
    if noise_type == "cyclic":
        changed = noisy != labels
        assert np.all(noisy[changed] == (labels[changed] + 1) % 7)


@pytest.mark.parametrize("protocol", ["original", "stratified"])
def test_noise_is_seeded(protocol):
    labels = np.arange(300) % 5
    a, _ = apply_label_noise(labels, 5, "symmetric", 0.4, seed=3, split_protocol=protocol)
    b, _ = apply_label_noise(labels, 5, "symmetric", 0.4, seed=3, split_protocol=protocol)
    c, _ = apply_label_noise(labels, 5, "symmetric", 0.4, seed=4, split_protocol=protocol)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_protocols_draw_differently_and_default_is_original():
    labels = np.arange(300) % 5
    original, _ = apply_label_noise(labels, 5, "symmetric", 0.4, seed=3, split_protocol="original")
    stratified, _ = apply_label_noise(labels, 5, "symmetric", 0.4, seed=3, split_protocol="stratified")
    default, _ = apply_label_noise(labels, 5, "symmetric", 0.4, seed=3)
    assert np.array_equal(default, original) and not np.array_equal(original, stratified)
    with pytest.raises(DmlrsError, match="--split-protocol"):
        apply_label_noise(labels, 5, "symmetric", 0.4, seed=3, split_protocol="legacy")


@pytest.mark.parametrize("protocol", ["original", "stratified"])
@pytest.mark.parametrize("noise_type", NOISE_TYPES)
def test_rate_zero_is_identity(noise_type, protocol):
    labels = np.arange(100) % 4
    noisy, realised = apply_label_noise(labels, 4, noise_type, 0.0, seed=0, dataset="custom", split_protocol=protocol)
    assert np.array_equal(noisy, labels) and realised == 0.0
    assert noisy is not labels


def test_original_sampler_refuses_bad_matrices():
    labels = np.array([0, 1])
    with pytest.raises(DmlrsError, match="rows summing to 1"):
        sample_multinomial(labels, np.array([[0.5, 0.4], [0.0, 1.0]]), 42)
    with pytest.raises(DmlrsError, match=">= 0"):
        sample_multinomial(labels, np.array([[1.2, -0.2], [0.0, 1.0]]), 42)


def test_errors_name_what_exists():
    classes = _tables()["AID"]["classes"]
    with pytest.raises(DmlrsError, match="0.1"):
        transition_matrix("dependent", 0.2, 30, class_names=classes, dataset="AID")
    with pytest.raises(DmlrsError, match="AID"):
        transition_matrix("dependent", 0.3, 21, class_names=[str(i) for i in range(21)], dataset="UCMD")
    with pytest.raises(DmlrsError, match="not in data"):
        transition_matrix("dependent", 0.3, 30, class_names=classes[:-1] + ["Other"], dataset="AID")
    with pytest.raises(DmlrsError, match="symmetric, pairflip, dependent, cyclic"):
        transition_matrix("uniform", 0.3, 5)
    with pytest.raises(DmlrsError, match="--noiseRate"):
        transition_matrix("symmetric", 1.0, 5)


def test_the_original_pairflip_is_the_label_dependent_noise_or_refused():
    classes = _tables()["AID"]["classes"]
    labels = np.arange(3000) % 30
    pairflip = apply_label_noise(labels, 30, "pairflip", 0.3, seed=42, class_names=classes, dataset="AID")
    dependent = apply_label_noise(labels, 30, "dependent", 0.3, seed=42, class_names=classes, dataset="AID")
    assert np.array_equal(pairflip[0], dependent[0]) and pairflip[1] == dependent[1]
    cyclic, _ = apply_label_noise(labels, 30, "cyclic", 0.3, seed=42, class_names=classes, dataset="AID")
    assert not np.array_equal(pairflip[0], cyclic)
    with pytest.raises(DmlrsError, match="--noiseType cyclic") as error:
        transition_matrix("pairflip", 0.3, 21, class_names=[str(i) for i in range(21)], dataset="UCMD")
    assert "original code's pairflip" in str(error.value)
    with pytest.raises(DmlrsError, match="0..3"):
        apply_label_noise([0, 4], 4, "symmetric", 0.2, seed=0)


def test_packaged_tables_equal_the_shared_reference():
    packaged = DEPENDENT_TABLES_FILE.read_bytes()
    assert hashlib.sha256(packaged).hexdigest() == REFERENCE_SHA256  # also holds where shared/ is absent (CI)
    if REFERENCE_JSON.exists():
        assert packaged == REFERENCE_JSON.read_bytes()
        assert json.loads(packaged) == json.loads(REFERENCE_JSON.read_text())
    tables = json.loads(packaged)
    assert {k: len(v["classes"]) for k, v in tables.items()} == {"AID": 30, "NWPU45": 45}
    for table in tables.values():
        assert sorted(table["matrices"]) == ["0.1", "0.3", "0.5", "0.7"]
        for rate, rows in table["matrices"].items():
            assert set(rows) == set(table["classes"])
            for true_name, row in rows.items():
                assert set(row) <= set(table["classes"])
                assert sum(row.values()) == pytest.approx(1.0, abs=1e-9)
                assert row[true_name] == pytest.approx(1.0 - float(rate))


# Rows of the t-RNSL paper's label-dependent tables (Tables V and VI), copied by hand from
# /work/shared/reference/label_dependent_noise.json: {rate: {true class: {noisy class: probability}}},
# every non-zero entry of the row (the diagonal included); all other entries of the row are 0.
PAPER_ROWS = {
    "AID": {
        0.1: {
            "Airport": {"Airport": 0.9, "BareLand": 0.02, "Industrial": 0.02, "Parking": 0.02,
                        "RailwayStation": 0.02, "StorageTanks": 0.02},
            "Industrial": {"Airport": 0.02, "Industrial": 0.9, "Square": 0.02, "StorageTanks": 0.04, "Viaduct": 0.02},
            "Viaduct": {"RailwayStation": 0.04, "Square": 0.06, "Viaduct": 0.9},
        },
        0.3: {
            "Airport": {"Airport": 0.7, "BareLand": 0.06, "Industrial": 0.06, "Parking": 0.06,
                        "RailwayStation": 0.06, "StorageTanks": 0.06},
            "Industrial": {"Airport": 0.06, "Industrial": 0.7, "Square": 0.06, "StorageTanks": 0.12, "Viaduct": 0.06},
            "Viaduct": {"RailwayStation": 0.12, "Square": 0.18, "Viaduct": 0.7},
        },
        0.5: {
            "Airport": {"Airport": 0.5, "BareLand": 0.1, "Industrial": 0.1, "Parking": 0.1,
                        "RailwayStation": 0.1, "StorageTanks": 0.1},
            "Industrial": {"Airport": 0.1, "Industrial": 0.5, "Square": 0.1, "StorageTanks": 0.2, "Viaduct": 0.1},
            "Viaduct": {"RailwayStation": 0.2, "Square": 0.3, "Viaduct": 0.5},
        },
        0.7: {
            "Airport": {"Airport": 0.3, "BareLand": 0.14, "Industrial": 0.14, "Parking": 0.14,
                        "RailwayStation": 0.14, "StorageTanks": 0.14},
            "Industrial": {"Airport": 0.14, "Industrial": 0.3, "Square": 0.14, "StorageTanks": 0.28, "Viaduct": 0.14},
            "Viaduct": {"RailwayStation": 0.28, "Square": 0.42, "Viaduct": 0.3},
        },
    },
    "NWPU45": {
        0.1: {
            "airplane": {"airplane": 0.9, "airport": 0.04, "freeway": 0.02, "industrial_area": 0.02, "runway": 0.02},
            "freeway": {"bridge": 0.02, "freeway": 0.9, "intersection": 0.02, "overpass": 0.02, "railway": 0.02,
                        "runway": 0.02},
            "wetland": {"bridge": 0.02, "forest": 0.02, "lake": 0.04, "river": 0.02, "wetland": 0.9},
        },
        0.3: {
            "airplane": {"airplane": 0.7, "airport": 0.12, "freeway": 0.06, "industrial_area": 0.06, "runway": 0.06},
            "freeway": {"bridge": 0.06, "freeway": 0.7, "intersection": 0.06, "overpass": 0.06, "railway": 0.06,
                        "runway": 0.06},
            "wetland": {"bridge": 0.06, "forest": 0.06, "lake": 0.12, "river": 0.06, "wetland": 0.7},
        },
        0.5: {
            "airplane": {"airplane": 0.5, "airport": 0.2, "freeway": 0.1, "industrial_area": 0.1, "runway": 0.1},
            "freeway": {"bridge": 0.1, "freeway": 0.5, "intersection": 0.1, "overpass": 0.1, "railway": 0.1,
                        "runway": 0.1},
            "wetland": {"bridge": 0.1, "forest": 0.1, "lake": 0.2, "river": 0.1, "wetland": 0.5},
        },
        0.7: {
            "airplane": {"airplane": 0.3, "airport": 0.28, "freeway": 0.14, "industrial_area": 0.14, "runway": 0.14},
            "freeway": {"bridge": 0.14, "freeway": 0.3, "intersection": 0.14, "overpass": 0.14, "railway": 0.14,
                        "runway": 0.14},
            "wetland": {"bridge": 0.14, "forest": 0.14, "lake": 0.28, "river": 0.14, "wetland": 0.3},
        },
    },
}
_SPEC_OF_TABLE = {"AID": "AID", "NWPU45": "NWPU-RESISC45"}


@pytest.mark.parametrize("table", sorted(PAPER_ROWS))
@pytest.mark.parametrize("rate", RATES)
def test_packaged_tables_hold_the_paper_rows(table, rate):
    from dmlrs.data.specs import DATASET_SPECS

    rows = PAPER_ROWS[table][rate]
    packaged = _tables()[table]["matrices"][str(rate)]
    for true_name, row in rows.items():
        assert packaged[true_name] == row  # same non-zero entries, same values
    classes = list(DATASET_SPECS[_SPEC_OF_TABLE[table]].classes)  # the label order comes from the specs
    m = transition_matrix("dependent", rate, len(classes), class_names=classes, dataset=table)
    for true_name, row in rows.items():
        for noisy_name in classes:
            assert m[classes.index(true_name), classes.index(noisy_name)] == row.get(noisy_name, 0.0)
