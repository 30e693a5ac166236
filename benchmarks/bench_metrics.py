"""Retrieval, kNN and the whole evaluation at scale: dmlrs vs sort-based references, peak memory.

    python benchmarks/bench_metrics.py --suite [--quick] [--device cuda]   # what benchmarks/run.py runs
    python benchmarks/bench_metrics.py --n 10000 --threads 2               # + scikit-learn comparisons

Data: embeddings (d = 128) drawn around 30 random class centres; queries and gallery are two
independent draws.  ``--suite`` (``run(quick, device)``) measures, in one process:

* ``retrieval_10k``  ``retrieval_metrics`` (mAP, mAP@R, P@k, R@k for k in 1..1000, per-class AP)
  of 10k queries x 10k gallery vs a reference that computes the same metrics from one matmul
  and a FULL stable descending ``argsort`` of every row (chunked like ours); max |difference|
  of the reported values; the peak extra memory of ours next to its documented bound (the
  docstring's formula + its fixed 4 MiB);
* ``retrieval_30k``  the same at 30k x 30k.  The reference runs on a subset of the queries and
  its time is extrapolated linearly in the number of queries (the work per query is the same);
  with ``--quick`` on a CPU ours does too (said in ``sizes``; on a GPU ``--quick`` changes nothing here);
* ``knn_30k``        ``knn_predict`` (k = 10, distance-weighted) of 30k test x 30k train vs a
  full-``argsort`` kNN (same subset / extrapolation rule), with the fraction of equal predictions;
* ``eval_scaling``   the whole test report on synthetic embeddings -- retrieval of N queries
  against N gallery items, leave-one-out over the queries, kNN, and Hamming metrics of 128-bit
  codes -- at N and 2N: ratio = time(2N) / time(N) (the work is O(N^2): ~4 expected) and
  peak memory at both (bounded by the chunk size: ~2x).  Without ``--quick`` 2N = 30,000: the
  full report at 30k x 30k.

Peak memory: CUDA ``max_memory_allocated``; CPU peak resident set size (``benchlib.PeakMemory``).
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # benchlib, when imported from elsewhere
from benchlib import PeakMemory, mib, timed  # noqa: E402
from dmlrs.metrics import (  # noqa: E402
    hamming_metrics,
    knn_accuracy,
    knn_predict,
    per_query_average_precision,
    retrieval_metrics,
)
from dmlrs.metrics.retrieval import DEFAULT_KS  # noqa: E402

DIM, CLASSES, NOISE, CHUNK, KNN_K, BITS = 128, 30, 3.0, 1024, 10, 128


# ----------------------------------------------------------------------------- data
def make_data(n, dim=DIM, classes=CLASSES, noise=NOISE, seed=0):
    """(n, dim) float32 embeddings around ``classes`` centres and their labels (n,)."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (n,), generator=generator)
    centres = torch.randn(classes, dim, generator=generator)
    return centres[labels] + noise * torch.randn(n, dim, generator=generator), labels


# ----------------------------------------------------------------------------- references
def reference_retrieval(query, query_labels, gallery, gallery_labels, ks=DEFAULT_KS, chunk_size=CHUNK):
    """The same report as ``retrieval_metrics`` (without per-class AP) from a FULL sort of every
    row: matmul, stable descending argsort (ties by gallery index), cumulative hits."""
    qn, gn = F.normalize(query.float(), dim=1), F.normalize(gallery.float(), dim=1)
    num_gallery = gallery.shape[0]
    position = torch.arange(1, num_gallery + 1, device=query.device, dtype=torch.float64)
    columns = {name: [] for name in ["AP", "AP@R", "R"] + [f"P@{k}" for k in ks] + [f"R@{k}" for k in ks]}
    for start in range(0, query.shape[0], chunk_size):
        scores = qn[start : start + chunk_size] @ gn.T
        order = scores.argsort(dim=1, descending=True, stable=True)  # (C, G) full sort
        relevant = gallery_labels[order] == query_labels[start : start + chunk_size, None]
        hits = relevant.cumsum(dim=1)
        num_relevant = hits[:, -1]
        precision = torch.where(relevant, hits / position, 0.0)
        denominator = num_relevant.clamp_min(1).double()
        columns["AP"].append(precision.sum(dim=1) / denominator)
        columns["AP@R"].append((precision * (position <= num_relevant[:, None])).sum(dim=1) / denominator)
        columns["R"].append(num_relevant)
        for k in ks:
            within = hits[:, min(k, num_gallery) - 1].double()
            columns[f"P@{k}"].append(within / k)
            columns[f"R@{k}"].append(within / denominator)
    per_query = {name: torch.cat(parts) for name, parts in columns.items()}
    keep = per_query.pop("R") > 0
    result = {"mAP": float(per_query.pop("AP")[keep].mean()), "mAP@R": float(per_query.pop("AP@R")[keep].mean())}
    result.update({name: float(values[keep].mean()) for name, values in per_query.items()})
    return result


