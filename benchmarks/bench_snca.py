"""SNCA forward + backward + memory update: dmlrs vs the ORIGINAL code path.

Reference ("original"): the authors' code path of SNCA / SNCA-CE (Wu et al. 2018
``lib/LinearAverage.py`` + ``lib/NCA.py``, copied by Kang et al.'s SNCA_CE ``utils/``),
re-implemented here from its description:

* the memory layer is a custom autograd Function and nothing else: forward
  ``out = x @ memory^T / T`` (on the detached x), backward ``grad_x = grad_out @ memory / T``
  followed, inside that backward, by the memory momentum update
  ``m_i <- normalize(mu * m_i + (1 - mu) * x_i)`` (index_select / index_copy_);
* the NCA loss runs under PLAIN autograd: ``exp(out)``, own slot zeroed (through ``.data``,
  as the original), ``p = sum(exp * same_class)``, ``Z = sum(exp)``, ``Z = (Z - p) + p / e^m``,
  ``prob = p / Z``, ``-sum(log(masked_select(prob, prob != 0))) / B``.

Two details make this reference slightly FASTER than the literal original, so a ratio >= 1 is
conservative: the same-class mask is one broadcast comparison (the original first repeats the
labels to a (B, N) long tensor), and the backward divides the (B, d) result by T instead of
the (B, N) incoming gradient.

dmlrs: ``SNCALoss`` forward + backward, then ``MemoryBank.update`` (what the engine does after
the optimizer step), with the label check off after the first call (``validate = False``, as
the engine after an epoch's first step; on a CPU it runs anyway, it costs no sync there).
Both sides get the same data and their own copy of the memory; calls
alternate (warm-up first) so load changes on a shared machine hit both alike, and the median
per call is reported. Also printed: |loss| and max |grad| differences between the two, and
of each against an independent float64 log-sum-exp evaluation, and an overflow case (logits
up to 200: ``exp`` overflows fp32 above ~88.7, the original gives nan, dmlrs stays finite).

    OMP_NUM_THREADS=2 python benchmarks/bench_snca.py                       # N = 7,000 and 22,050, 1 and 2 threads
    python benchmarks/bench_snca.py --slots 22050 --threads 1 --repeats 40
    python benchmarks/bench_snca.py --device cuda --threads 1

``run(quick, device)`` (used by ``benchmarks/run.py``) returns ``{"dmlrs_ms", "original_ms",
"ratio"}`` with ratio = original / dmlrs, at N = 7,000 when ``quick`` and otherwise for the
size with the LOWER ratio among N = 7,000 and 22,050 (each under ``"per_size"``), with
torch's current number of threads. B = 256, d = 128, T = 0.05, fp32.
"""
from __future__ import annotations

import argparse
import math
import statistics
import time

import torch
import torch.nn.functional as F

from dmlrs.losses.snca import SNCALoss
from dmlrs.memory import MemoryBank

BATCH, DIM, CLASSES, TEMPERATURE, MOMENTUM = 256, 128, 45, 0.05, 0.5
SIZES = (7000, 22050)  # AID / NWPU-RESISC45 training splits (70 %)


# ----------------------------------------------------------------------------- the reference
class OriginalLinearAverage(torch.autograd.Function):
    """The original memory layer: x @ memory^T / T; its backward also writes the memory."""

    @staticmethod
    def forward(ctx, x, indices, memory, temperature, momentum):
        ctx.save_for_backward(x.detach(), indices, memory)
        ctx.temperature, ctx.momentum = temperature, momentum
        return torch.mm(x.detach(), memory.t()).div_(temperature)  # (B, N)

    @staticmethod
    def backward(ctx, grad_out):
        x, indices, memory = ctx.saved_tensors
        grad_x = torch.mm(grad_out, memory).div_(ctx.temperature)  # (B, d), memory before the update
        mixed = memory.index_select(0, indices).mul_(ctx.momentum).add_(x, alpha=1 - ctx.momentum)
        mixed.div_(mixed.pow(2).sum(dim=1, keepdim=True).sqrt())
        memory.index_copy_(0, indices, mixed)
        return grad_x, None, None, None, None


def original_nca(out, indices, memory_labels, margin_logit):
    """The original NCA cross-entropy, under plain autograd."""
    batch = out.shape[0]
    exp = torch.exp(out)  # (B, N)
    same = memory_labels.index_select(0, indices)[:, None].eq(memory_labels[None, :])  # (B, N)
    exp.data.scatter_(1, indices[:, None], 0)  # own slot, behind autograd's back as the original
    p = torch.mul(exp, same).sum(dim=1)
    z = exp.sum(dim=1)
    z_exclude = z - p
    p = p / math.exp(margin_logit)
    z = z_exclude + p
    prob = p / z
    return -torch.masked_select(prob, prob.ne(0)).log().sum() / batch


