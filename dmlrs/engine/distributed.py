"""Multi-process training under ``torchrun`` (PyTorch DistributedDataParallel): the helpers.

A script started by ``torchrun`` (``python -m torch.distributed.run``) finds ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK`` in its environment; :func:`setup` then joins the process group
(NCCL for CUDA, gloo for the CPU) and returns the process's device: ``cuda:LOCAL_RANK``, or the
CPU. A plain ``python train_X/main.py`` has none of these variables: no process group is made and
every helper here is the identity (world size 1, rank 0, gathers return their input), so a
single process runs exactly the code it ran before.

How a run is spread over W processes (``dmlrs.engine.trainer`` does it):

* **Batches.** ``--batch-size`` is the *global* batch. Every rank draws the same global batches
  from ``(seed, epoch)`` (the single-process samplers, unchanged) with the same per-image
  augmentation seeds, and trains on its contiguous ``1/W`` slice of each
  (:class:`dmlrs.engine.loaders.RankSlices`); the global batch must split into W slices of at
  least 2 images (:func:`check_batch_split`). The gathered slices, in rank order, are the global
  batch in its single-process order.
* **Gradients.** DDP averages the ranks' gradients. For a loss that is a mean of per-sample terms
  (SNCA, CE, quantization, normalized softmax, t-RNSL) the mean of the ranks' slice means is the
  global-batch mean, so the gradient is the single-process one. Losses that couple the samples of
  a batch (SRL, BNM, ``--loss`` replacements) are computed on the gathered global batch with
  :func:`gather_with_grad`, whose backward sums the ranks' gradients: again the single-process
  gradient (each rank computes that loss; it is small next to the backbone).
* **Per step** the ranks also agree, in one all-reduce, on the non-finite check, the logged loss
  means and a stop request (``dmlrs.engine.trainer``); a Ctrl-C, which reaches a worker twice
  (terminal and torchrun), counts once (:class:`TorchrunInterrupt`).
* **Batch norm.** Each rank normalises its slice with the slice's statistics unless
  ``--sync-bn`` (:func:`convert_sync_batchnorm`); without it the running statistics are averaged
  over the ranks after every step (:func:`average_batchnorm_buffers`), so every rank holds the
  same model.
* **Memory bank and EMA.** The features (or EMA keys) and indices of every rank are gathered
  (:func:`gather_batch`) and every rank applies the same global-batch update: the banks stay
  identical. EMA weights average DDP-synchronised weights, so they stay identical too.
* **Evaluation.** Each rank embeds every W-th evaluation batch (the single-process batches) and
  the embeddings are gathered in dataset order (:func:`gather_shards`): no padding, no
  duplicates, the same embeddings as one process. Every rank then computes the metrics (the same
  numbers everywhere, no broadcast needed).
* **Files.** Only rank 0 writes (run folder, logs, TensorBoard, checkpoints, reports, prints);
  it picks the run folder and :func:`on_main` hands the path to the others. Every rank reads the
  checkpoint when resuming, so on several nodes ``--out`` must be a shared filesystem.
"""
from __future__ import annotations

import builtins
import datetime
import inspect
import os
import signal
import sys
import time
from pathlib import Path
from typing import Callable, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from dmlrs.engine.device import resolve_device
from dmlrs.engine.interrupt import GracefulInterrupt
from dmlrs.errors import DmlrsError

T = TypeVar("T")

#: environment variables torchrun sets for every worker
TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
#: collectives wait this long (a rank-0-first cache build or a long evaluation on another rank)
TIMEOUT = datetime.timedelta(minutes=60)
#: test hook: each rank writes its method's state to ``<dir>/rank<r>.pt`` when training ends
DUMP_ENV = "DMLRS_DIST_DUMP"

_print = builtins.print
#: all-gather into one tensor (named ``all_gather_single`` from torch 2.14 on)
_all_gather_into = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


def launched_by_torchrun() -> bool:
    """Whether this process is a torchrun worker (its environment names its rank)."""
    return all(name in os.environ for name in TORCHRUN_ENV)


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0)) if is_initialized() else 0


def is_main() -> bool:
    """Rank 0 (or the only process): the one that writes files and prints."""
    return rank() == 0


