"""Multi-process training under torchrun (DDP; gloo on the CPU here, NCCL on GPUs).

* The helpers (``tests/engine/distributed_worker.py`` under ``torchrun --nproc_per_node=2``),
  against single-process references in float64 (agreement <= 1e-12): ``--sync-bn``'s batch norm
  (outputs, running statistics, gradients), DDP gradients of a per-sample mean loss and of a
  batch-coupled loss on gathered embeddings, the gathered memory update (bit-identical), the
  sharded evaluation pass reassembled in order, the rank slices of the seeded global batches,
  errors raised on every rank.
* End to end, SNCA-CE (memory by momentum averaging) and CDNE with the momentum encoder (MU), two
  processes against one with the same global batch (8 = 2 x 4), seed and ``--sync-bn``:

  - one run folder, written by rank 0 alone (one metrics.jsonl line per epoch, one report, one
    TensorBoard log, config.json records 2 processes); rank 1 prints nothing;
  - both ranks end with the same method state, bit for bit (memory bank, EMA, weights, statistics);
  - after one optimizer step the state and loss means equal the single process's within
    ``TOLERANCE`` (1e-4; seen: <= 1e-5), and the validation and test scores within
    ``METRIC_TOLERANCE`` (0.01: the scores are piecewise constant in the embeddings, a near-tie may
    flip one of the 120 test queries). Why one step: a randomly initialised ResNet18 on 32 px
    images with batch statistics over 8 images is chaotic (max-pool ties, ReLU kinks): two
    *single-process* runs differing only in their number of OpenMP threads are 4e-3 apart in the
    weights after 2 steps of one epoch and up to 8 points apart in test metrics after 6;
  - the test report equals, exactly, a single-process ``--evaluate`` of the run's best.pt: the
    sharded, gathered evaluation gives the single-process embeddings and metrics;
  - a run killed with SIGKILL (``DMLRS_KILL_AT``) in epoch 2 and continued under torchrun with
    ``--resume auto`` ends exactly like the uninterrupted two-process run.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys

import pytest
import torch

from dmlrs.engine import distributed
from dmlrs.engine.checkpoint import load_checkpoint
from dmlrs.engine.loaders import EveryNth, RankSlices, ShuffledBatches
from dmlrs.engine.run_log import _flatten as flat  # nested report -> "retrieval/mAP" keys, as the logs write them
from dmlrs.errors import DmlrsError
from tests.engine.scripts import REPO, only_run_dir, read_json, run_script

#: global batch 8 = 2 x 4; two optimizer steps (one per epoch); --sync-bn: batch norm over the global batch
TINY = ["--dataset", "demo", "--img-size", "32", "--dim", "16", "-b", "8", "--epochs", "2", "--steps-per-epoch", "1",
        "--num_workers", "0", "--weights", "none", "--device", "cpu", "--deterministic", "--no-progress",
        "--no-pictures", "--sync-bn"]
TOLERANCE = 1e-4  # float32 state and loss means of two processes vs one (seen: <= 1e-5)
METRIC_TOLERANCE = 0.01  # retrieval / kNN scores: piecewise constant, a near-tie may flip (1 of 120 queries)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def torchrun(target: str, args: list[str], **env) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node=2`` of ``target`` (a path in the repo), rendezvous on a free
    local port, one OpenMP thread per process (the CI machine has 2 cores)."""
    environment = {key: value for key, value in os.environ.items()
                   if key not in (distributed.DUMP_ENV, "DMLRS_KILL_AT")}
    environment.update(OMP_NUM_THREADS="1", **env)
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
               "--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{free_port()}", str(REPO / target), *args]
    return subprocess.run(command, cwd=REPO, env=environment, capture_output=True, text=True, timeout=300)


def output(proc: subprocess.CompletedProcess) -> str:
    return f"exit {proc.returncode}\nstdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}"



def epochs(run_dir) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k != "images_per_second"} for row in rows]