# ----------------------------------------------------------------------------- float64 check
def float64_snca(x, slots, memory_labels, indices, temperature, margin):
    """Independent float64 evaluation (masked log-sum-exp under autograd)."""
    logits = x.double() @ slots.double().t() / temperature
    same = memory_labels[indices][:, None] == memory_labels[None, :]
    own = torch.zeros_like(same).scatter_(1, indices[:, None], True)
    lse_pos = torch.where(same & ~own, logits, -math.inf).logsumexp(dim=1)
    lse_neg = torch.where(same, -math.inf, logits).logsumexp(dim=1)
    per_sample = F.softplus(lse_neg - lse_pos + margin / temperature)
    return torch.where(torch.isfinite(lse_pos), per_sample, 0.0).sum() / x.shape[0]


# ----------------------------------------------------------------------------- setup
def make_data(slots_n, device, spread=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(CLASSES, DIM, generator=g), dim=1)
    memory_labels = torch.arange(slots_n) % CLASSES
    slots = F.normalize(centres[memory_labels] + spread * torch.randn(slots_n, DIM, generator=g), dim=1)
    indices = torch.randperm(slots_n, generator=g)[:BATCH]
    embeddings = F.normalize(slots[indices] + 0.5 * spread * torch.randn(BATCH, DIM, generator=g), dim=1)
    return embeddings.to(device), slots.to(device), memory_labels.to(device), indices.to(device)


