"""Shared helpers of the benchmark scripts: timing, peak memory, machine description."""
from __future__ import annotations

import ctypes
import os
import platform
import statistics
import time

import torch


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timed(function, device="cpu"):
    """(result, seconds) of one call, synchronised on CUDA."""
    sync(device)
    start = time.perf_counter()
    result = function()
    sync(device)
    return result, time.perf_counter() - start


def timed_interleaved(functions, device, warmup: int, repeats: int, min_seconds: float = 0.0,
                      max_repeats: int | None = None) -> list[float]:
    """Median seconds per call of each function; calls alternate (after ``warmup`` rounds) so load
    changes on a shared machine hit every function alike. At least ``repeats`` rounds, more (up
    to ``max_repeats``, default 20 x repeats) until ``min_seconds`` have passed."""
    for _ in range(warmup):
        for function in functions:
            function()
    sync(device)
    times = [[] for _ in functions]
    max_repeats = max_repeats or 20 * repeats
    start_all = time.perf_counter()
    rounds = 0
    while rounds < repeats or (time.perf_counter() - start_all < min_seconds and rounds < max_repeats):
        for bucket, function in zip(times, functions):
            start = time.perf_counter()
            function()
            sync(device)
            bucket.append(time.perf_counter() - start)
        rounds += 1
    return [statistics.median(bucket) for bucket in times]


# ----------------------------------------------------------------------------- peak memory
def _status_bytes(key: str) -> int | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _libc():
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


_LIBC = _libc()


def tune_malloc() -> None:
    """glibc: serve new allocations >= 64 KiB by their own mappings, returned to the OS when freed,
    and give the free heap pages back now, so the resident set follows the live allocations
    (otherwise memory freed earlier is reused without showing in the resident set)."""
    if _LIBC is None:
        return
    try:
        _LIBC.mallopt(-3, 65536)  # M_MMAP_THRESHOLD (also turns the dynamic threshold off)
        _LIBC.malloc_trim(0)
    except AttributeError:
        pass


class PeakMemory:
    """``with PeakMemory(device) as peak: ...`` then ``peak.extra_bytes``: the peak memory the block
    used on top of what was in use when it started (None where it cannot be measured).

    CUDA: ``torch.cuda.max_memory_allocated`` (tensor allocations). CPU (Linux): peak resident set
    size, reset through ``/proc/self/clear_refs`` and read from ``VmHWM``, with glibc told to
    return freed blocks (see ``tune_malloc``); includes the kernels' workspaces."""

    def __init__(self, device="cpu"):
        self.device = torch.device(device)
        self.extra_bytes: int | None = None
        self.kind = "cuda max_memory_allocated" if self.device.type == "cuda" else "peak RSS (VmHWM)"

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._before = torch.cuda.memory_allocated(self.device)
        else:
            tune_malloc()
            try:
                with open("/proc/self/clear_refs", "w") as clear:
                    clear.write("5")
                self._before = _status_bytes("VmRSS")
            except OSError:
                self._before = None
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.extra_bytes = torch.cuda.max_memory_allocated(self.device) - self._before
        elif self._before is not None:
            peak = _status_bytes("VmHWM")
            self.extra_bytes = None if peak is None else max(peak - self._before, 0)
        return False


def rss_bytes() -> int | None:
    return _status_bytes("VmRSS")


def peak_rss_bytes() -> int | None:
    return _status_bytes("VmHWM")


def mib(num_bytes) -> float | None:
    return None if num_bytes is None else num_bytes / 2**20


# ----------------------------------------------------------------------------- machine
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device) -> dict:
    device = torch.device(device)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpu = None
    if torch.cuda.is_available():
        index = device.index if device.type == "cuda" and device.index is not None else 0
        props = torch.cuda.get_device_properties(index)
        gpu = f"{props.name} ({props.total_memory / 2**30:.0f} GiB)"
    return {"cpu": cpu_model(), "cores": cores, "torch_threads": torch.get_num_threads(), "gpu": gpu,
            "device": str(device), "torch": torch.__version__, "cuda": torch.version.cuda,
            "python": platform.python_version()}
