"""Run every benchmark and print ONE Markdown table (ratios first), naming the machine.

    python benchmarks/run.py                          # full sizes (CPU: long; see each script)
    python benchmarks/run.py --quick                  # < 5 minutes on 2 CPU cores
    python benchmarks/run.py --device cuda --json benchmarks.json

What runs (each script also runs on its own, ``--help`` there says more):

| entry                  | script                 | ratio                                              |
|------------------------|------------------------|----------------------------------------------------|
| ``input_pipeline``     | ``bench_pipeline.py``  | dmlrs images/s / the original loader's images/s   |
| ``snca_step``          | ``bench_snca.py``      | original ms / dmlrs ms (SNCA forward+backward+memory) |
| ``loss_<name>``        | ``bench_losses.py``    | reference ms / dmlrs ms, forward + backward, for mnce, bnm, trnsl, cdne, srl |
| ``retrieval_10k/_30k`` | ``bench_metrics.py``   | full-argsort reference time / dmlrs time          |
| ``knn_30k``            | ``bench_metrics.py``   | full-argsort kNN time / dmlrs time                |
| ``eval_scaling``       | ``bench_metrics.py``   | time(2N) / time(N) of the whole test report        |
| ``train_step[_resnet50]`` | ``bench_train_step.py`` | fp32 step time / autocast + channels_last step time (ResNet18 / ResNet50) |

Every ratio is "higher is better for dmlrs" except ``eval_scaling`` (~4 = quadratic work with
memory growing only linearly).  A benchmark that fails (or whose script is missing) is
recorded as ``{"error": "..."}`` and the others still run.  ``--json FILE`` writes every entry
with all its numbers, plus ``machine`` and ``run`` (mode, device, wall time).  The hidden
``--tiny`` flag (tests) runs seconds-long sizes and skips a script whose ``run`` has no
``tiny`` argument.
"""
from __future__ import annotations

import argparse
import importlib
import inspect
import json
import math
import os
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(1, os.path.dirname(HERE))  # the repository, for `import dmlrs` without installing

import torch  # noqa: E402

from benchlib import machine, tune_malloc  # noqa: E402

LOSS_NAMES = ("mnce", "bnm", "trnsl", "cdne", "srl")


def call_run(module_name: str, quick: bool, device: str, tiny: bool):
    """``module.run(quick, device[, tiny])``, imported lazily."""
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            raise RuntimeError(f"benchmarks/{module_name}.py not found") from None
        raise
    run = getattr(module, "run", None)
    if run is None:
        raise RuntimeError(f"benchmarks/{module_name}.py has no run(quick, device)")
    if not tiny:
        return run(quick, device)
    if "tiny" not in inspect.signature(run).parameters:  # --tiny is for tests: seconds, not minutes
        return {"skipped": f"--tiny: benchmarks/{module_name}.py's run() has no tiny mode"}
    return run(quick, device, tiny=True)


def error_entry(exc: BaseException) -> dict:
    last = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
    where = f" ({os.path.basename(last[0].filename)}:{last[0].lineno})" if last else ""
    return {"error": f"{type(exc).__name__}: {exc}{where}"}


def collect(quick: bool, device: str, tiny: bool, only: set[str] | None, log) -> dict:
    """Every entry, in table order."""
    results: dict = {}

    def stage(name, function, unpack):
        if only and name not in only:
            return
        log(f"[run.py] {name} ...")
        start = time.perf_counter()
        try:
            value = function()
        except Exception as exc:  # recorded, the other benchmarks still run
            value = None
            for key in unpack:
                results[key] = error_entry(exc)
        else:
            for key, entry in unpack_entries(value, unpack).items():
                results[key] = entry
        log(f"[run.py] {name} done in {time.perf_counter() - start:.1f} s")

    stage("pipeline", lambda: call_run("bench_pipeline", quick, device, tiny), {"input_pipeline": None})
    stage("snca", lambda: call_run("bench_snca", quick, device, tiny), {"snca_step": None})
    stage("losses", lambda: call_run("bench_losses", quick, device, tiny),
          {f"loss_{name}": name for name in LOSS_NAMES})
    stage("metrics", lambda: call_run("bench_metrics", quick, device, tiny),
          {name: name for name in ("retrieval_10k", "retrieval_30k", "knn_30k", "eval_scaling")})
    stage("train_step", lambda: call_run("bench_train_step", quick, device, tiny),
          {"train_step": "resnet18", "train_step_resnet50": "resnet50"})
    return results


