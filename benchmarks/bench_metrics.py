"""Time dmlrs' retrieval mAP and kNN against naive scikit-learn references on the same data.

    python benchmarks/bench_metrics.py --n 10000 --dim 128 --classes 30 --threads 2

Data: ``n`` embeddings drawn around ``classes`` random class centres (leave-one-out
retrieval, so the gallery is the query set).  Printed, in one process on the same data:

* ours      ``retrieval_metrics`` (mAP, mAP@R, P@k, R@k for the default ks, per-class AP);
* floor     one similarity matmul plus one full descending sort of every row (chunked):
            what a sort-based implementation costs before computing anything;
* naive     ``sklearn.metrics.average_precision_score`` per query on a subset of
            ``--naive-queries`` queries, extrapolated linearly to all n (said in the output),
            with the max |AP difference| against ours on that subset;
* kNN       ``knn_predict`` vs ``KNeighborsClassifier(10, weights="distance")`` on a
            half/half split, with the fraction of identical predictions.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import average_precision_score
from sklearn.neighbors import KNeighborsClassifier

from dmlrs.metrics import knn_predict, per_query_average_precision, retrieval_metrics


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=10_000, help="number of embeddings")
    parser.add_argument("--dim", type=int, default=128, help="embedding width")
    parser.add_argument("--classes", type=int, default=30, help="number of classes")
    parser.add_argument("--threads", type=int, default=2, help="torch / BLAS threads")
    parser.add_argument("--chunk-size", type=int, default=1024, help="queries per chunk")
    parser.add_argument("--naive-queries", type=int, default=300, help="queries timed for the sklearn reference")
    parser.add_argument("--noise", type=float, default=3.0, help="spread around the class centres (centres are standard normal)")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def timed(function):
    start = time.perf_counter()
    result = function()
    return result, time.perf_counter() - start


def make_data(n, dim, classes, noise, seed):
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (n,), generator=generator)
    centres = torch.randn(classes, dim, generator=generator)
    return centres[labels] + noise * torch.randn(n, dim, generator=generator), labels


def matmul_and_sort_floor(x, chunk_size):
    unit = F.normalize(x, dim=1)
    for start in range(0, x.shape[0], chunk_size):
        (unit[start : start + chunk_size] @ unit.T).sort(dim=1, descending=True)


def naive_average_precision(x, labels, num_queries):
    unit = F.normalize(x.double(), dim=1).numpy()
    labels = labels.numpy()
    values = []
    for q in range(num_queries):
        others = np.arange(len(labels)) != q
        scores = unit[others] @ unit[q]
        values.append(average_precision_score(labels[others] == labels[q], scores))
    return np.array(values)


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    x, labels = make_data(args.n, args.dim, args.classes, args.noise, args.seed)
    print(f"data: n={args.n} dim={args.dim} classes={args.classes} threads={args.threads} chunk={args.chunk_size}")

    retrieval_metrics(x[:500], labels[:500], chunk_size=args.chunk_size)  # warm-up
    result, ours_s = timed(lambda: retrieval_metrics(x, labels, chunk_size=args.chunk_size))
    _, floor_s = timed(lambda: matmul_and_sort_floor(x, args.chunk_size))
    per_query, per_query_s = timed(lambda: per_query_average_precision(x, labels, chunk_size=args.chunk_size))
    m = min(args.naive_queries, args.n)
    naive, naive_s = timed(lambda: naive_average_precision(x, labels, m))
    naive_full_s = naive_s * args.n / m
    max_diff = float(np.abs(per_query[:m].numpy() - naive).max())

    print(f"mAP = {result['mAP']:.4f}  mAP@R = {result['mAP@R']:.4f}  P@10 = {result['P@10']:.4f}")
    print(f"ours  retrieval_metrics (all metrics)      {ours_s:8.2f} s")
    print(f"ours  per-query AP only                    {per_query_s:8.2f} s")
    print(f"floor matmul + full sort of every row      {floor_s:8.2f} s   (ours / floor = {ours_s / floor_s:.2f})")
    print(
        f"naive sklearn average_precision_score      {naive_full_s:8.2f} s   "
        f"(EXTRAPOLATED from {m} queries: {naive_s:.2f} s x {args.n}/{m})"
    )
    print(f"speed-up over naive                        {naive_full_s / ours_s:8.1f} x")
    print(f"max |AP ours - AP sklearn| on {m} queries  {max_diff:.2e}")

    half = args.n // 2
    train, train_labels, test = x[:half], labels[:half], x[half:]
    knn_predict(train[:200], train_labels[:200], test[:200])  # warm-up
    ours_pred, knn_s = timed(lambda: knn_predict(train, train_labels, test, k=10, weights="distance", chunk_size=args.chunk_size))
    classifier = KNeighborsClassifier(n_neighbors=10, weights="distance", n_jobs=args.threads)
    sk_pred, sk_s = timed(lambda: classifier.fit(train.numpy(), train_labels.numpy()).predict(test.numpy()))
    agree = float((ours_pred.numpy() == sk_pred).mean())
    print(f"kNN   ours {knn_s:.2f} s   sklearn {sk_s:.2f} s   (sklearn / ours = {sk_s / knn_s:.2f})   identical predictions {agree:.4%}")


if __name__ == "__main__":
    main()
