"""Worker of ``tests/engine/test_distributed.py``: run under ``torchrun --nproc_per_node=2`` (gloo,
CPU), it checks the distributed helpers against single-process references computed in the same
process (float64 where numbers are compared) and writes its findings to ``<out>/rank<r>.json``.

    python -m torch.distributed.run --nproc_per_node=2 tests/engine/distributed_worker.py OUT
"""
from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import torch
from torch import nn

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from dmlrs.engine import distributed  # noqa: E402
from dmlrs.engine.loaders import RankSlices, SeededBatches, ShuffledBatches  # noqa: E402
from dmlrs.engine.sync_batchnorm import GlobalBatchNorm  # noqa: E402
from dmlrs.errors import DmlrsError  # noqa: E402
from dmlrs.memory import MemoryBank  # noqa: E402
from dmlrs.methods.memory_writer import MemoryWriter  # noqa: E402


def max_diff(pairs) -> float:
    return max(float((a.detach().double() - b.detach().double()).abs().max()) for a, b in pairs)


def batchnorm_layer(rank: int, world: int) -> dict:
    """GlobalBatchNorm on rank slices vs BatchNorm on the whole batch: outputs, running
    statistics, input and parameter gradients (4-d and 2-d inputs)."""
    out = {}
    for name, shape, reference in (("2d", (8, 3, 5, 5), nn.BatchNorm2d(3)), ("1d", (8, 3), nn.BatchNorm1d(3))):
        torch.manual_seed(1)
        x = torch.randn(*shape) * 3 + 1
        weights = torch.randn(*shape)  # the loss: sum(y * weights)
        layer = GlobalBatchNorm(3)
        layer.weight.data, reference.weight.data = torch.linspace(0.5, 2, 3), torch.linspace(0.5, 2, 3)
        size = shape[0] // world
        part = slice(rank * size, (rank + 1) * size)
        mine, full = x[part].clone().requires_grad_(), x.clone().requires_grad_()
        y, y_ref = layer(mine), reference(full)
        (y * weights[part]).sum().backward()
        (y_ref * weights).sum().backward()
        # the parameter gradient of the global loss is the sum over the ranks
        weight_grad = distributed.all_reduce_sum(layer.weight.grad.clone())
        out[name] = max_diff([(y, y_ref[part]), (mine.grad, full.grad[part]), (weight_grad, reference.weight.grad),
                              (layer.running_mean, reference.running_mean),
                              (layer.running_var, reference.running_var)])
    return out


def tiny_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4),
                         nn.Flatten(), nn.Linear(4 * 4 * 4, 5))


def ddp_gradients(rank: int, world: int) -> dict:
    """DDP + --sync-bn on rank slices vs one process on the global batch: the gradient of a
    per-sample mean loss (slice means averaged by DDP) and of a batch-coupled loss computed on
    the gathered batch (gather_with_grad)."""
    torch.manual_seed(0)
    net = tiny_net()
    reference = copy.deepcopy(net)
    distributed.convert_sync_batchnorm(net, torch.device("cpu"))
    ddp = distributed.wrap_ddp(net, torch.device("cpu"))
    x, y = torch.randn(8, 3, 8, 8), torch.randint(0, 5, (8,))
    size = 8 // world
    part = slice(rank * size, (rank + 1) * size)
    out = {}
    nn.functional.cross_entropy(ddp(x[part]), y[part]).backward()
    nn.functional.cross_entropy(reference(x), y).backward()
    out["per_sample_mean"] = max_diff((p.grad, q.grad) for p, q in zip(net.parameters(), reference.parameters()))
    out["buffers"] = max_diff(zip(net.buffers(), reference.buffers()))
    net.zero_grad()
    reference.zero_grad()
    gathered = distributed.gather_with_grad(ddp(x[part]))  # (8, 5) on every rank
    torch.cdist(gathered, gathered).pow(2).mean().backward()
    whole = reference(x)
    torch.cdist(whole, whole).pow(2).mean().backward()
    out["coupled"] = max_diff((p.grad, q.grad) for p, q in zip(net.parameters(), reference.parameters()))
    return out


