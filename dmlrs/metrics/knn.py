"""k-nearest-neighbour classification of embeddings, the papers' classifier.

The RS metric-learning papers (e.g. SNCA-CE, Kang et al. 2020) report the accuracy of
scikit-learn's ``KNeighborsClassifier(n_neighbors=10, weights="distance")`` with Euclidean
distance on the (unnormalised) embeddings.  This is the same classifier in chunked torch:

    neighbours N_k(x) = the k training points of smallest ||x - t||_2 (a tie at the k-th
                        place is broken arbitrarily, as in scikit-learn)
    weights     w_t = 1 / ||x - t||        ("distance"), or 1 ("uniform");
                if some neighbour is at distance exactly 0, only the zero-distance
                neighbours vote, each with weight 1 (scikit-learn's rule)
    prediction  argmax_c sum_{t in N_k(x), y_t = c} w_t   (equal votes: smallest label wins,
                as scikit-learn's argmax over its sorted ``classes_``)

Neighbours are selected with ``topk`` on ||t||^2 - 2 x.t (one addmm per chunk of test
points, no full sort); the distances of the k selected pairs are then recomputed exactly
as ||x - t|| in float64, so duplicates get distance exactly 0.  ``k`` larger than the training
set uses the whole training set (scikit-learn would raise instead).

Memory: nothing of size M x N is built.  Per chunk of C = ``chunk_size`` test points the
(C, N) float32 shifted squared distances (4 bytes each) plus the (C, k, D) neighbour
differences; peak extra memory

    C (4 N + 20 k D + 8 num_classes)  +  4 D N (float32 copy, only if train is not float32)
    + 8 M (the predictions)

bytes plus a fixed few MiB (30k x 30k, d = 128, k = 10, C = 1024: 142 MiB; measured 139 MiB),
linear in N for a fixed chunk size.
``device``: where to compute (inputs are moved there), default the train embeddings' device.
"""
from __future__ import annotations

import torch

from dmlrs.errors import DmlrsError
from dmlrs.metrics.retrieval import check_embeddings, check_labels, check_positive_int, resolve_device

KNN_WEIGHTS = ("distance", "uniform")


def knn_predict(
    train: torch.Tensor,
    train_labels: torch.Tensor,
    test: torch.Tensor,
    k: int = 10,
    weights: str = "distance",
    chunk_size: int = 1024,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Predicted labels (M,) int64 of the test embeddings (M, D) from train (N, D) / train_labels (N,),
    on the computing device (``device``, default train's).  Memory bound in the module docstring."""
    if device is not None and isinstance(train, torch.Tensor):
        device = resolve_device(device, train)
        train = train.to(device)
        test = test.to(device) if isinstance(test, torch.Tensor) else test
    train = check_embeddings(train, "train")
    test = check_embeddings(test, "test")
    train_labels = check_labels(train_labels, train.shape[0], "train_labels").to(train.device)
    if test.shape[1] != train.shape[1]:
        raise DmlrsError(f"test embeddings have width {test.shape[1]} but train embeddings have {train.shape[1]}")
    if weights not in KNN_WEIGHTS:
        raise DmlrsError(f"weights must be one of {KNN_WEIGHTS}, got {weights!r}")
    k = min(check_positive_int(k, "k"), train.shape[0])
    chunk_size = check_positive_int(chunk_size, "chunk_size")

    test = test.to(train.device)
    classes, train_class = torch.unique(train_labels, return_inverse=True)  # classes sorted ascending
    train32 = train.float()
    train_sq = train32.square().sum(dim=1)  # (N,)
    predictions = []
    for start in range(0, test.shape[0], chunk_size):
        chunk = test[start : start + chunk_size]
        # (C, N): ||t||^2 - 2 x.t = ||x - t||^2 - ||x||^2, the same order along each row
        shifted_sq = torch.addmm(train_sq.unsqueeze(0), chunk.float(), train32.T, alpha=-2.0)
        neighbours = shifted_sq.topk(k, dim=1, largest=False).indices  # (C, k), no full sort
        difference = chunk.double().unsqueeze(1) - train[neighbours].double()  # (C, k, D)
        distance = difference.square().sum(dim=2).sqrt()  # (C, k), exact 0 for duplicates
        votes = torch.zeros(chunk.shape[0], classes.numel(), dtype=torch.float64, device=train.device)
        votes.scatter_add_(1, train_class[neighbours], _vote_weights(distance, weights))
        predictions.append(classes[votes.argmax(dim=1)])
        del shifted_sq, neighbours, difference, distance, votes  # one chunk alive at a time
    return torch.cat(predictions)


def _vote_weights(distance: torch.Tensor, weights: str) -> torch.Tensor:
    """(C, k) float64 vote weights following scikit-learn's ``_get_weights``."""
    if weights == "uniform":
        return torch.ones_like(distance)
    zero = distance == 0
    has_zero = zero.any(dim=1, keepdim=True)
    return torch.where(has_zero, zero.double(), 1.0 / distance.clamp_min(torch.finfo(torch.float64).tiny))


def knn_accuracy(
    train: torch.Tensor,
    train_labels: torch.Tensor,
    test: torch.Tensor,
    test_labels: torch.Tensor,
    k: int = 10,
    weights: str = "distance",
    chunk_size: int = 1024,
    device: torch.device | str | None = None,
) -> float:
    """Fraction of test points whose :func:`knn_predict` label equals ``test_labels`` (a float in
    [0, 1]); ``device`` and memory as :func:`knn_predict`."""
    test_labels = check_labels(test_labels, check_embeddings(test, "test").shape[0], "test_labels")
    predicted = knn_predict(train, train_labels, test, k=k, weights=weights, chunk_size=chunk_size, device=device)
    return float((predicted == test_labels.to(predicted.device)).double().mean())
