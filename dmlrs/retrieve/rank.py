"""Rank the archive for query vectors: exact torch ranking, or faiss when it is installed.

* ``cosine`` (float embeddings, unit norm): score = inner product = cosine similarity, ranked
  by descending score.
* ``hamming`` (codes packed 8 bits per byte, ``numpy.packbits``): score = Hamming distance,
  ranked by ascending distance.

Ties are broken by archive order (lower index first). The torch ranking is exact and does so
for every rank: it maps scores to distinct integer keys (``descending_score_keys``) and takes
their top k; Hamming distances are counted with :func:`dmlrs.metrics.hamming.hamming_distance`
(the bytes are regrouped into int64 words, which changes no distance). faiss
(``IndexFlatIP`` / ``IndexBinaryFlat``, exhaustive search) returns the same scores; its results
are re-sorted by (score, archive order), so they equal the torch ranking except which of
several items tied at the k-th score make the cut, which faiss does not define.
"""
from __future__ import annotations

import numpy as np
import torch

from dmlrs.errors import DmlrsError
from dmlrs.metrics.hamming import hamming_distance
from dmlrs.metrics.retrieval import descending_score_keys
from dmlrs.retrieve.model import FLOAT, HAMMING

BACKENDS = ("auto", "torch", "faiss")
#: score entries per query chunk of the torch ranking (~12 bytes each at the peak)
_CHUNK_ENTRIES = 1 << 24


def faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_backend(backend: str) -> str:
    """``auto`` -> faiss when importable, else torch; ``faiss`` without faiss is an error."""
    if backend not in BACKENDS:
        raise DmlrsError(f"--backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    if backend == "auto":
        return "faiss" if faiss_available() else "torch"
    if backend == "faiss" and not faiss_available():
        raise DmlrsError("--backend faiss: faiss is not installed; pip install 'dmlrs[faiss]' (faiss-cpu) "
                         "or use --backend torch")
    return backend


def rank(queries: np.ndarray, archive: np.ndarray, k: int, *, kind: str, backend: str = "torch",
         device: torch.device | str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """Top ``min(k, len(archive))`` of the archive for each query: ``(scores, indices)``, both
    ``(Q, k)``; scores are cosine similarities (float32) or Hamming distances (int64)."""
    if kind not in (FLOAT, HAMMING):
        raise DmlrsError(f"unknown ranking kind {kind!r}")
    if archive.shape[0] == 0:
        raise DmlrsError("the archive index holds no readable image to rank")
    if queries.shape[1] != archive.shape[1]:
        raise DmlrsError(f"query vectors have {queries.shape[1]} columns, the archive's {archive.shape[1]}; "
                         "rebuild the index with the same checkpoint")
    k = min(int(k), archive.shape[0])
    if backend == "faiss":
        return _rank_faiss(queries, archive, k, kind)
    return _rank_torch(queries, archive, k, kind, torch.device(device))


def _rank_torch(queries: np.ndarray, archive: np.ndarray, k: int, kind: str, device: torch.device):
    if kind == FLOAT:
        gallery = torch.from_numpy(np.ascontiguousarray(archive, np.float32)).to(device)
        query = torch.from_numpy(np.ascontiguousarray(queries, np.float32)).to(device)
    else:
        gallery, query = _as_words(archive).to(device), _as_words(queries).to(device)
    chunk = max(1, _CHUNK_ENTRIES // gallery.shape[0])
    scores, indices = [], []
    for start in range(0, query.shape[0], chunk):
        part = query[start:start + chunk]
        if kind == FLOAT:
            score = part @ gallery.T  # (C, G) cosine similarities
            keys = descending_score_keys(score)
        else:
            score = hamming_distance(part, gallery).long()  # (C, G)
            keys = descending_score_keys(-score.float())  # distances < 2^24: exact in float32
        top = keys.topk(k, dim=1).indices  # distinct keys: exact order, ties by archive index
        scores.append(score.gather(1, top).cpu())
        indices.append(top.cpu())
    return torch.cat(scores).numpy(), torch.cat(indices).numpy()


def _as_words(packed: np.ndarray) -> torch.Tensor:
    """``(N, B)`` uint8 packed bits -> ``(N, ceil(B / 8))`` int64 words (zero bytes appended:
    they add nothing to any Hamming distance)."""
    packed = np.ascontiguousarray(packed, np.uint8)
    width = -(-packed.shape[1] // 8) * 8
    padded = np.zeros((packed.shape[0], width), np.uint8)
    padded[:, :packed.shape[1]] = packed
    return torch.from_numpy(padded.view(np.int64))


def _rank_faiss(queries: np.ndarray, archive: np.ndarray, k: int, kind: str):
    import faiss

    if kind == FLOAT:
        index = faiss.IndexFlatIP(archive.shape[1])
        index.add(np.ascontiguousarray(archive, np.float32))
        scores, indices = index.search(np.ascontiguousarray(queries, np.float32), k)
        order = np.lexsort((indices, -scores), axis=1)  # descending score, then archive order
    else:
        index = faiss.IndexBinaryFlat(archive.shape[1] * 8)
        index.add(np.ascontiguousarray(archive, np.uint8))
        scores, indices = index.search(np.ascontiguousarray(queries, np.uint8), k)
        scores = scores.astype(np.int64)
        order = np.lexsort((indices, scores), axis=1)  # ascending distance, then archive order
    return np.take_along_axis(scores, order, 1), np.take_along_axis(indices, order, 1).astype(np.int64)
