"""Peak extra memory of the metrics: bounded by the chunk size, linear in the gallery size.

Each measurement runs in a child process (a fresh heap) with glibc's mmap threshold at 64 KiB,
so every large tensor is its own mapping and is returned to the OS when freed: the peak
resident set size then follows the peak of live allocations (kernel workspaces included).
The child resets its peak RSS (``/proc/self/clear_refs``), runs one metric and reports
``VmHWM - VmRSS before``; ``resource.getrusage(...).ru_maxrss`` is the fallback where the peak
cannot be reset.  Asserted for each metric of the test report:

* the documented bound (the docstrings of dmlrs.metrics.retrieval / hamming / knn) holds;
* doubling the gallery doubles the extra memory (linear, not quadratic: leave-one-out over N
  and 2N items, so a Q x G matrix would quadruple it);
* doubling the chunk size doubles it.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dmlrs.errors import DmlrsError
from dmlrs.metrics import hamming_metrics, knn_accuracy, knn_predict, per_query_average_precision, retrieval_metrics

ROOT = Path(__file__).resolve().parents[2]
MIB = 2**20
SLACK = 4 * MIB  # allocator rounding, page tables, Python objects

CHILD = r"""
import json, resource, sys
import torch
torch.set_num_threads(1)
from dmlrs.metrics import hamming_metrics, knn_predict, retrieval_metrics

def status(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024

def measure(fn, fn_small):
    fn_small()  # warm-up: libraries loaded, thread pools started
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
        resettable = True
    except OSError:
        resettable = False
    before = status("VmRSS")
    fn()
    peak = status("VmHWM") if resettable else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return peak - before

def run(kind, n_query, n_gallery, dim, classes, chunk):
    generator = torch.Generator().manual_seed(0)
    gallery = torch.randn(n_gallery, dim, generator=generator)
    labels = torch.randint(0, classes, (n_gallery,), generator=generator)
    query, query_labels = gallery[:n_query].clone(), labels[:n_query].clone()
    loo = n_query == n_gallery
    g, gl = (None, None) if loo else (gallery, labels)
    if kind == "retrieval":
        fn = lambda: retrieval_metrics(query, query_labels, g, gl, chunk_size=chunk)
        small = lambda: retrieval_metrics(query[:50], query_labels[:50], gallery[:300], labels[:300], chunk_size=chunk)
    elif kind == "hamming":
        fn = lambda: hamming_metrics(query, query_labels, g, gl, chunk_size=chunk)
        small = lambda: hamming_metrics(query[:50], query_labels[:50], gallery[:300], labels[:300], chunk_size=chunk)
    else:
        fn = lambda: knn_predict(gallery, labels, query, k=10, chunk_size=chunk)
        small = lambda: knn_predict(gallery[:300], labels[:300], query[:50], k=10, chunk_size=chunk)
    r_max = int(torch.bincount(labels).max()) - int(loo)  # most relevant items of one query
    return {"extra": measure(fn, small), "r_max": r_max}

print(json.dumps([run(*config) for config in json.loads(sys.argv[1])]))
"""


def peak_extras(*configs):
    """Peak extra bytes (and the largest number of relevant items) of each
    ``(kind, n_query, n_gallery, dim, classes, chunk)`` run, measured one after the other in one
    child process (each large tensor is unmapped when freed, so runs do not see each other)."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-c", CHILD, json.dumps(configs)], capture_output=True, text=True,
                         env=env, cwd=ROOT, timeout=600)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def retrieval_bound(n_query, n_gallery, dim, chunk, r_max, num_ks=6, leave_one_out=False):
    """The bound stated in dmlrs.metrics.retrieval's docstring, in bytes."""
    copies = 4 * dim * (n_query if leave_one_out else n_query + n_gallery)
    return copies + 8 * (3 + 2 * num_ks) * n_query + chunk * n_gallery * (17 + 16 * r_max / n_gallery)


linux_only = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc/self/status")