def reference_knn(train, train_labels, test, k=KNN_K, chunk_size=CHUNK):
    """Distance-weighted kNN (scikit-learn's rule) from a FULL ascending argsort of every row."""
    classes, train_class = torch.unique(train_labels, return_inverse=True)
    train_sq = train.square().sum(dim=1)
    predictions = []
    for start in range(0, test.shape[0], chunk_size):
        chunk = test[start : start + chunk_size]
        shifted = torch.addmm(train_sq[None], chunk, train.T, alpha=-2.0)
        neighbours = shifted.argsort(dim=1)[:, :k]  # (C, N) full sort, first k
        distance = (chunk.double()[:, None] - train[neighbours].double()).norm(dim=2)
        zero = distance == 0
        weights = torch.where(zero.any(dim=1, keepdim=True), zero.double(), 1.0 / distance.clamp_min(1e-300))
        votes = torch.zeros(chunk.shape[0], classes.numel(), dtype=torch.float64, device=test.device)
        votes.scatter_add_(1, train_class[neighbours], weights)
        predictions.append(classes[votes.argmax(dim=1)])
    return torch.cat(predictions)


# ----------------------------------------------------------------------------- memory bounds (docstrings)
FIXED = 4 * 2**20  # the docstrings' "fixed few MiB" (allocator rounding, kernel workspaces)


def retrieval_bound(num_query, num_gallery, dim, chunk, r_max, num_ks=len(DEFAULT_KS), leave_one_out=False):
    """dmlrs.metrics.retrieval's documented peak extra memory, bytes (with the fixed 4 MiB)."""
    copies = 4 * dim * (num_query if leave_one_out else num_query + num_gallery)
    chunk_bytes = min(chunk, num_query) * num_gallery * (17 + 16 * r_max / num_gallery)
    return copies + 8 * (3 + 2 * num_ks) * num_query + chunk_bytes + FIXED


def knn_bound(num_test, num_train, dim, chunk, k=KNN_K, classes=CLASSES):
    """dmlrs.metrics.knn's documented peak extra memory, bytes (with the fixed 4 MiB)."""
    return min(chunk, num_test) * (4 * num_train + 20 * k * dim + 8 * classes) + 8 * num_test + FIXED


