"""SNCA forward+backward: dmlrs.losses.snca.SNCALoss vs the ORIGINAL algorithm.

The reference re-implements the SNCA / SNCA-CE code (Wu et al. 2018, ``lib/NCA.py`` +
``lib/LinearAverage.py``): ``exp`` of the logits, own slot zeroed, masked sums
``p = sum(exp * same)``, ``Z = sum(exp)``, ``Z = (Z - p) + p / exp(margin)``, ``-sum log(p/Z) / B``
over the samples with p != 0, with a hand-written backward in a ``torch.autograd.Function``.

Both run in the same process on the same data (B x N logits over all memory slots), with
warm-up and repeated timed runs; the script prints median times, the ratio, the max abs
difference of the loss and of the gradient w.r.t. the embeddings, and a case where the
logits are large enough that ``exp`` overflows in fp32 (reference -> nan, ours finite).

    OMP_NUM_THREADS=1 python benchmarks/bench_snca.py                 # B=256, N=22050, d=128
    python benchmarks/bench_snca.py --batch 64 --slots 5000 --device cuda
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


class OriginalSNCA(torch.autograd.Function):
    """The original algorithm: plain exp of the logits, masked sums, hand-written backward."""

    @staticmethod
    def forward(ctx, x, memory, memory_labels, labels, indices, temperature, margin_logit):
        batch = x.shape[0]
        exp = torch.mm(x, memory.t()).div_(temperature).exp_()  # (B, N)
        exp.scatter_(1, indices.view(-1, 1), 0)  # self exclusion
        same = labels.view(-1, 1).eq(memory_labels).float()  # (B, N)
        p = (exp * same).sum(dim=1)
        z = exp.sum(dim=1)
        z_exclude = z - p
        p = p / math.exp(margin_logit)
        z = z_exclude + p
        prob = p / z
        kept = prob.ne(0)
        ctx.save_for_backward(x, memory, exp, same, p, z, kept)
        ctx.temperature, ctx.margin_logit = temperature, margin_logit
        return -prob[kept].log().sum() / batch

    @staticmethod
    def backward(ctx, grad_loss):
        x, memory, exp, same, p, z, kept = ctx.saved_tensors
        batch = x.shape[0]
        # loss_i = -log(P_i / e^m) + log(N_i + P_i / e^m), P_i = p_i * e^m the raw same-class mass:
        # d/ds_ij = exp_ij * (1 / (e^m Z_i) - 1 / P_i) for same-class j, exp_ij / Z_i otherwise
        e_margin = math.exp(ctx.margin_logit)
        scale = (grad_loss * kept.float() / batch).view(-1, 1)
        raw_p = (p * e_margin).view(-1, 1)
        z = z.view(-1, 1)
        grad_logits = exp * (scale / z)
        grad_logits += exp * same * (scale / (e_margin * z) - scale / raw_p - scale / z)
        grad_x = torch.mm(grad_logits, memory).div_(ctx.temperature)
        return grad_x, None, None, None, None, None, None


def make_data(args, device):
    g = torch.Generator().manual_seed(0)
    centres = F.normalize(torch.randn(args.classes, args.dim, generator=g), dim=1)
    memory_labels = torch.arange(args.slots) % args.classes
    slots = F.normalize(centres[memory_labels] + args.spread * torch.randn(args.slots, args.dim, generator=g), dim=1)
    indices = torch.randperm(args.slots, generator=g)[: args.batch]
    embeddings = F.normalize(slots[indices] + 0.5 * args.spread * torch.randn(args.batch, args.dim, generator=g), dim=1)
    return (embeddings.to(device), slots.to(device), memory_labels.to(device), indices.to(device))


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


def loss_and_grad(loss_of, embeddings):
    x = embeddings.detach().clone().requires_grad_(True)
    loss = loss_of(x)
    loss.backward()
    return loss.detach(), x.grad


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--slots", type=int, default=22050, help="memory slots N (NWPU-RESISC45 70%% split)")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--classes", type=int, default=45)
    parser.add_argument("--spread", type=float, default=1.0, help="within-class noise of the synthetic data")
    parser.add_argument("--temperature", type=float, default=0.05)
    parser.add_argument("--margin", type=float, default=0.0, help="cosine units (original margin = ours / T)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    embeddings, slots, memory_labels, indices = make_data(args, device)
    labels = memory_labels[indices]
    memory = MemoryBank(args.slots, args.dim).to(device)
    memory.slots.copy_(slots)
    ours = SNCALoss(memory, memory_labels, temperature=args.temperature, margin=args.margin).to(device)

    def ours_of(x):
        return ours(x, labels, indices=indices)

    def original_of(x):
        return OriginalSNCA.apply(x, slots, memory_labels, labels, indices, args.temperature,
                                  args.margin / args.temperature)

    print(f"device={device} threads={args.threads} B={args.batch} N={args.slots} d={args.dim} "
          f"classes={args.classes} T={args.temperature} margin={args.margin}")
    t_ours, t_orig = timed_interleaved(
        [lambda: loss_and_grad(ours_of, embeddings), lambda: loss_and_grad(original_of, embeddings)],
        device, args.warmup, args.repeats)
    print(f"forward+backward median over {args.repeats} runs: ours {1e3 * t_ours:.2f} ms, "
          f"original {1e3 * t_orig:.2f} ms, original/ours = {t_orig / t_ours:.2f}x")

    loss_a, grad_a = loss_and_grad(ours_of, embeddings)
    loss_b, grad_b = loss_and_grad(original_of, embeddings)
    loss_64, grad_64 = loss_and_grad(lambda x: ours(x, labels, indices=indices), embeddings.double())
    print(f"loss: ours {loss_a.item():.6f}, original {loss_b.item():.6f}, |diff| {abs(loss_a - loss_b).item():.2e}; "
          f"max |grad diff| {(grad_a - grad_b).abs().max().item():.2e} (grad max {grad_b.abs().max().item():.2e})")
    def max_abs(a, b):
        return (a.double() - b).abs().max().item()

    print(f"vs float64 (ours): |loss diff| ours {max_abs(loss_a, loss_64):.2e}, "
          f"original {max_abs(loss_b, loss_64):.2e}; "
          f"max |grad diff| ours {max_abs(grad_a, grad_64):.2e}, original {max_abs(grad_b, grad_64):.2e}")

    # scale the embeddings so the largest logit is 200: exp(200) = inf in fp32 (overflow above ~88.7)
    scale = 200.0 / (embeddings @ slots.t() / args.temperature).max().item()
    big = embeddings * scale
    max_logit = (big @ slots.t() / args.temperature).max().item()
    loss_a, grad_a = loss_and_grad(ours_of, big)
    loss_b, grad_b = loss_and_grad(original_of, big)
    print(f"overflow case (embeddings x{scale:.2f}, max logit {max_logit:.0f}, exp(max) = "
          f"{torch.tensor(max_logit).exp().item()} in fp32): ours loss {loss_a.item():.4f} "
          f"finite={bool(torch.isfinite(loss_a)) and bool(torch.isfinite(grad_a).all())}; original loss "
          f"{loss_b.item()} finite={bool(torch.isfinite(loss_b)) and bool(torch.isfinite(grad_b).all())}")


if __name__ == "__main__":
    main()
