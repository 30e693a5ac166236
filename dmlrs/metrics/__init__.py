"""Evaluation metrics: retrieval (float embeddings), hashing (binary codes), kNN, report table.

Definitions are pinned in each module's docstring and in tests/metrics/.
"""
from dmlrs.metrics.hamming import (
    binarize,
    hamming_distance,
    hamming_metrics,
    hamming_precision_at,
    pack_codes,
    unpack_codes,
)
from dmlrs.metrics.knn import knn_accuracy, knn_predict
from dmlrs.metrics.report import format_table
from dmlrs.metrics.retrieval import per_query_average_precision, retrieval_metrics

__all__ = [
    "binarize",
    "format_table",
    "hamming_distance",
    "hamming_metrics",
    "hamming_precision_at",
    "knn_accuracy",
    "knn_predict",
    "pack_codes",
    "per_query_average_precision",
    "retrieval_metrics",
    "unpack_codes",
]