def is_distributed() -> bool:
    """Whether this run goes through DDP: started by torchrun (with any number of processes, one
    included) and set up. A plain ``python`` run is single-process."""
    return is_initialized()


def process_device(spec: str) -> torch.device:
    """The device of this process for ``--device spec``: :func:`resolve_device` alone in a single
    process; under torchrun CUDA means ``cuda:LOCAL_RANK`` (one GPU per process)."""
    device = resolve_device(spec)
    if device.type != "cuda" or not launched_by_torchrun():
        return device
    if device.index is not None:
        raise DmlrsError(f"--device {spec}: under torchrun each process uses cuda:LOCAL_RANK; pass --device cuda "
                         "(or auto) and choose the GPUs with CUDA_VISIBLE_DEVICES")
    index, count = int(os.environ["LOCAL_RANK"]), torch.cuda.device_count()
    if index >= count:
        raise DmlrsError(f"torchrun started process {index} of this node but only {count} CUDA device(s) are "
                         f"visible; use --nproc_per_node {count} (one process per GPU)")
    return torch.device("cuda", index)


def setup(device_spec: str) -> torch.device:
    """Join torchrun's process group (a no-op without torchrun) and return this process's device.
    Non-zero ranks stop printing to stdout (errors on stderr still show)."""
    device = process_device(device_spec)
    if not launched_by_torchrun() or is_initialized():
        return device
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, timeout=TIMEOUT, **({"device_id": device} if device.type == "cuda" else {}))
    if not is_main():
        builtins.print = _quiet_print
    return device


def shutdown(clean: bool = True) -> None:
    """Leave the process group and restore ``print``. ``clean``: the run ended normally, so wait
    for every rank first (a barrier); after an error this rank leaves at once (torchrun then
    stops the others). Exiting without it would abort the process instead of returning its status."""
    builtins.print = _print
    if is_initialized():
        if clean:
            dist.barrier()
        dist.destroy_process_group()


def _quiet_print(*args, **kwargs) -> None:
    """``print`` of non-zero ranks: only what goes to stderr (errors, warnings)."""
    if kwargs.get("file") is sys.stderr:
        _print(*args, **kwargs)


class TorchrunInterrupt(GracefulInterrupt):
    """:class:`GracefulInterrupt` for torchrun workers: a Ctrl-C reaches each worker twice -- from
    the terminal, then forwarded by torchrun -- so a second SIGINT within :attr:`REPEAT_S` seconds
    is the same request, not the "abort at once" of a second Ctrl-C."""

    REPEAT_S = 5.0

    def __init__(self):
        super().__init__()
        self._first = 0.0

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT and time.monotonic() - self._first < self.REPEAT_S:
            return
        if not self.requested:
            self._first = time.monotonic()
        super()._handle(signum, frame)


# ----------------------------------------------------------------------------- control flow
def barrier() -> None:
    if is_initialized():
        dist.barrier()


def on_main(fn: Callable[[], T]) -> T:
    """``fn()`` run on rank 0 alone, its result (picklable) handed to every rank. A ``DmlrsError``
    on rank 0 is raised on every rank, so all of them stop with the same message."""
    if not is_initialized():
        return fn()
    box: list = [None]
    if is_main():
        try:
            box[0] = ("ok", fn())
        except DmlrsError as exc:
            box[0] = ("error", str(exc))
    dist.broadcast_object_list(box, src=0)
    status, value = box[0]
    if status == "error":
        raise DmlrsError(value)
    return value


def everywhere(fn: Callable[[], T]) -> T:
    """``fn()`` on every rank; a ``DmlrsError`` on any rank is raised on every rank (a rank's
    own message first), so no rank is left waiting for the others in a later collective."""
    if not is_initialized():
        return fn()
    result, error = None, None
    try:
        result = fn()
    except DmlrsError as exc:
        error = str(exc)
    errors: list = [None] * world_size()
    dist.all_gather_object(errors, error)
    if error is not None:
        raise DmlrsError(error)
    for index, message in enumerate(errors):
        if message is not None:
            raise DmlrsError(f"{message} (in process {index})")
    return result


