"""Runs beside the papers' numbers: ``python -m dmlrs.report RUN_DIR_OR_PARENT... [--format md|csv|latex]``.

``collect`` finds run folders (``test_metrics.json`` + ``config.json``) and groups them by
reproduction row (``configs/<paper>/<row>.yaml``); ``table`` renders the groups in the papers'
layout with the metric definitions. (``dmlrs.metrics.report`` prints one run's report.)
"""
from dmlrs.report.collect import Group, Run, find_runs, group_runs, metric_value
from dmlrs.report.table import FORMATS

__all__ = ["FORMATS", "Group", "Run", "find_runs", "group_runs", "metric_value"]