def memory_update(rank: int, world: int) -> dict:
    """MemoryWriter.write with every rank's slice == one MemoryBank.update with the global batch
    (index 3 appears in both slices: duplicates are averaged across ranks too)."""
    indices = torch.tensor([3, 0, 5, 7, 3, 2, 9, 1])
    features = nn.functional.normalize(torch.randn(8, 4, generator=torch.Generator().manual_seed(2)), dim=1)
    reference = MemoryBank(10, 4, momentum=0.5, generator=torch.Generator().manual_seed(3))
    bank = MemoryBank(10, 4, momentum=0.5, generator=torch.Generator().manual_seed(3))
    writer = MemoryWriter(bank, "bank")
    size = 8 // world
    part = slice(rank * size, (rank + 1) * size)
    writer.remember(indices[part], features[part])
    writer.write()
    reference.update(indices, nn.functional.normalize(features.float(), dim=1))  # the writer's values
    return {"equal": bool(torch.equal(bank.slots, reference.slots)),
            "slots": bank.slots.tolist()}


def gathers(rank: int, world: int) -> dict:
    """gather_shards reassembles a sharded evaluation pass (batches r, r + W, ...) in order,
    also when a rank had no batch; all_gather_rows with unequal row counts."""
    out = {}
    for total, batch in ((11, 3), (2, 3)):
        sizes = [len(range(start, min(start + batch, total))) for start in range(0, total, batch)]
        mine = [torch.arange(start, min(start + batch, total))
                for j, start in enumerate(range(0, total, batch)) if j % world == rank]
        local = torch.cat(mine) if mine else None
        out[f"shards_{total}_{batch}"] = distributed.gather_shards(local, sizes).tolist()
    rows = distributed.all_gather_rows(torch.full((rank + 1, 2), float(rank)))
    out["rows"] = [piece.tolist() for piece in rows]
    return out


def rank_slices(rank: int, world: int) -> dict:
    """RankSlices of the seeded global batches: this rank's slices and their draw seeds."""
    def seeded():  # a fresh sampler per pass, as every epoch of the trainer
        batches = ShuffledBatches(21, 8, torch.Generator().manual_seed(5), min_last=2 * world)
        return SeededBatches(batches, seed=7, stream=0)

    return {"global": [list(map(list, b)) for b in seeded()],
            "mine": [list(map(list, b)) for b in RankSlices(seeded(), rank, world)]}


def batchnorm_average(rank: int, world: int) -> dict:
    """average_batchnorm_buffers: plain BN statistics averaged, synchronised layers left alone."""
    plain, synced = nn.BatchNorm1d(2), GlobalBatchNorm(2)
    for layer in (plain, synced):
        layer.running_mean.fill_(float(rank))
        layer.running_var.fill_(float(2 * rank + 1))
    distributed.average_batchnorm_buffers(nn.Sequential(plain, synced))
    return {"plain": plain.running_mean.tolist() + plain.running_var.tolist(),
            "synced": synced.running_mean.tolist() + synced.running_var.tolist()}


def errors(rank: int, world: int) -> dict:
    """A DmlrsError on one rank is raised on every rank (on_main: rank 0's; everywhere: any)."""
    out = {}

    def fail_on_main():
        raise DmlrsError("rank 0 says no")

    def fail_on_last():
        if rank == world - 1:
            raise DmlrsError("the last rank says no")
        return rank

    for name, call in (("on_main", lambda: distributed.on_main(fail_on_main)),
                       ("everywhere", lambda: distributed.everywhere(fail_on_last))):
        try:
            call()
            out[name] = None
        except DmlrsError as exc:
            out[name] = str(exc)
    out["any_true"] = distributed.any_true(rank == 1)
    return out


def main() -> None:
    folder = Path(sys.argv[1])
    device = distributed.setup("cpu")
    rank, world = distributed.rank(), distributed.world_size()
    torch.set_default_dtype(torch.float64)
    results = {"device": str(device), "world": world}
    for check in (batchnorm_layer, ddp_gradients, memory_update, gathers, rank_slices, batchnorm_average, errors):
        results[check.__name__] = check(rank, world)
    (folder / f"rank{rank}.json").write_text(json.dumps(results))
    distributed.shutdown()


if __name__ == "__main__":
    main()
