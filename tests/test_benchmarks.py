"""benchmarks/: the one-command runner end to end at tiny sizes, and the references it compares
against (a benchmark's ratio means nothing if its reference computes something else)."""
import importlib
import inspect
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import bench_losses  # noqa: E402
import bench_metrics  # noqa: E402

OURS = ("loss_mnce", "loss_bnm", "loss_trnsl", "loss_cdne", "loss_srl", "retrieval_10k", "retrieval_30k", "knn_30k",
        "eval_scaling", "train_step", "train_step_resnet50")
EXTERNAL = {"input_pipeline": ("bench_pipeline", ("dmlrs_img_per_s", "original_img_per_s", "ratio")),
            "snca_step": ("bench_snca", ("dmlrs_ms", "original_ms", "ratio"))}


def positive_finite(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """``benchmarks/run.py --quick --tiny --json F``: (stdout, parsed JSON)."""
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, str(BENCHMARKS / "run.py"), "--quick", "--tiny", "--json", str(out)],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout, json.loads(out.read_text())


def test_run_writes_every_entry_with_positive_finite_ratios(tiny_run):
    _, results = tiny_run
    for name in ("machine", "run", *EXTERNAL, *OURS):
        assert name in results, name
    for name in OURS:
        entry = results[name]
        assert "error" not in entry, (name, entry)
        assert positive_finite(entry["ratio"]), (name, entry)
        assert isinstance(entry["sizes"], str) and entry["sizes"], name
    for name in ("retrieval_10k", "retrieval_30k"):
        assert results[name]["max_abs_diff"] < 1e-12  # same metrics as the full-sort reference
        assert positive_finite(results[name]["dmlrs_s"]) and positive_finite(results[name]["reference_s"])
    assert results["knn_30k"]["agreement"] == 1.0
    for name in ("train_step", "train_step_resnet50"):
        entry = results[name]
        assert positive_finite(entry["fp32_ms"]) and positive_finite(entry["amp_ms"]), entry
        assert "resnet50" in entry["sizes"] if name.endswith("50") else "resnet18" in entry["sizes"]
    assert results["run"]["mode"].startswith("tiny") and results["machine"]["torch"] == torch.__version__


def test_external_benchmarks_are_run_or_skipped_in_tiny_mode_only(tiny_run):
    """bench_pipeline / bench_snca (other owners): their ``run(quick, device)`` result is taken as
    is, or skipped under ``--tiny`` when their ``run`` has no ``tiny`` argument."""
    _, results = tiny_run
    for name, (module, keys) in EXTERNAL.items():
        entry = results[name]
        if not (BENCHMARKS / f"{module}.py").exists():
            assert "not found" in entry["error"]
            continue
        assert "error" not in entry, (name, entry)
        run = importlib.import_module(module).run
        assert list(inspect.signature(run).parameters)[:2] == ["quick", "device"]
        if "skipped" in entry:
            assert "tiny" not in inspect.signature(run).parameters
            continue
        for key in keys:
            assert positive_finite(entry[key]), (name, key, entry)


def test_table_names_the_machine_and_puts_ratios_first(tiny_run):
    stdout, results = tiny_run
    assert stdout.startswith("Machine: ")
    assert results["machine"]["cpu"] in stdout and f"torch {torch.__version__}" in stdout
    table = [line for line in stdout.splitlines() if line.startswith("|")]
    assert table[0].startswith("| benchmark | ratio |")
    assert len(table) == 2 + len(EXTERNAL) + len(OURS)  # header, rule, one row per entry


def test_cuda_is_refused_without_cuda():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    done = subprocess.run([sys.executable, str(BENCHMARKS / "run.py"), "--device", "cuda", "--tiny"],
                          capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 2 and "CUDA is not available" in done.stderr


# ----------------------------------------------------------------------------- references
@pytest.mark.parametrize("case", bench_losses.make_cases("cpu", batch=48, classes=6, dim=16, memory_slots=300,
                                                         srl_batch=32), ids=lambda case: case.name)
def test_loss_references_agree_with_dmlrs(case):
    """Each original-algorithm reference gives the dmlrs loss and gradients (embeddings and, for
    the prototype losses, the prototypes) on the benchmark's inputs."""
    result = bench_losses.compare(case)
    assert result["max_abs_diff_loss"] <= 1e-5 * max(1.0, abs(result["reference_loss"])), result
    assert result["max_abs_diff_grad"] <= 1e-5, result
    assert result["reference_loss"] != 0.0


def test_loss_benchmark_inputs_exercise_every_branch():
    cases = {case.name: case for case in bench_losses.make_cases("cpu", batch=48, classes=6, dim=16,
                                                                   memory_slots=300, srl_batch=32)}
    for case in cases.values():
        case.dmlrs_step()
    srl_logs = cases["srl"].module.last_logs
    assert 0 < float(srl_logs["hard_pos_frac"]) < 1 and 0 < float(srl_logs["hard_neg_frac"]) < 1  # omega != 1
    assert 0 < float(cases["trnsl"].module.kept_fraction) < 1  # some samples pruned


def test_loss_references_are_not_the_dmlrs_code():
    """A reference with another hyper-parameter disagrees: the comparison can fail."""
    case = bench_losses.make_cases("cpu", batch=48, classes=6, dim=16, memory_slots=300, srl_batch=32)[0]
    x, weight = case.inputs[0], case.parameters[0].detach()
    labels = case.module.prototypes.new_zeros(48, dtype=torch.long)
    with torch.no_grad():
        assert abs(float(bench_losses.reference_mnce(x, weight, labels, margin=0.0))
                   - float(bench_losses.reference_mnce(x, weight, labels))) > 1e-3


def test_metric_references_agree_with_dmlrs_on_ties_and_imbalance():
    generator = torch.Generator().manual_seed(0)
    gallery = torch.randint(-1, 2, (300, 4), generator=generator).float() + 0.01  # many exact ties
    query = torch.randint(-1, 2, (70, 4), generator=generator).float() + 0.01
    gallery_labels = torch.randint(0, 5, (300,), generator=generator)
    query_labels = torch.randint(0, 5, (70,), generator=generator)
    ours = bench_metrics.retrieval_metrics(query, query_labels, gallery, gallery_labels, ks=bench_metrics.DEFAULT_KS,
                                           chunk_size=16)  # every k of the reference, also k >= the gallery
    reference = bench_metrics.reference_retrieval(query, query_labels, gallery, gallery_labels, chunk_size=16)
    assert bench_metrics.max_difference(ours, reference) < 1e-12
    x, y = bench_metrics.make_data(500, dim=16, classes=5, noise=1.0)
    ours = bench_metrics.knn_predict(x[:400], y[:400], x[400:], k=10)
    assert torch.equal(ours, bench_metrics.reference_knn(x[:400], y[:400], x[400:], k=10))
