"""format_table: percentages for fractions, integers for counts, per-class rows only on request."""
from dmlrs.metrics.report import format_table

METRICS = {"mAP": 0.91234, "P@10": 0.5, "AP_per_class": {0: 0.25, 2: 1.0}, "num_queries": 300}


def test_scalars_are_percentages_and_counts_stay_integers():
    lines = format_table(METRICS, title="AID test").splitlines()
    assert lines[0] == "AID test"
    rows = {line.split()[0]: line.split()[1] for line in lines[3:]}
    assert rows == {"mAP": "91.23", "P@10": "50.00", "num_queries": "300"}
    assert len({len(line) for line in lines[1:]}) == 1  # aligned columns


def test_per_class_rows_use_class_names_when_given():
    table = format_table(METRICS, class_names=["airport", "bridge", "church"])
    rows = {line.split()[0]: line.split()[1] for line in table.splitlines()[2:]}
    assert rows["AP[airport]"] == "25.00" and rows["AP[church]"] == "100.00"
    assert "AP[bridge]" not in rows
    by_mapping = format_table(METRICS, class_names={2: "church"})
    assert "AP[church]" in by_mapping and "AP[0]" in by_mapping