def main_first(fn: Callable[[], T]) -> T:
    """``fn()`` on every rank, the first process of each node first (it fills the caches the
    others then find ready, e.g. the decoded-image cache). If it fails there, the other ranks
    raise its error instead of repeating the work."""
    if not is_initialized():
        return fn()
    first = local_rank() == 0
    result = everywhere(fn if first else _nothing)
    later = everywhere(_nothing if first else fn)
    return result if first else later


def _nothing() -> None:
    return None


def any_true(flag: bool) -> bool:
    """Whether ``flag`` is true on any rank (the same answer on every rank)."""
    if not is_initialized():
        return bool(flag)
    value = torch.tensor([1.0 if flag else 0.0], device=comm_device())
    dist.all_reduce(value)
    return bool(value.item() > 0)


def comm_device() -> torch.device:
    """Where tensors must be for a collective: the process's GPU under NCCL, else the CPU."""
    if is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def check_batch_split(size: int, flag: str) -> None:
    """Refuse a global batch of ``size`` images (set by ``flag``) that does not split into
    ``world_size()`` slices of equal size, at least 2 images each (batch norm in training needs
    2; every rank must run the same shapes)."""
    world = world_size()
    if world == 1:
        return
    if size % world or size // world < 2:
        low = max(2 * world, -(-size // world) * world)
        raise DmlrsError(f"{flag} {size} is the global batch: it must be a multiple of the {world} processes with at "
                         f"least 2 images per process; use {flag} {low} (or another multiple of {world})")


# ----------------------------------------------------------------------------- gathers
def gather_batch(tensor: torch.Tensor) -> torch.Tensor:
    """Every rank's ``tensor`` (the same shape on every rank: a slice of the global batch)
    concatenated in rank order along dim 0: the global batch. No gradient. Identity in a single
    process."""
    if world_size() == 1:
        return tensor
    tensor = tensor.detach().contiguous()
    out = tensor.new_empty((world_size() * tensor.shape[0], *tensor.shape[1:]))
    _all_gather_into(out, tensor)
    return out


class _GatherWithGrad(torch.autograd.Function):
    """Forward: all-gather (rank order, equal shapes). Backward: the gradient of the gathered
    tensor summed over the ranks (every rank's loss may depend on every slice), then this
    rank's rows."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        ctx.rows = tensor.shape[0]
        return gather_batch(tensor)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        start = rank() * ctx.rows
        return grad[start:start + ctx.rows]


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """:func:`gather_batch` that back-propagates to every rank's slice, for losses that couple
    the samples of a batch (SRL, BNM). With DDP's averaging of the ranks' gradients, a loss
    computed on the gathered global batch (the same value on every rank) gets exactly the
    single-process gradient. Identity in a single process."""
    if world_size() == 1:
        return tensor
    return _GatherWithGrad.apply(tensor)


def all_gather_rows(tensor: torch.Tensor, sizes: list[int] | None = None) -> list[torch.Tensor]:
    """Every rank's ``tensor`` (rows may differ per rank; the other dims and dtype may not): a list
    in rank order, on this rank's original device. ``sizes``: the row counts of all ranks when
    every rank knows them (saves one collective)."""
    if world_size() == 1:
        return [tensor]
    device, comm = tensor.device, comm_device()
    if sizes is None:
        count = torch.tensor([tensor.shape[0]], device=comm)
        counts = [torch.zeros_like(count) for _ in range(world_size())]
        dist.all_gather(counts, count)
        sizes = [int(c.item()) for c in counts]
    longest = max(sizes)
    padded = torch.zeros((longest, *tensor.shape[1:]), dtype=tensor.dtype, device=comm)
    padded[:tensor.shape[0]] = tensor.to(comm)
    pieces = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(pieces, padded)
    return [piece[:size].to(device) for piece, size in zip(pieces, sizes)]


def shard_of(num_batches: int) -> list[int]:
    """The evaluation batches this rank embeds: every W-th, from its rank on."""
    return list(range(rank(), num_batches, world_size()))


def gather_shards(local: torch.Tensor | None, batch_sizes: list[int]) -> torch.Tensor:
    """The outputs of a sharded pass in dataset order. ``batch_sizes``: the rows of every batch of
    the pass; batch ``j`` was computed by rank ``j mod W``, and ``local`` holds this rank's
    batches concatenated in order (None when it had none). Every rank gets the whole tensor."""
    world = world_size()
    if world == 1:
        return local
    # a rank without batches does not know the trailing shape and dtype: ask the others
    meta = [None] * world
    dist.all_gather_object(meta, None if local is None else (tuple(local.shape[1:]), local.dtype))
    shape, dtype = next(m for m in meta if m is not None)
    if local is None:
        local = torch.empty((0, *shape), dtype=dtype)
    sizes = [sum(batch_sizes[r::world]) for r in range(world)]
    pieces = [piece.split(batch_sizes[r::world]) for r, piece in enumerate(all_gather_rows(local, sizes))]
    ordered = [pieces[j % world][j // world] for j in range(len(batch_sizes))]
    return torch.cat(ordered) if ordered else local


def broadcast_state(module: nn.Module) -> None:
    """Every tensor of ``module``'s state dict (parameters and buffers) set to rank 0's, in place."""
    if world_size() == 1:
        return
    comm = comm_device()
    for tensor in module.state_dict().values():  # views of the module's own storage
        if tensor.device == comm and tensor.is_contiguous():
            dist.broadcast(tensor, src=0)
        else:  # another device or memory format (channels-last weights): through a contiguous copy
            moved = tensor.to(comm).contiguous()
            dist.broadcast(moved, src=0)
            tensor.copy_(moved)


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` summed over the ranks (in place; returned). Identity in a single process."""
    if world_size() > 1:
        dist.all_reduce(tensor)
    return tensor


def wrap_ddp(module: nn.Module, device: torch.device) -> nn.Module:
    """``module`` in DistributedDataParallel (rank 0's parameters and buffers copied to every rank
    once). Buffers are not re-broadcast before each forward: the memory bank would travel every
    step, and every buffer is kept equal on all ranks by construction (module docstring)."""
    keep = ({"forward_sync_buffers": False}
            if "forward_sync_buffers" in inspect.signature(nn.parallel.DistributedDataParallel).parameters
            else {"broadcast_buffers": False})  # the older name
    return nn.parallel.DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None,
                                               **keep)


# ----------------------------------------------------------------------------- batch norm
def _plain_batchnorms(module: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """Batch-norm layers that keep running statistics and are not synchronised already."""
    from dmlrs.engine.sync_batchnorm import GlobalBatchNorm

    return [layer for layer in module.modules()
            if isinstance(layer, nn.modules.batchnorm._BatchNorm) and layer.track_running_stats
            and layer.running_mean is not None
            and not isinstance(layer, (nn.SyncBatchNorm, GlobalBatchNorm))]


def average_batchnorm_buffers(module: nn.Module) -> None:
    """Running mean and variance of every (unsynchronised) batch-norm layer averaged over the
    ranks, in one collective, so every rank keeps the same model. The mean of the ranks' running
    means is the single-process running mean; the variance misses the spread between the ranks'
    slices (``--sync-bn`` is exact)."""
    if world_size() == 1:
        return
    buffers = [b for layer in _plain_batchnorms(module) for b in (layer.running_mean, layer.running_var)]
    if not buffers:
        return
    flat = torch.cat([b.detach().reshape(-1).double() for b in buffers])
    dist.all_reduce(flat)
    flat /= world_size()
    with torch.no_grad():
        for buffer, values in zip(buffers, flat.split([b.numel() for b in buffers])):
            buffer.copy_(values.view_as(buffer))


def convert_sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """``--sync-bn``: batch norm over the global batch. CUDA: PyTorch's ``SyncBatchNorm``; other
    devices (which it refuses): :class:`dmlrs.engine.sync_batchnorm.GlobalBatchNorm`. Layers are
    replaced in place (parameters and buffers kept, so state dicts are unchanged)."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    from dmlrs.engine.sync_batchnorm import convert_global_batchnorm

    return convert_global_batchnorm(module)


# ----------------------------------------------------------------------------- test hook
def dump_state_for_tests(method: nn.Module) -> None:
    """``DMLRS_DIST_DUMP=DIR`` (tests): write this rank's method state to ``DIR/rank<r>.pt``."""
    folder = os.environ.get(DUMP_ENV)
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        torch.save({key: value.detach().cpu() for key, value in method.state_dict().items()},
                   Path(folder) / f"rank{rank()}.pt")