def hamming_bound(num_query, num_gallery, bits, chunk, r_max, num_ks=len(DEFAULT_KS)):
    """dmlrs.metrics.hamming's documented peak extra memory, bytes (with the fixed 4 MiB)."""
    words = -(-bits // 64)
    per_entry = max(16 + 8 * (words > 1), 17 + 16 * r_max / num_gallery)
    return (16 * 64 * words * (num_query + num_gallery) + 8 * (4 + num_ks) * num_query
            + min(chunk, num_query) * num_gallery * per_entry + FIXED)


def most_relevant(query_labels, gallery_labels):
    counts = torch.bincount(gallery_labels.cpu())
    return int(counts[query_labels.cpu().unique()].max())


# ----------------------------------------------------------------------------- measurements
def measure(fn, device):
    """(result, seconds, peak extra bytes) of one call."""
    with PeakMemory(device) as peak:
        result, seconds = timed(fn, device)
    return result, seconds, peak.extra_bytes


def max_difference(ours: dict, reference: dict) -> float:
    return max(abs(ours[name] - value) for name, value in reference.items())


def scaled_times(n, sizes, ratio_means, ours, reference) -> dict:
    """The entry's times, each scaled to ``n`` items from the ``(seconds, items timed, what an item
    is)`` of ``ours`` and of ``reference``; a side timed on fewer than n items says so in ``sizes``."""
    scaled, notes = {}, []
    for who, key, (seconds, timed_on, unit) in (("ours", "dmlrs_s", ours), ("reference", "reference_s", reference)):
        scaled[key] = seconds * n / timed_on
        if timed_on < n:
            notes.append(f"{who} timed on {timed_on} {unit}, extrapolated x{n / timed_on:.1f}")
    return {**scaled, "ratio": scaled["reference_s"] / scaled["dmlrs_s"],
            "sizes": sizes + ("; " + "; ".join(notes) if notes else ""), "ratio_means": ratio_means,
            "extrapolated": bool(notes)}


def bench_retrieval(n, query_subset, reference_subset, device):
    """ours on ``query_subset`` (None: all n) queries x n gallery, reference on ``reference_subset``."""
    gallery, gallery_labels = make_data(n, seed=1)
    query, query_labels = make_data(n, seed=2)
    gallery, gallery_labels, query, query_labels = (t.to(device) for t in (gallery, gallery_labels, query, query_labels))
    q_ours = n if query_subset is None else min(query_subset, n)
    q_ref = n if reference_subset is None else min(reference_subset, n)
    retrieval_metrics(query[:64], query_labels[:64], gallery[:512], gallery_labels[:512], device=device)  # warm-up
    # ks given: every k of the reference and the memory bound, also those above a quick run's gallery
    ours, ours_s, peak = measure(lambda: retrieval_metrics(query[:q_ours], query_labels[:q_ours], gallery,
                                                           gallery_labels, ks=DEFAULT_KS, device=device), device)
    reference, reference_s = timed(lambda: reference_retrieval(query[:q_ref], query_labels[:q_ref], gallery,
                                                              gallery_labels), device)
    if q_ours == q_ref:
        check = ours
    else:  # compare on the reference's queries
        check = retrieval_metrics(query[:q_ref], query_labels[:q_ref], gallery, gallery_labels, ks=DEFAULT_KS,
                                  device=device)
    bound = retrieval_bound(q_ours, n, DIM, CHUNK, most_relevant(query_labels, gallery_labels))
    return {
        **scaled_times(n, f"{n} queries x {n} gallery, d={DIM}, {CLASSES} classes, chunk {CHUNK}",
                       "full-argsort reference time / dmlrs time",
                       ours=(ours_s, q_ours, f"queries x {n} gallery"), reference=(reference_s, q_ref, "queries")),
        "mAP": ours["mAP"], "max_abs_diff": max_difference(check, reference),
        "peak_extra_mib": mib(peak), "bound_mib": mib(bound),
    }


def bench_knn(n, test_subset, reference_subset, device):
    train, train_labels = make_data(n, seed=1)
    test, _ = make_data(n, seed=2)
    train, train_labels, test = train.to(device), train_labels.to(device), test.to(device)
    m_ours = n if test_subset is None else min(test_subset, n)
    m_ref = n if reference_subset is None else min(reference_subset, n)
    knn_predict(train[:512], train_labels[:512], test[:64], device=device)  # warm-up
    ours, ours_s, peak = measure(lambda: knn_predict(train, train_labels, test[:m_ours], k=KNN_K, device=device),
                                 device)
    reference, reference_s = timed(lambda: reference_knn(train, train_labels, test[:m_ref]), device)
    m = min(m_ours, m_ref)
    agree = float((ours[:m] == reference[:m]).double().mean())
    return {
        **scaled_times(n, f"{n} test x {n} train, d={DIM}, k={KNN_K}, chunk {CHUNK}",
                       "full-argsort kNN time / dmlrs time",
                       ours=(ours_s, m_ours, "test points"), reference=(reference_s, m_ref, "test points")),
        "agreement": agree, "peak_extra_mib": mib(peak), "bound_mib": mib(knn_bound(m_ours, n, DIM, CHUNK)),
    }


def full_report(query, query_labels, gallery, gallery_labels, query_codes, gallery_codes, device):
    """What ``Evaluator.test_report`` computes once the embeddings are extracted."""
    return {
        "knn_acc": knn_accuracy(gallery, gallery_labels, query, query_labels, k=KNN_K, device=device),
        "retrieval": retrieval_metrics(query, query_labels, gallery, gallery_labels, device=device),
        "retrieval_leave_one_out": retrieval_metrics(query, query_labels, device=device),
        "hamming": hamming_metrics(query_codes, query_labels, gallery_codes, gallery_labels, device=device),
    }


def bench_eval_scaling(n, device):
    """The whole report at N and 2N (queries = gallery size)."""
    out = {}
    projection = torch.randn(DIM, BITS, generator=torch.Generator().manual_seed(3))
    for size in (n, 2 * n):
        gallery, gallery_labels = make_data(size, seed=1)
        query, query_labels = make_data(size, seed=2)
        gallery_codes, query_codes = gallery @ projection, query @ projection
        tensors = [t.to(device) for t in (query, query_labels, gallery, gallery_labels, query_codes, gallery_codes)]
        full_report(*(t[:200] for t in tensors), device=device)  # warm-up
        report, seconds, peak = measure(lambda: full_report(*tensors, device=device), device)
        r_max = most_relevant(query_labels, gallery_labels)
        bound = max(retrieval_bound(size, size, DIM, CHUNK, r_max), knn_bound(size, size, DIM, CHUNK),
                    hamming_bound(size, size, BITS, CHUNK, r_max))
        out[size] = {"seconds": seconds, "peak_extra_mib": mib(peak), "bound_mib": mib(bound),
                     "mAP": report["retrieval"]["mAP"]}
    small, large = out[n], out[2 * n]
    memory_ratio = (None if not small["peak_extra_mib"] or large["peak_extra_mib"] is None
                    else large["peak_extra_mib"] / small["peak_extra_mib"])
    return {
        "n": n, "n_seconds": small["seconds"], "2n_seconds": large["seconds"],
        "ratio": large["seconds"] / small["seconds"], "memory_ratio": memory_ratio,
        "n_peak_extra_mib": small["peak_extra_mib"], "2n_peak_extra_mib": large["peak_extra_mib"],
        "2n_bound_mib": large["bound_mib"],
        "sizes": f"full test report (retrieval, leave-one-out, kNN, {BITS}-bit Hamming), "
                 f"N = {n} -> {2 * n} queries = gallery, d={DIM}, chunk {CHUNK}",
        "ratio_means": "time(2N) / time(N); O(N^2) work -> ~4 expected",
    }


SIZES = {
    # retrieval/knn: (n, ours' query subset, reference's query subset); eval scaling N
    "tiny": {"r10": (600, None, None), "r30": (1200, 300, 200), "knn": (1200, 300, 200), "scale": 300},
    "quick": {"r10": (10_000, None, None), "r30": (30_000, 1024, 1024), "knn": (30_000, 2048, 1024), "scale": 2000},
    "full": {"r10": (10_000, None, None), "r30": (30_000, None, 3072), "knn": (30_000, None, 3072), "scale": 15_000},
}


def run(quick: bool, device: str = "cpu", tiny: bool = False) -> dict:
    """``{"retrieval_10k", "retrieval_30k", "knn_30k", "eval_scaling"}`` entries (see the module
    docstring), each with ``ratio`` and ``sizes``."""
    gpu = torch.device(device).type == "cuda"
    size = SIZES["tiny" if tiny else "quick" if quick and not gpu else "full"]  # a GPU does the full sizes in seconds
    return {
        "retrieval_10k": bench_retrieval(*size["r10"], device),
        "retrieval_30k": bench_retrieval(*size["r30"], device),
        "knn_30k": bench_knn(*size["knn"], device),
        "eval_scaling": bench_eval_scaling(size["scale"], device),
    }


# ----------------------------------------------------------------------------- scikit-learn comparison
def naive_average_precision(x, labels, num_queries):
    from sklearn.metrics import average_precision_score

    unit = F.normalize(x.double(), dim=1).numpy()
    labels = labels.numpy()
    values = []
    for q in range(num_queries):
        others = np.arange(len(labels)) != q
        values.append(average_precision_score(labels[others] == labels[q], unit[others] @ unit[q]))
    return np.array(values)


def sklearn_comparison(args):
    """Leave-one-out AP per query vs scikit-learn (extrapolated), kNN vs KNeighborsClassifier."""
    from sklearn.neighbors import KNeighborsClassifier

    x, labels = make_data(args.n, args.dim, args.classes, args.noise, args.seed)
    print(f"data: n={args.n} dim={args.dim} classes={args.classes} threads={torch.get_num_threads()} chunk={args.chunk_size}")
    retrieval_metrics(x[:500], labels[:500], chunk_size=args.chunk_size)  # warm-up
    result, ours_s = timed(lambda: retrieval_metrics(x, labels, chunk_size=args.chunk_size))
    per_query, _ = timed(lambda: per_query_average_precision(x, labels, chunk_size=args.chunk_size))
    m = min(args.naive_queries, args.n)
    naive, naive_s = timed(lambda: naive_average_precision(x, labels, m))
    naive_full_s = naive_s * args.n / m
    print(f"mAP = {result['mAP']:.4f}  mAP@R = {result['mAP@R']:.4f}  P@10 = {result['P@10']:.4f}")
    print(f"ours  retrieval_metrics (all metrics)      {ours_s:8.2f} s")
    print(f"naive sklearn average_precision_score      {naive_full_s:8.2f} s   "
          f"(EXTRAPOLATED from {m} queries: {naive_s:.2f} s x {args.n}/{m})   speed-up {naive_full_s / ours_s:.1f} x")
    print(f"max |AP ours - AP sklearn| on {m} queries  {float(np.abs(per_query[:m].numpy() - naive).max()):.2e}")
    half = args.n // 2
    train, train_labels, test = x[:half], labels[:half], x[half:]
    ours_pred, knn_s = timed(lambda: knn_predict(train, train_labels, test, k=10, chunk_size=args.chunk_size))
    classifier = KNeighborsClassifier(n_neighbors=10, weights="distance", n_jobs=torch.get_num_threads())
    sk_pred, sk_s = timed(lambda: classifier.fit(train.numpy(), train_labels.numpy()).predict(test.numpy()))
    agree = float((ours_pred.numpy() == sk_pred).mean())
    print(f"kNN   ours {knn_s:.2f} s   sklearn {sk_s:.2f} s   (sklearn / ours = {sk_s / knn_s:.2f})   "
          f"identical predictions {agree:.4%}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", action="store_true", help="the run.py measurements (retrieval_10k/30k, knn_30k, eval_scaling)")
    parser.add_argument("--quick", action="store_true", help="with --suite: smaller subsets (see SIZES)")
    parser.add_argument("--device", default="cpu", help="with --suite: cpu or cuda")
    parser.add_argument("--n", type=int, default=10_000, help="number of embeddings (scikit-learn comparison)")
    parser.add_argument("--dim", type=int, default=DIM, help="embedding width")
    parser.add_argument("--classes", type=int, default=CLASSES, help="number of classes")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--chunk-size", type=int, default=CHUNK, help="queries per chunk")
    parser.add_argument("--naive-queries", type=int, default=300, help="queries timed for the sklearn reference")
    parser.add_argument("--noise", type=float, default=NOISE, help="spread around the class centres")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.suite:
        sklearn_comparison(args)
        return
    for name, entry in run(args.quick, args.device).items():
        print(name, {key: round(value, 4) if isinstance(value, float) else value for key, value in entry.items()})


if __name__ == "__main__":
    main()
