"""Render a metrics dict (fractions in [0, 1]) as the papers' percent table.

    >>> print(format_table({"mAP": 0.9123, "P@10": 0.5, "num_queries": 300}, title="AID test"))
    AID test
    metric          value
    ----------- ---------
    mAP             91.23
    P@10            50.00
    num_queries       300

Floats are shown as percentages with two decimals; integers (counts) as they are; nested
dicts (``AP_per_class``) are skipped unless ``class_names`` is given, then shown one row per
class as ``AP[<name>]``.
"""
from __future__ import annotations

from typing import Mapping, Sequence


def _class_name(label: int, class_names: Sequence[str] | Mapping[int, str]) -> str:
    if isinstance(class_names, Mapping):
        return str(class_names.get(label, label))
    return str(class_names[label]) if 0 <= label < len(class_names) else str(label)


def _rows(metrics: Mapping, class_names) -> list[tuple[str, str]]:
    rows = []
    for name, value in metrics.items():
        if isinstance(value, Mapping):
            if class_names is not None and name == "AP_per_class":
                rows += [(f"AP[{_class_name(int(label), class_names)}]", f"{100 * ap:.2f}") for label, ap in value.items()]
        elif isinstance(value, bool):
            rows.append((name, str(value)))
        elif isinstance(value, int):
            rows.append((name, str(value)))
        elif isinstance(value, float):
            rows.append((name, f"{100 * value:.2f}"))
    return rows


def format_table(
    metrics: Mapping,
    *,
    title: str | None = None,
    class_names: Sequence[str] | Mapping[int, str] | None = None,
) -> str:
    """Two-column text table of the scalar entries of ``metrics`` (floats as percentages)."""
    rows = _rows(metrics, class_names)
    name_width = max([len("metric")] + [len(name) for name, _ in rows])
    value_width = max([len("value"), 9] + [len(value) for _, value in rows])
    lines = [] if title is None else [title]
    lines.append(f"{'metric':<{name_width}} {'value':>{value_width}}")
    lines.append(f"{'-' * name_width} {'-' * value_width}")
    lines += [f"{name:<{name_width}} {value:>{value_width}}" for name, value in rows]
    return "\n".join(lines)
