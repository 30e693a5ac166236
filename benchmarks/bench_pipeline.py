"""Input pipeline: images per second delivered into the model, dmlrs ``cached`` vs the PIL reference.

What is timed (no model): the training DataLoader of dmlrs (``dmlrs.engine.loaders.train_loader``,
``--num_workers`` processes, batches of ``--batch-size``) plus finishing each batch on the device
(``dmlrs.data.gpu_augment.finish_images``, which is what ``Trainer._step`` calls), until the
augmented, normalised float batch sits on the device:

* **original**: ``--input-pipeline pil``, the papers' per-image transform exactly as before --
  every image decoded, ``Resize((s, s))``, ``RandomGrayscale(0.2)``, ``ColorJitter(0.4, 0.4,
  0.4, 0.4)``, ``RandomHorizontalFlip``, ``ToTensor``, ``Normalize`` in the loader processes;
  the device only receives the float batch;
* **dmlrs**: ``--input-pipeline cached``: the loader processes read the resized uint8 image from
  the decoded-image cache and draw the augmentation parameters; the batch is augmented on the
  device (the CPU here) with the batched ops.

Both run in the same process on the same images, over the same persistent loader machinery;
timed runs alternate between the two (after a warm-up pass each) so load changes on a shared
machine hit both alike; the median run is reported, and ``ratio = dmlrs / original``. The cache
build (a one-off, parallel over the cores) is timed separately, and so is the augmentation
alone, per op (where the time goes).

Data: ``/work/shared/data/AID_150`` (AID, 10,000 JPEGs at 150 px) when present, else
(and with ``--quick``) a generated folder of JPEGs. The cache goes to the dmlrs cache dir
(``$DMLRS_CACHE``...); ``--fresh-cache`` builds it in a temporary folder instead.

    python benchmarks/bench_pipeline.py                    # AID_150, 256 px, 2 workers, CPU
    python benchmarks/bench_pipeline.py --quick            # generated images, fewer batches
    python benchmarks/bench_pipeline.py --device cuda --workers 8

``run(quick, device)`` (used by ``benchmarks/run.py``) returns
``{"dmlrs_img_per_s", "original_img_per_s", "ratio", ...}``.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from dmlrs.data import build_data  # noqa: E402
from dmlrs.data import gpu_augment as G  # noqa: E402
from dmlrs.engine.loaders import release_loaders, train_loader  # noqa: E402

AID_150 = Path("/work/shared/data/AID_150")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def generated_folder(root: Path, classes: int = 10, per_class: int = 60, size: int = 150) -> Path:
    """A class-per-folder set of JPEGs (the fixtures' generator) when the real data is absent."""
    from dmlrs.data.fixtures import write_image_folder

    folder = root / "generated"
    if not folder.exists():
        write_image_folder(folder, {f"class_{c:02d}": per_class for c in range(classes)}, size=size, ext=".jpg")
    return folder


def _bundle(dataset: str, data, size: int, pipeline: str, seed: int):
    return build_data(dataset, data, img_size=size, seed=seed, input_pipeline=pipeline, cache_progress=False)


def _process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a live process (Linux /proc), 0 where unavailable."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def _cpu_seconds(loader) -> float:
    """CPU time so far of this process (all threads) and of the loader's worker processes."""
    iterator = getattr(getattr(loader, "loader", loader), "_iterator", None)
    workers = getattr(iterator, "_workers", []) or []
    return time.process_time() + sum(_process_cpu_seconds(w.pid) for w in workers if w.pid)


def _epoch_runner(bundle, device: torch.device, batch_size: int, workers: int, batches: int):
    """A function that pulls ``batches`` finished batches (a fresh shuffle each call, consumed to the
    end: no prefetched batch is thrown away); returns (images, CPU seconds of this process and of
    the loader processes while it ran)."""
    from dmlrs.engine.loaders import ShuffledBatches

    state = {"epoch": 0}
    pin = device.type == "cuda"

    def run() -> tuple[int, float]:
        state["epoch"] += 1
        seed = 1000 + state["epoch"]
        order = list(ShuffledBatches(len(bundle.train), batch_size, torch.Generator().manual_seed(seed)))[:batches]
        loader = train_loader(bundle.train, batch_size, seed=seed, num_workers=workers, pin_memory=pin,
                              batch_sampler=order)
        cpu = _cpu_seconds(loader)  # persistent workers: alive since the warm-up
        seen = 0
        for batch in loader:
            seen += G.finish_images(batch["image"], device, batch.get("augment")).shape[0]
        _sync(device)
        return seen, _cpu_seconds(loader) - cpu

    return run


def time_pipelines(dataset: str, data, *, size: int, device: torch.device, batch_size: int, workers: int,
                   batches: int, rounds: int, seed: int = 0) -> dict:
    start = time.perf_counter()
    cached = _bundle(dataset, data, size, "cached", seed)
    cache_seconds = time.perf_counter() - start
    cache_note = next((n for n in cached.notes if n.startswith("image cache")), "")
    pil = _bundle(dataset, data, size, "pil", seed)
    runners = {"original": _epoch_runner(pil, device, batch_size, workers, batches),
               "dmlrs": _epoch_runner(cached, device, batch_size, workers, batches)}
    for run in runners.values():  # warm-up: workers start, caches fill
        run()
    rates = {name: [] for name in runners}
    cpu_ms = {name: [] for name in runners}
    for _ in range(rounds):
        for name, run in runners.items():
            begin = time.perf_counter()
            seen, cpu = run()
            rates[name].append(seen / (time.perf_counter() - begin))
            cpu_ms[name].append(1e3 * cpu / seen)
    release_loaders()
    result = {"dmlrs_img_per_s": statistics.median(rates["dmlrs"]),
              "original_img_per_s": statistics.median(rates["original"])}
    result["ratio"] = result["dmlrs_img_per_s"] / result["original_img_per_s"]
    result["dmlrs_cpu_ms_per_img"] = statistics.median(cpu_ms["dmlrs"])
    result["original_cpu_ms_per_img"] = statistics.median(cpu_ms["original"])
    result["cpu_ratio"] = result["original_cpu_ms_per_img"] / result["dmlrs_cpu_ms_per_img"]
    result.update(rounds={k: [round(v, 1) for v in vals] for k, vals in rates.items()},
                  cache_seconds=cache_seconds, cache=cache_note, images=len(cached.train))
    return result


def time_ops(device: torch.device, size: int, batch: int = 32, repeats: int = 5) -> dict:
    """ms per image of each augmentation op alone (batch of ``batch`` random images on ``device``;
    on a CPU with one thread, as the loader workers run it)."""
    if device.type == "cpu":
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return _time_ops(device, size, batch, repeats)
        finally:
            torch.set_num_threads(threads)
    return _time_ops(device, size, batch, repeats)


def _time_ops(device: torch.device, size: int, batch: int, repeats: int) -> dict:
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=generator).to(device)
    draw = G.AugmentParams()
    with torch.random.fork_rng():
        torch.manual_seed(0)
        params = torch.stack([draw.draw() for _ in range(batch)])
    plan = G.AugmentPlan(params)
    x = images.float()
    workspace = G.Workspace()
    ones = torch.full((batch,), 1.3, device=device)
    hue = torch.full((batch,), 0.3, device=device)
    ops = {
        "uint8 -> float": lambda: images.float(),
        "grayscale": lambda: G.grayscale_(x.clone(), ws=workspace),
        "brightness": lambda: G.adjust_brightness_(x.clone(), ones),
        "contrast": lambda: G.adjust_contrast_(x.clone(), ones, ws=workspace),
        "saturation": lambda: G.adjust_saturation_(x.clone(), ones, ws=workspace),
        "hue": lambda: G.adjust_hue_(x.clone(), hue, ws=workspace),
        "flip": lambda: x.flip(-1),
        "normalize": lambda: G.normalize_(x.clone()),
        "clone (subtract from the in-place ops)": lambda: x.clone(),
        "whole augment_batch (all ops, random order)": lambda: G.augment_batch(images, plan),
        "eval (uint8 -> normalised)": lambda: G.eval_images(images),
    }
    out = {}
    if device.type != "cpu":  # the accelerator schedule must give the CPU's (= PIL's) values exactly
        out["bit-identical to the CPU (1 = yes)"] = float(torch.equal(
            G.augment_batch(images, plan).cpu(), G.augment_batch(images.cpu(), plan, schedule="order")))
    for name, op in ops.items():
        op()
        _sync(device)
        times = []
        for _ in range(repeats):
            begin = time.perf_counter()
            op()
            _sync(device)
            times.append(time.perf_counter() - begin)
        out[name] = 1e3 * min(times) / batch
    return out