@linux_only
def test_retrieval_memory_is_linear_in_the_gallery_and_the_chunk_and_within_the_documented_bound():
    chunk, dim = 512, 64
    small, large, narrow, wide, one_class = peak_extras(
        ("retrieval", 2000, 2000, dim, 30, chunk),  # leave-one-out over N
        ("retrieval", 4000, 4000, dim, 30, chunk),  # ... over 2N
        ("retrieval", 1024, 4000, dim, 30, chunk // 2),  # query/gallery
        ("retrieval", 1024, 4000, dim, 30, chunk),  # ... chunk doubled
        ("retrieval", 512, 4000, 32, 1, 256),  # one class: every gallery item relevant (worst case)
    )
    for n, result in ((2000, small), (4000, large)):
        bound = retrieval_bound(n, n, dim, chunk, result["r_max"], leave_one_out=True)
        assert result["extra"] <= bound + SLACK, (n, result, bound)
    assert narrow["extra"] <= retrieval_bound(1024, 4000, dim, chunk // 2, narrow["r_max"]) + SLACK
    assert wide["extra"] <= retrieval_bound(1024, 4000, dim, chunk, wide["r_max"]) + SLACK
    # N -> 2N: x2 (a Q x G matrix would give x4); chunk -> 2 chunk: x2
    assert 1.6 < large["extra"] / small["extra"] < 2.4, (small, large)
    assert 1.6 < wide["extra"] / narrow["extra"] < 2.4, (narrow, wide)
    # worst case: at most 33 bytes per (query in the chunk, gallery item)
    assert one_class["r_max"] == 4000
    assert one_class["extra"] <= 4 * 32 * 4512 + 8 * 15 * 512 + 256 * 4000 * 33 + SLACK, one_class
    # what the bound means at 30k x 30k, d = 128, 30 classes, default chunk 1024: < 0.6 GB
    assert retrieval_bound(30_000, 30_000, 128, 1024, 1100) < 0.6e9


@linux_only
def test_hamming_memory_is_linear_in_the_gallery_and_within_the_documented_bound():
    chunk, bits = 512, 64
    small, large = peak_extras(("hamming", 2000, 2000, bits, 30, chunk), ("hamming", 4000, 4000, bits, 30, chunk))
    for n, result in ((2000, small), (4000, large)):
        packing = 16 * 64 * n + 8 * n  # one word per code, leave-one-out
        bound = packing + 8 * (3 + 6 + 1) * n + chunk * n * max(16, 17 + 16 * result["r_max"] / n)
        assert result["extra"] <= bound + SLACK, (n, result, bound)
    assert 1.6 < large["extra"] / small["extra"] < 2.4, (small, large)


@linux_only
def test_knn_memory_is_linear_in_the_training_set_and_within_the_documented_bound():
    chunk, dim, k = 512, 64, 10
    small, large = peak_extras(("knn", 1024, 8000, dim, 30, chunk), ("knn", 1024, 16000, dim, 30, chunk))
    for n, result in ((8000, small), (16000, large)):
        bound = chunk * (4 * n + 20 * k * dim + 8 * 30) + 8 * 1024
        assert result["extra"] <= bound + SLACK, (n, result, bound)
    assert 1.5 < large["extra"] / small["extra"] < 2.4, (small, large)


# ----------------------------------------------------------------------------- device argument
def data(seed=0, n=300, dim=16, classes=5):
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (n,), generator=generator)
    return torch.randn(n, dim, generator=generator) + labels[:, None] * 0.3, labels


def test_device_cpu_gives_exactly_the_default_results():
    x, y = data()
    assert retrieval_metrics(x, y, device="cpu", chunk_size=64) == retrieval_metrics(x, y, chunk_size=64)
    assert retrieval_metrics(x[:100], y[:100], x[100:], y[100:], device=torch.device("cpu")) == retrieval_metrics(
        x[:100], y[:100], x[100:], y[100:])
    assert hamming_metrics(x, y, device="cpu") == hamming_metrics(x, y)
    assert knn_accuracy(x[:200], y[:200], x[200:], y[200:], device="cpu") == knn_accuracy(x[:200], y[:200], x[200:], y[200:])
    ours = per_query_average_precision(x, y, device="cpu")
    assert torch.equal(ours.nan_to_num(-1), per_query_average_precision(x, y).nan_to_num(-1))


def test_bad_device_is_named():
    x, y = data()
    with pytest.raises(DmlrsError, match="device"):
        retrieval_metrics(x, y, device="gpu-please")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_metrics_match_cpu():
    """Same definitions on the GPU; float32 matmuls may order near-ties differently, so the values
    agree to rounding of the scores, not bit for bit (Hamming ranks are integers: exact)."""
    x, y = data(n=3000, dim=32, classes=30)
    cpu = retrieval_metrics(x[:1000], y[:1000], x[1000:], y[1000:], chunk_size=256)
    gpu = retrieval_metrics(x[:1000], y[:1000], x[1000:], y[1000:], chunk_size=256, device="cuda")
    assert gpu.keys() == cpu.keys() and gpu["num_queries"] == cpu["num_queries"]
    for name, value in cpu.items():
        if isinstance(value, float):
            assert gpu[name] == pytest.approx(value, abs=2e-3), name
    loo_cpu, loo_gpu = retrieval_metrics(x, y), retrieval_metrics(x.cuda(), y.cuda())
    assert loo_gpu["mAP"] == pytest.approx(loo_cpu["mAP"], abs=1e-5)
    ours = per_query_average_precision(x, y, chunk_size=128, device="cuda")
    assert ours.device.type == "cuda" and bool(torch.isfinite(ours).all())
    assert hamming_metrics(x, y, device="cuda") == pytest.approx(hamming_metrics(x, y), abs=1e-12)
    predicted = knn_predict(x[:2000], y[:2000], x[2000:], device="cuda")
    assert predicted.device.type == "cuda"
    agree = (predicted.cpu() == knn_predict(x[:2000], y[:2000], x[2000:])).double().mean()
    assert agree > 0.99