def unpack_entries(value: dict, unpack: dict) -> dict:
    """``{entry: value}`` (key None) or ``{entry: value[key]}``; a missing key is an error entry."""
    out = {}
    for entry, key in unpack.items():
        if key is None:
            out[entry] = value
        elif isinstance(value, dict) and ("skipped" in value or "error" in value):
            out[entry] = value
        elif isinstance(value, dict) and key in value:
            out[entry] = value[key]
        else:
            out[entry] = {"error": f"the benchmark returned no {key!r}"}
    return out


# ----------------------------------------------------------------------------- table
def _num(value, fmt="{:.3g}"):
    return "n/a" if value is None else fmt.format(value)


def _ms(value):
    return "n/a" if value is None else (f"{value:.3g} ms" if value < 1000 else f"{value / 1000:.3g} s")


def _s(value):
    return "n/a" if value is None else (f"{value * 1000:.3g} ms" if value < 1 else f"{value:.3g} s")


def _mib(value):
    return "n/a" if value is None else (f"{value:.0f} MiB" if value >= 10 else f"{value:.2g} MiB")


def scalar_notes(entry: dict, shown) -> str:
    """``key=value`` of an entry's other scalar fields (for entries of scripts run.py does not own)."""
    notes = []
    for key, value in entry.items():
        if key in shown or isinstance(value, (dict, list, tuple)):
            continue
        notes.append(f"{key}={_num(value) if isinstance(value, float) else value}")
    return ", ".join(notes)


def row(name: str, entry: dict) -> list[str]:
    """| benchmark | ratio | ratio is | dmlrs | baseline | memory | sizes / notes |"""
    if "error" in entry:
        return [name, "error", "", "", "", "", entry["error"].replace("|", "/")]
    if "skipped" in entry:
        return [name, "skipped", "", "", "", "", entry["skipped"]]
    ratio = _num(entry.get("ratio"), "{:.2f}")
    sizes = entry.get("sizes") if isinstance(entry.get("sizes"), str) else ""
    if name == "input_pipeline":
        return [name, ratio, "dmlrs img/s / original img/s", f"{_num(entry.get('dmlrs_img_per_s'), '{:.0f}')} img/s",
                f"{_num(entry.get('original_img_per_s'), '{:.0f}')} img/s", "",
                sizes or scalar_notes(entry, ("dmlrs_img_per_s", "original_img_per_s", "ratio"))]
    if name == "snca_step":
        return [name, ratio, "original ms / dmlrs ms", _ms(entry.get("dmlrs_ms")), _ms(entry.get("original_ms")), "",
                sizes or scalar_notes(entry, ("dmlrs_ms", "original_ms", "ratio"))]
    if name.startswith("loss_"):
        notes = (f"{entry.get('description', '')}; {sizes}; max abs diff loss "
                 f"{_num(entry.get('max_abs_diff_loss'), '{:.1e}')}, grad {_num(entry.get('max_abs_diff_grad'), '{:.1e}')}")
        return [name, ratio, "reference ms / dmlrs ms", _ms(entry.get("dmlrs_ms")), _ms(entry.get("reference_ms")), "",
                notes]
    if name in ("retrieval_10k", "retrieval_30k", "knn_30k"):
        check = (f"max abs diff {_num(entry.get('max_abs_diff'), '{:.1e}')}" if "max_abs_diff" in entry
                 else f"same predictions {_num(entry.get('agreement'), '{:.2%}')}")
        memory = f"{_mib(entry.get('peak_extra_mib'))} (bound {_mib(entry.get('bound_mib'))})"
        return [name, ratio, "argsort reference time / dmlrs time", _s(entry.get("dmlrs_s")), _s(entry.get("reference_s")),
                memory, f"{sizes}; {check}"]
    if name == "eval_scaling":
        n = entry.get("n")
        memory = (f"{_mib(entry.get('n_peak_extra_mib'))} -> {_mib(entry.get('2n_peak_extra_mib'))} "
                  f"(x{_num(entry.get('memory_ratio'), '{:.2f}')}; bound at 2N {_mib(entry.get('2n_bound_mib'))})")
        return [name, ratio, "time(2N) / time(N) (~4: O(N^2) work)",
                f"N={n}: {_s(entry.get('n_seconds'))}, 2N: {_s(entry.get('2n_seconds'))}", "", memory, sizes]
    if name.startswith("train_step"):
        memory = f"step: fp32 {_mib(entry.get('fp32_step_peak_mib'))}, amp {_mib(entry.get('amp_step_peak_mib'))}"
        if entry.get("state_mib") is not None:
            memory += f" (+ state {_mib(entry.get('state_mib'))})"
        return [name, ratio, "fp32 ms / amp ms",
                f"{entry.get('amp', 'amp')}: {_ms(entry.get('amp_ms'))}, {_num(entry.get('amp_img_per_s'), '{:.1f}')} img/s",
                f"fp32: {_ms(entry.get('fp32_ms'))}, {_num(entry.get('fp32_img_per_s'), '{:.1f}')} img/s", memory, sizes]
    return [name, ratio, str(entry.get("ratio_means", "")), "", "", "", sizes]