def run(quick: bool = False, device: str = "cpu", *, tiny: bool = False, workers: int = 2, size: int = 256,
        batch_size: int = 128, data: str | None = None, fresh_cache: bool = False, seed: int = 0) -> dict:
    """Images/s into the model of the cached pipeline and of the PIL reference (module doc).

    ``quick``: generated images, fewer batches; ``tiny`` (tests of the benchmark runner): seconds,
    at 64 px -- its numbers only show that everything runs."""
    if tiny:
        quick, size, batch_size = True, 64, 16
    device = torch.device(device)
    saved_cache = os.environ.get("DMLRS_CACHE")
    with tempfile.TemporaryDirectory() as scratch:
        try:
            if fresh_cache or quick:
                os.environ["DMLRS_CACHE"] = str(Path(scratch) / "cache")
            if data is None and AID_150.is_dir() and not quick:
                dataset, root = "AID", AID_150
            else:
                dataset = str(Path(data) if data else generated_folder(Path(scratch)))
                root = None
            batches, rounds = (2, 1) if tiny else (4, 3) if quick else (8, 5)
            result = time_pipelines(dataset, root, size=size, device=device, batch_size=batch_size,
                                    workers=workers, batches=batches, rounds=rounds, seed=seed)
        finally:
            if saved_cache is None:
                os.environ.pop("DMLRS_CACHE", None)
            else:
                os.environ["DMLRS_CACHE"] = saved_cache
    result["ops_ms_per_image"] = time_ops(device, size, batch=2 if tiny else 8 if quick else 16,
                                          repeats=1 if tiny else 5)
    result.update(device=str(device), workers=workers, size=size, batch_size=batch_size,
                  threads=torch.get_num_threads(), data=str(root or dataset))
    result["sizes"] = (f"{Path(result['data']).name} ({result['images']} train images), {size} px, {workers} loader "
                       f"workers, batch {batch_size}; CPU ms/img original {result['original_cpu_ms_per_img']:.2f}, "
                       f"dmlrs {result['dmlrs_cpu_ms_per_img']:.2f} (x{result['cpu_ratio']:.2f})")
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("-b", "--batch-size", type=int, default=128)
    parser.add_argument("--data", default=None, help="a class-per-folder dataset (default: AID_150 or generated)")
    parser.add_argument("--fresh-cache", action="store_true", help="build the cache in a temporary folder")
    args = parser.parse_args(argv)
    result = run(args.quick, args.device, workers=args.workers, size=args.size, batch_size=args.batch_size,
                 data=args.data, fresh_cache=args.fresh_cache)
    print(f"data {result['data']} ({result['images']} training images), {result['size']} px, device "
          f"{result['device']}, {result['workers']} loader workers, batch {result['batch_size']}, "
          f"{result['threads']} torch threads")
    print(f"cache: {result['cache']} ({result['cache_seconds']:.1f} s including the scan)")
    print(f"original (PIL per image): {result['original_img_per_s']:8.1f} img/s   runs {result['rounds']['original']}")
    print(f"dmlrs (cached + batched): {result['dmlrs_img_per_s']:8.1f} img/s   runs {result['rounds']['dmlrs']}")
    print(f"ratio dmlrs / original:   {result['ratio']:8.2f}x")
    print(f"CPU time per image (this process + loader processes; independent of other load on the machine): "
          f"original {result['original_cpu_ms_per_img']:.2f} ms, dmlrs {result['dmlrs_cpu_ms_per_img']:.2f} ms, "
          f"ratio {result['cpu_ratio']:.2f}x")
    print("augmentation alone, ms per image:")
    for name, value in result["ops_ms_per_image"].items():
        print(f"  {name:40s} {value:7.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