class Sides:
    """One problem, two implementations, each with its own memory copy (both update it)."""

    def __init__(self, slots_n, device, margin=0.0):
        self.embeddings, self.slots, self.memory_labels, self.indices = make_data(slots_n, device)
        self.labels = self.memory_labels[self.indices]
        self.margin = margin
        self.memory = MemoryBank(slots_n, DIM, momentum=MOMENTUM).to(device)
        self.loss = SNCALoss(self.memory, self.memory_labels, temperature=TEMPERATURE, margin=margin).to(device)
        self.loss(self.embeddings, self.labels, indices=self.indices)  # label check (validate=True) ...
        self.loss.validate = False  # ... then off, as the engine after an epoch's first step
        self.original_memory = self.slots.clone()
        self.reset()

    def reset(self):
        self.memory.slots.copy_(self.slots)
        self.original_memory.copy_(self.slots)

    def dmlrs_step(self, embeddings=None):
        x = (self.embeddings if embeddings is None else embeddings).detach().clone().requires_grad_(True)
        loss = self.loss(x, self.labels, indices=self.indices)
        loss.backward()
        self.memory.update(self.indices, F.normalize(x.detach(), dim=1))  # the engine's MemoryWriter
        return loss.detach(), x.grad

    def original_step(self, embeddings=None):
        x = (self.embeddings if embeddings is None else embeddings).detach().clone().requires_grad_(True)
        out = OriginalLinearAverage.apply(x, self.indices, self.original_memory, TEMPERATURE, MOMENTUM)
        loss = original_nca(out, self.indices, self.memory_labels, self.margin / TEMPERATURE)
        loss.backward()
        return loss.detach(), x.grad


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_interleaved(fns, device, warmup, repeats):
    """Median seconds per call of each fn; calls alternate so load changes hit both alike."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, bucket in zip(fns, times):
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            bucket.append(time.perf_counter() - start)
    return [statistics.median(bucket) for bucket in times]


def _max_abs(a, b):
    return (a.double() - b.double()).abs().max().item()


def measure(slots_n, device, warmup=3, repeats=20, margin=0.0, accuracy=True):
    """Times (ms) of both sides at N = slots_n, plus accuracy figures when ``accuracy``."""
    device = torch.device(device)
    sides = Sides(slots_n, device, margin)
    t_dmlrs, t_orig = timed_interleaved([sides.dmlrs_step, sides.original_step], device, warmup, repeats)
    result = {"N": slots_n, "threads": torch.get_num_threads(), "dmlrs_ms": 1e3 * t_dmlrs,
              "original_ms": 1e3 * t_orig, "ratio": t_orig / t_dmlrs}
    if not accuracy:
        return result
    sides.reset()
    loss_a, grad_a = sides.dmlrs_step()
    loss_b, grad_b = sides.original_step()
    x64 = sides.embeddings.double().requires_grad_(True)
    loss_64 = float64_snca(x64, sides.slots, sides.memory_labels, sides.indices, TEMPERATURE, margin)
    (grad_64,) = torch.autograd.grad(loss_64, x64)
    result.update({
        "loss": loss_a.item(), "loss_diff": _max_abs(loss_a, loss_b), "grad_diff": _max_abs(grad_a, grad_b),
        "grad_max": grad_b.abs().max().item(),
        "dmlrs_loss_vs_f64": _max_abs(loss_a, loss_64), "original_loss_vs_f64": _max_abs(loss_b, loss_64),
        "dmlrs_grad_vs_f64": _max_abs(grad_a, grad_64), "original_grad_vs_f64": _max_abs(grad_b, grad_64),
        # memory after one step: the same update rule on both sides
        "memory_diff": _max_abs(sides.memory.slots, sides.original_memory),
    })
    # overflow: embeddings scaled so that the largest logit is 200 (exp(200) = inf in fp32)
    sides.reset()
    scale = 200.0 / (sides.embeddings @ sides.slots.t() / TEMPERATURE).max().item()
    big = sides.embeddings * scale
    loss_a, grad_a = sides.dmlrs_step(big)
    loss_b, grad_b = sides.original_step(big)
    x64 = big.double().requires_grad_(True)
    loss_64 = float64_snca(x64, sides.slots, sides.memory_labels, sides.indices, TEMPERATURE, margin)
    (grad_64,) = torch.autograd.grad(loss_64, x64)
    result["overflow"] = {
        "scale": scale, "dmlrs_loss": loss_a.item(), "original_loss": loss_b.item(), "float64_loss": loss_64.item(),
        "dmlrs_finite": bool(torch.isfinite(loss_a)) and bool(torch.isfinite(grad_a).all()),
        "original_finite": bool(torch.isfinite(loss_b)) and bool(torch.isfinite(grad_b).all()),
        "dmlrs_loss_vs_f64": _max_abs(loss_a, loss_64), "dmlrs_grad_vs_f64": _max_abs(grad_a, grad_64),
    }
    return result


def run(quick: bool, device: str, tiny: bool = False) -> dict:
    """``{"dmlrs_ms", "original_ms", "ratio"}`` (ratio = original / dmlrs) for benchmarks/run.py.

    quick: N = 7,000 only; otherwise N = 7,000 and 22,050 and the top-level numbers are those of
    the size with the lower ratio (each size under ``"per_size"``, a summary in ``"sizes"``).
    tiny (tests): N = 2,000, a few calls. Uses torch's current number of threads.
    """
    sizes = (2000,) if tiny else SIZES[:1] if quick else SIZES
    warmup, repeats = (1, 3) if tiny else (3, 10) if quick else (3, 20)
    per_size = {n: measure(n, device, warmup=warmup, repeats=repeats, accuracy=False) for n in sizes}
    worst = min(per_size.values(), key=lambda r: r["ratio"])
    summary = "; ".join(f"N={n}: {r['dmlrs_ms']:.3g} vs {r['original_ms']:.3g} ms ({r['ratio']:.2f}x)"
                        for n, r in per_size.items())
    return {"dmlrs_ms": worst["dmlrs_ms"], "original_ms": worst["original_ms"], "ratio": worst["ratio"],
            "N": worst["N"], "threads": torch.get_num_threads(), "device": str(device), "per_size": per_size,
            "sizes": f"B={BATCH} d={DIM} T={TEMPERATURE} fp32, {torch.get_num_threads()} threads; {summary}"}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slots", type=int, nargs="+", default=list(SIZES), help="memory sizes N")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--margin", type=float, default=0.0, help="cosine units (original margin = ours / T)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    print(f"device={args.device} B={BATCH} d={DIM} classes={CLASSES} T={TEMPERATURE} margin={args.margin} "
          f"memory momentum={MOMENTUM}; forward + backward + memory update, median ms per call")
    print(f"{'N':>6} {'thr':>3} {'dmlrs':>8} {'orig':>8} {'ratio':>6} | {'|dloss|':>8} {'|dgrad|':>8} | "
          f"{'ours-f64 loss':>13} {'orig-f64 loss':>13} {'ours-f64 grad':>13} {'orig-f64 grad':>13} | "
          f"{'|dmem|':>8} | overflow: ours loss (vs f64), original loss")
    for threads in args.threads:
        torch.set_num_threads(threads)
        for slots_n in args.slots:
            r = measure(slots_n, args.device, args.warmup, args.repeats, args.margin)
            o = r["overflow"]
            print(f"{slots_n:>6} {threads:>3} {r['dmlrs_ms']:>8.2f} {r['original_ms']:>8.2f} {r['ratio']:>5.2f}x | "
                  f"{r['loss_diff']:>8.1e} {r['grad_diff']:>8.1e} | {r['dmlrs_loss_vs_f64']:>13.1e} "
                  f"{r['original_loss_vs_f64']:>13.1e} {r['dmlrs_grad_vs_f64']:>13.1e} "
                  f"{r['original_grad_vs_f64']:>13.1e} | {r['memory_diff']:>8.1e} | "
                  f"{o['dmlrs_loss']:.4f} ({o['dmlrs_loss_vs_f64']:.1e}, finite={o['dmlrs_finite']}), "
                  f"{o['original_loss']} (finite={o['original_finite']})", flush=True)


if __name__ == "__main__":
    main()
