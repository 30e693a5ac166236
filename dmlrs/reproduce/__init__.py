"""Reproduce the papers' table rows: ``python -m dmlrs.reproduce PAPER|all [--rows ROW ...] [--dry-run]``.

``rows`` reads ``configs/<paper>/<row>.yaml``; ``runner`` runs them as subprocesses (skipping
finished rows, resuming interrupted ones); ``__main__`` is the command line.
"""
from dmlrs.reproduce.rows import Row, is_metric_path, load_row, load_rows, select

__all__ = ["Row", "is_metric_path", "load_row", "load_rows", "select"]