# ----------------------------------------------------------------------------- one process
def test_helpers_are_identities_in_a_single_process():
    tensor = torch.arange(6.0).reshape(3, 2)
    assert not distributed.is_distributed() and distributed.world_size() == 1 and distributed.is_main()
    assert distributed.gather_batch(tensor) is tensor
    assert distributed.gather_with_grad(tensor) is tensor
    assert distributed.all_gather_rows(tensor)[0] is tensor
    assert distributed.gather_shards(tensor, [2, 1]) is tensor
    assert distributed.on_main(lambda: 5) == 5 and distributed.everywhere(lambda: 6) == 6
    assert distributed.any_true(True) and not distributed.any_true(False)
    assert distributed.process_device("cpu") == torch.device("cpu")
    distributed.check_batch_split(3, "--batch-size")  # anything goes in one process


def test_the_global_batch_must_split_into_equal_slices_of_two(monkeypatch):
    monkeypatch.setattr(distributed, "world_size", lambda: 4)
    distributed.check_batch_split(8, "--batch-size")
    for size, hint in ((10, "--batch-size 12"), (4, "--batch-size 8"), (6, "--batch-size 8")):
        with pytest.raises(DmlrsError, match=f"--batch-size {size} is the global batch.*4 processes.*use {hint}"):
            distributed.check_batch_split(size, "--batch-size")


def test_rank_slices_cut_each_global_batch_into_equal_contiguous_slices():
    world = 3
    single_cut = list(ShuffledBatches(23, 9, torch.Generator().manual_seed(0)))
    assert [len(b) for b in single_cut] == [9, 9, 5]  # one process keeps the last 5 images, but 5 // 3 < 2:
    with pytest.raises(RuntimeError, match="cannot feed 3 processes"):
        list(RankSlices(single_cut, 0, world))
    assert len(ShuffledBatches(23, 9, torch.Generator(), min_last=2 * world)) == 2  # the trainer's cut drops it
    batches = list(ShuffledBatches(24, 9, torch.Generator().manual_seed(0), min_last=2 * world))
    assert [len(b) for b in batches] == [9, 9, 6]
    slices = [list(RankSlices(batches, rank, world)) for rank in range(world)]
    for step, batch in enumerate(batches):
        kept = len(batch) - len(batch) % world
        assert sum((slices[rank][step] for rank in range(world)), []) == batch[:kept]
        assert len({len(slices[rank][step]) for rank in range(world)}) == 1
    # the default cut is the single-process one: only a last batch of ONE image is left out
    assert len(ShuffledBatches(17, 8, torch.Generator())) == 2 and len(ShuffledBatches(18, 8, torch.Generator())) == 3
    assert [list(EveryNth([[0], [1], [2], [3], [4]], r, 2)) for r in range(2)] == [[[0], [2], [4]], [[1], [3]]]
    assert [len(EveryNth(range(5), r, 2)) for r in range(2)] == [3, 2]


def test_a_ctrl_c_forwarded_by_torchrun_is_the_same_request(monkeypatch, capsys):
    """Ctrl-C reaches a torchrun worker twice (terminal, then torchrun): the second SIGINT within
    a few seconds must not abort the step that is finishing; a later one still does."""
    clock = {"now": 100.0}
    monkeypatch.setattr(distributed.time, "monotonic", lambda: clock["now"])
    interrupt = distributed.TorchrunInterrupt()
    interrupt._handle(signal.SIGINT, None)
    assert interrupt.requested
    clock["now"] += 1.0
    interrupt._handle(signal.SIGINT, None)  # torchrun's copy: ignored
    clock["now"] += distributed.TorchrunInterrupt.REPEAT_S
    with pytest.raises(KeyboardInterrupt):
        interrupt._handle(signal.SIGINT, None)  # the user's second Ctrl-C
    assert capsys.readouterr().out.count("SIGINT received") == 1