def markdown_table(results: dict) -> str:
    header = ["benchmark", "ratio", "ratio is", "dmlrs", "baseline", "peak memory", "sizes / notes"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    for name, entry in results.items():
        lines.append("| " + " | ".join(cell.replace("\n", " ") for cell in row(name, entry)) + " |")
    return "\n".join(lines)


def describe_machine(info: dict) -> str:
    gpu = info["gpu"] or "none"
    return (f"Machine: {info['cpu']}, {info['cores']} cores (torch threads {info['torch_threads']}), GPU: {gpu}; "
            f"torch {info['torch']} (CUDA {info['cuda']}), Python {info['python']}; device {info['device']}")


def finite_json(value):
    """JSON-safe copy: non-finite floats -> None, keys -> str, tensors/numbers -> Python."""
    if isinstance(value, dict):
        return {str(key): finite_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(item) for item in value]
    if isinstance(value, torch.Tensor):
        value = value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return number if math.isfinite(number) else None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller sizes / subsets: < 5 minutes on 2 CPU cores")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where to run (default cpu)")
    parser.add_argument("--json", metavar="FILE", help="also write every number to FILE")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's, one per core)")
    parser.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # tests: seconds, meaningless numbers
    parser.add_argument("--only", help=argparse.SUPPRESS)  # comma list of stages: pipeline,snca,losses,metrics,train_step
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda: CUDA is not available on this machine; use --device cpu", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    tune_malloc()  # before any benchmark: peak-memory readings follow live allocations
    quick = args.quick or args.tiny
    mode = "tiny (test sizes)" if args.tiny else "quick" if args.quick else "full"
    only = set(args.only.split(",")) if args.only else None

    start = time.perf_counter()
    results = collect(quick, args.device, args.tiny, only, log=lambda message: print(message, file=sys.stderr,
                                                                                     flush=True))
    total = time.perf_counter() - start
    info = machine(args.device)
    print(describe_machine(info))
    print(f"Mode: {mode}; wall time {total / 60:.1f} min. Ratios: higher = better for dmlrs "
          f"(eval_scaling: ~4 expected for O(N^2) work).\n")
    print(markdown_table(results))
    if args.json:
        document = {"machine": info, "run": {"mode": mode, "device": args.device, "wall_s": total}, **results}
        with open(args.json, "w") as handle:
            json.dump(finite_json(document), handle, indent=2)
        print(f"\nwrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