# ----------------------------------------------------------------------------- two processes
def test_helpers_on_two_processes_match_one(tmp_path):
    proc = torchrun("tests/engine/distributed_worker.py", [str(tmp_path)])
    assert proc.returncode == 0, output(proc)
    ranks = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(2)]
    for rank, found in enumerate(ranks):
        assert found["world"] == 2 and found["device"] == "cpu"
        assert max(found["batchnorm_layer"].values()) < 1e-12, found["batchnorm_layer"]
        assert max(found["ddp_gradients"].values()) < 1e-12, found["ddp_gradients"]
        assert found["memory_update"]["equal"]
        assert found["gathers"]["shards_11_3"] == list(range(11)) and found["gathers"]["shards_2_3"] == [0, 1]
        assert found["gathers"]["rows"] == [[[0.0, 0.0]], [[1.0, 1.0], [1.0, 1.0]]]
        assert found["batchnorm_average"]["plain"] == [0.5, 0.5, 2.0, 2.0]  # means of 0/1 and 1/3
        assert found["batchnorm_average"]["synced"] == [float(rank)] * 2 + [float(2 * rank + 1)] * 2
        assert found["errors"]["on_main"] == "rank 0 says no"
        assert found["errors"]["everywhere"].startswith("the last rank says no") and found["errors"]["any_true"]
    assert ranks[0]["memory_update"]["slots"] == ranks[1]["memory_update"]["slots"]
    # the slices of the two ranks are the global batches (in order), each image with its draw seed
    slices = ranks[0]["rank_slices"]
    assert slices["global"] == ranks[1]["rank_slices"]["global"]
    for step, batch in enumerate(slices["global"]):
        kept = len(batch) - len(batch) % 2
        assert slices["mine"][step] + ranks[1]["rank_slices"]["mine"][step] == batch[:kept]


def dumps(folder) -> list[dict]:
    return [torch.load(folder / f"rank{rank}.pt") for rank in range(2)]


def check_one_run(out, proc, *, epochs_done: int, tensorboard: bool):
    """One run folder with everything written once (by rank 0), no temporaries, one report printed."""
    run_dir = only_run_dir(out)  # exactly one config.json under out
    names = {path.relative_to(run_dir).as_posix() for path in run_dir.rglob("*") if path.is_file()}
    expected = {"config.json", "split.json", "metrics.jsonl", "test_metrics.json", "checkpoints/last.pt",
                "checkpoints/best.pt"}
    assert expected <= names and not [name for name in names if name.endswith(".tmp")], names
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == epochs_done
    assert len([name for name in names if name.startswith("tb/")]) == (1 if tensorboard else 0)
    assert read_json(run_dir / "config.json")["processes"] == 2
    assert proc.stdout.count("Test split report") == 1 and proc.stdout.count("run folder:") == 1
    return run_dir


def check_ranks_identical(ranks: list[dict]):
    """Every tensor of the method (memory bank, EMA, weights, statistics) the same on both ranks."""
    assert ranks[0].keys() == ranks[1].keys()
    for key in ranks[0]:
        assert torch.equal(ranks[0][key], ranks[1][key]), key


def check_state_close(single: dict, state: dict):
    """The two-process state equals the single process's up to float32 rounding."""
    assert state.keys() == single.keys()
    for key, value in single.items():
        if value.is_floating_point():
            assert torch.allclose(state[key], value, rtol=TOLERANCE, atol=TOLERANCE), key
        else:
            assert torch.equal(state[key], value), key


def check_epoch_close(mine: dict, reference: dict):
    """A metrics.jsonl line: loss means to float32 rounding, validation scores to METRIC_TOLERANCE."""
    assert mine.keys() == reference.keys()
    for key in mine["train"]:
        assert mine["train"][key] == pytest.approx(reference["train"][key], rel=TOLERANCE, abs=TOLERANCE), key
    for key in mine["val"]:
        assert mine["val"][key] == pytest.approx(reference["val"][key], abs=METRIC_TOLERANCE), key


def test_snca_ce_on_two_processes_matches_one(tmp_path, monkeypatch):
    args = [*TINY, "--epochs", "1"]
    with monkeypatch.context() as patch:
        patch.setenv(distributed.DUMP_ENV, str(tmp_path / "dump_single"))
        assert run_script("SNCA_CE", [*args, "--no-tensorboard", "--out", str(tmp_path / "single")]) == 0
    proc = torchrun("train_SNCA_CE/main.py", [*args, "--out", str(tmp_path / "dist")],
                    **{distributed.DUMP_ENV: str(tmp_path / "dump_dist")})
    assert proc.returncode == 0, output(proc)
    run_dir = check_one_run(tmp_path / "dist", proc, epochs_done=1, tensorboard=True)
    single_dir = only_run_dir(tmp_path / "single")
    ranks = dumps(tmp_path / "dump_dist")
    check_ranks_identical(ranks)
    check_state_close(torch.load(tmp_path / "dump_single" / "rank0.pt"), ranks[0])
    check_epoch_close(epochs(run_dir)[0], epochs(single_dir)[0])
    report, expected = (dict(flat(read_json(folder / "test_metrics.json"))) for folder in (run_dir, single_dir))
    assert report.keys() == expected.keys()
    for key in report:
        assert report[key] == pytest.approx(expected[key], abs=METRIC_TOLERANCE), key
    # the gathered evaluation is a single process's: --evaluate of best.pt in one process, same report
    assert run_script("SNCA_CE", ["--evaluate", str(run_dir / "checkpoints" / "best.pt"), "--out",
                                  str(tmp_path / "evaluate"), "--num_workers", "0", "--device", "cpu",
                                  "--no-progress", "--no-tensorboard", "--no-pictures"]) == 0
    assert read_json(only_run_dir(tmp_path / "evaluate") / "test_metrics.json") == read_json(
        run_dir / "test_metrics.json")


def test_cdne_momentum_encoder_on_two_processes_matches_one_and_resumes_exactly(tmp_path, monkeypatch):
    # --quant-weight 0: mean (|h| - 1)^2 has a kink at h = 0, and float32 noise that moves a code
    # across 0 flips its gradient (seen here: 2 processes vs 1 drifted by 0.02 in one step)
    args = [*TINY, "--memory", "momentum", "--quant-weight", "0", "--no-tensorboard", "--save-every-steps", "1"]
    with monkeypatch.context() as patch:
        patch.setenv(distributed.DUMP_ENV, str(tmp_path / "dump_single"))
        assert run_script("CDNE", [*args, "--epochs", "1", "--out", str(tmp_path / "single")]) == 0
    single = torch.load(tmp_path / "dump_single" / "rank0.pt")
    assert any(key.startswith("writer.ema.") for key in single)  # the EMA encoder is compared too

    # killed with SIGKILL inside epoch 2 (after its step, before its checkpoint): last.pt is epoch 1's
    killed = torchrun("train_CDNE/main.py", [*args, "--out", str(tmp_path / "resumed")], DMLRS_KILL_AT="step:2")
    assert killed.returncode != 0, output(killed)
    run_dir = only_run_dir(tmp_path / "resumed")
    assert not (run_dir / "test_metrics.json").exists()
    (epoch_1,) = epochs(run_dir)
    check_epoch_close(epoch_1, epochs(only_run_dir(tmp_path / "single"))[0])
    state = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert state["epoch"] == 1 and state["world_size"] == 2
    check_state_close(single, state["method"])

    proc = torchrun("train_CDNE/main.py", [*args, "--out", str(tmp_path / "resumed"), "--resume", "auto"],
                    **{distributed.DUMP_ENV: str(tmp_path / "dump_resumed")})
    assert proc.returncode == 0, output(proc)
    assert "resumed from" in proc.stdout
    assert check_one_run(tmp_path / "resumed", proc, epochs_done=2, tensorboard=False) == run_dir
    check_ranks_identical(dumps(tmp_path / "dump_resumed"))

    proc = torchrun("train_CDNE/main.py", [*args, "--out", str(tmp_path / "straight")],
                    **{distributed.DUMP_ENV: str(tmp_path / "dump_straight")})
    assert proc.returncode == 0, output(proc)
    straight = only_run_dir(tmp_path / "straight")
    assert read_json(run_dir / "test_metrics.json") == read_json(straight / "test_metrics.json")
    assert epochs(run_dir) == epochs(straight)
    resumed, uninterrupted = dumps(tmp_path / "dump_resumed"), dumps(tmp_path / "dump_straight")
    assert all(torch.equal(resumed[0][key], uninterrupted[0][key]) for key in resumed[0])
