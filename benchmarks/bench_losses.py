"""Forward + backward of every dmlrs loss against the ORIGINAL algorithm, on the same inputs.

Each reference below re-implements the authors' algorithm in plain autograd, as their public
code computes it (SNCA itself is measured by ``bench_snca.py``):

* ``mnce``   normalized softmax with the ArcFace margin (HR-S2DML ``NormSoftmaxLoss_Margin``):
             cos = x . normalize(W), sin = sqrt(clamp(1 - cos^2, 0, 1)), phi = cos cos(m) - sin sin(m),
             ``where(cos > cos(pi - m), phi, cos - sin(pi - m) m)`` on ALL (B, C) entries, a one-hot
             blend ``one_hot * phi + (1 - one_hot) * cos`` and cross-entropy on logits / T;
* ``bnm``    ``torch.svd`` of softmax(logits) (U and V computed too), loss = -mean(S);
* ``trnsl``  Zhang & Sabuncu's ``TruncatedLoss`` as used by RNSL: softmax, gather p_y, p_y^q,
             ``((1 - p^q)/q) w[idx] - ((1 - k^q)/q) w[idx]``, mean;
* ``cdne``   the SNCA of the original ``NCACrossEntropy`` (exp of the memory logits, own slot
             zeroed through ``.data``, masked sums, ``p / Z``, log of the non-zero terms) + CE +
             quantization mean((|h| - 1)^2);
* ``srl``    the ranked-list loss algorithm of pytorch-metric-learning's ``RankedListLoss``
             written per anchor in a Python loop, as the RLL authors' code: distance matrix
             ``sqrt(clamp(|x|^2 + |y|^2 - 2 x.y))``, hard positives d > alpha - m averaged, hard
             negatives d < alpha weighted by exp(T (alpha - d)) / sum, plus SRL's per-class dynamic
             weight 1 + easy / hard positive pairs on the positive part.

Where the original model L2-normalises the embedding before the loss, the reference does too,
so losses and gradients are comparable. For every loss the script prints (and ``run`` returns)
median ms per forward + backward of dmlrs and of the reference, ratio = reference / dmlrs
(> 1: dmlrs faster), and the max |difference| of the loss and of every input gradient.
Calls alternate (after a warm-up) so load changes on a shared machine hit both alike. Before
the timed calls the losses' per-call input checks are switched off (``validate = False``), as
the engine does after the first step of each epoch.

    python benchmarks/bench_losses.py                 # B = 256, C = 45, d = 128, CDNE memory N = 22,050
    python benchmarks/bench_losses.py --quick --device cuda
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import warnings
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # benchlib, when imported from elsewhere
from benchlib import timed_interleaved  # noqa: E402
from dmlrs.losses import BNMLoss, CDNELoss, NormSoftmaxLoss, RobustNormSoftmaxLoss, SimilarityRetentionLoss  # noqa: E402
from dmlrs.memory import MemoryBank  # noqa: E402

TEMPERATURE = 0.05
MARGIN = 0.5  # ArcFace / MNCE
Q, K = 0.7, 0.5  # t-RNSL
ALPHA, SRL_MARGIN, SRL_T, SRL_LAMBDA = 1.2, 0.4, 10.0, 1.0


# ----------------------------------------------------------------------------- references
def reference_mnce(embeddings, weight, labels, margin=MARGIN, temperature=TEMPERATURE):
    """HR-S2DML's NormSoftmaxLoss_Margin (ArcFace margin on every entry, then a one-hot blend)."""
    x = F.normalize(embeddings, dim=1)  # the original model's L2 norm layer
    cos_m, sin_m = math.cos(margin), math.sin(margin)
    th, mm = math.cos(math.pi - margin), math.sin(math.pi - margin) * margin
    cosine = F.linear(x, F.normalize(weight, dim=1))  # (B, C)
    sine = torch.sqrt((1.0 - torch.pow(cosine, 2)).clamp(0, 1))
    phi = cosine * cos_m - sine * sin_m
    phi = torch.where(cosine > th, phi, cosine - mm)
    one_hot = torch.zeros_like(cosine)
    one_hot.scatter_(1, labels.view(-1, 1).long(), 1)
    output = (one_hot * phi) + ((1.0 - one_hot) * cosine)
    return F.cross_entropy(output / temperature, labels)


def reference_bnm(logits):
    """BNM / HR-S2DML: -mean of the singular values from torch.svd of the softmax."""
    softmax = torch.softmax(logits, dim=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.svd is deprecated in favour of torch.linalg.svd
        _, singular_values, _ = torch.svd(softmax)
    return -torch.mean(singular_values)


def reference_trnsl(embeddings, weight, labels, indices, sample_weight, q=Q, k=K, temperature=TEMPERATURE):
    """Zhang & Sabuncu's TruncatedLoss on normalized-softmax logits (RNSL code); sample_weight (N, 1)."""
    x = F.normalize(embeddings, dim=1)
    logits = F.linear(x, F.normalize(weight, dim=1)) / temperature
    p = F.softmax(logits, dim=1)
    yg = torch.gather(p, 1, torch.unsqueeze(labels, 1))  # (B, 1)
    loss = ((1 - (yg ** q)) / q) * sample_weight[indices] - ((1 - (k ** q)) / q) * sample_weight[indices]
    return torch.mean(loss)


def reference_cdne(codes, logits, labels, indices, memory, memory_labels, temperature=TEMPERATURE):
    """CDNE: original NCACrossEntropy on the normalised codes vs the memory + CE + quantization."""
    batch, n = codes.shape[0], memory.shape[0]
    f = F.normalize(codes, dim=1)
    x = torch.mm(f, memory.t()) / temperature  # LinearAverage forward, (B, N)
    exp = torch.exp(x)
    y = torch.index_select(memory_labels, 0, indices).view(batch, 1)
    same = y.repeat(1, n).eq_(memory_labels)
    exp.data.scatter_(1, indices.view(-1, 1), 0)  # self-exclusion through .data, as the original
    p = torch.mul(exp, same.float()).sum(dim=1)
    z = exp.sum(dim=1)
    z_exclude = z - p
    p = p.div(math.exp(0.0))  # margin 0
    z = z_exclude + p
    prob = torch.div(p, z)
    snca = -torch.masked_select(prob, prob.ne(0)).log().sum(0) / batch
    ce = F.cross_entropy(logits, labels)
    quant = torch.mean(torch.pow(torch.abs(codes) - 1, 2))
    return snca + ce + quant


def reference_srl(embeddings, labels, alpha=ALPHA, margin=SRL_MARGIN, temperature=SRL_T, lambda_=SRL_LAMBDA):
    """Ranked list loss per anchor (pytorch-metric-learning's algorithm, the RLL authors' loop) with
    SRL's dynamic positive weight 1 + E_c / H_c per class."""
    x = F.normalize(embeddings, dim=1)
    n = x.shape[0]
    xx = torch.pow(x, 2).sum(dim=1, keepdim=True).expand(n, n)
    dist = (xx + xx.t()).addmm(x, x.t(), beta=1, alpha=-2).clamp(min=1e-12).sqrt()  # euclidean_dist
    easy, hard = {}, {}
    with torch.no_grad():  # pair counts per class: no gradient
        for i in range(n):
            c = int(labels[i])
            is_pos = labels.eq(labels[i])
            is_pos[i] = False
            d_ap = dist[i][is_pos]
            hard[c] = hard.get(c, 0) + int((d_ap > alpha - margin).sum())
            easy[c] = easy.get(c, 0) + int((d_ap <= alpha - margin).sum())
    total = dist.new_zeros(())
    for i in range(n):
        c = int(labels[i])
        is_pos = labels.eq(labels[i])
        is_pos[i] = False
        is_neg = labels.ne(labels[i])
        d_ap, d_an = dist[i][is_pos], dist[i][is_neg]
        hard_ap = d_ap[d_ap > alpha - margin]
        if hard_ap.numel():
            omega = 1.0 + easy[c] / hard[c]
            total = total + omega * torch.sum(hard_ap - (alpha - margin)) / hard_ap.numel()
        hard_an = d_an[d_an < alpha]
        if hard_an.numel():
            weight = torch.exp(temperature * (alpha - hard_an))
            total = total + lambda_ * torch.sum((alpha - hard_an) * weight) / torch.sum(weight)
    return total / n


# ----------------------------------------------------------------------------- cases
@dataclass
class Case:
    """One loss on fixed inputs. ``dmlrs(*leaves)`` and ``reference(*leaves, *extra)`` return a
    scalar; gradients are compared w.r.t. every leaf (fresh copies of ``inputs`` each call) and
    w.r.t. the dmlrs loss's own ``parameters`` (class prototypes), which the reference receives as
    the leaves ``extra`` (copies of the same values)."""

    name: str
    description: str
    inputs: list
    dmlrs: Callable
    reference: Callable
    sizes: str
    module: torch.nn.Module
    parameters: list = field(default_factory=list)

    def dmlrs_step(self):
        leaves = [t.detach().clone().requires_grad_(True) for t in self.inputs]
        for parameter in self.parameters:
            parameter.grad = None
        loss = self.dmlrs(*leaves)
        loss.backward()
        return loss.detach(), [leaf.grad for leaf in leaves] + [p.grad for p in self.parameters]

    def reference_step(self):
        leaves = [t.detach().clone().requires_grad_(True) for t in self.inputs + self.parameters]
        loss = self.reference(*leaves)
        loss.backward()
        return loss.detach(), [leaf.grad for leaf in leaves]

    def checks_off(self):
        """What the engine does after the first step of an epoch: no per-call input checks."""
        for sub in self.module.modules():
            if hasattr(sub, "validate"):
                sub.validate = False


def make_cases(device, batch=256, classes=45, dim=128, memory_slots=22050, srl_batch=256, seed=0) -> list[Case]:
    """The five losses on synthetic inputs (fp32), built on ``device``."""
    g = torch.Generator().manual_seed(seed)
    on = lambda t: t.to(device)  # noqa: E731
    labels = on(torch.randint(0, classes, (batch,), generator=g))
    embeddings = on(F.normalize(torch.randn(batch, dim, generator=g), dim=1))
    cases = []

    mnce = NormSoftmaxLoss(classes, dim, temperature=TEMPERATURE, margin=MARGIN).to(device)
    cases.append(Case("mnce", "normalized softmax + ArcFace margin (HR-S2DML)", [embeddings],
                      lambda x: mnce(x, labels), lambda x, w: reference_mnce(x, w, labels),
                      f"B={batch} C={classes} d={dim}", mnce, [mnce.prototypes]))

    bnm = BNMLoss().to(device)
    logits = on(torch.randn(batch, classes, generator=g) * 5)
    cases.append(Case("bnm", "batch nuclear-norm maximisation (svdvals vs torch.svd)", [logits],
                      lambda z: bnm(z), reference_bnm, f"B={batch} C={classes}", bnm))

    num_samples = max(memory_slots, batch)
    trnsl = RobustNormSoftmaxLoss(classes, dim, num_samples, temperature=TEMPERATURE, q=Q, k=K).to(device)
    sample_weight = on((torch.rand(num_samples, generator=g) < 0.7).float())
    trnsl.weights.copy_(sample_weight)
    indices = on(torch.randperm(num_samples, generator=g)[:batch])
    cases.append(Case("trnsl", "truncated robust normalized softmax (t-RNSL)", [embeddings],
                      lambda x: trnsl(x, labels, indices=indices),
                      lambda x, w: reference_trnsl(x, w, labels, indices, sample_weight.view(-1, 1)),
                      f"B={batch} C={classes} d={dim} N={num_samples}", trnsl, [trnsl.prototypes]))

    memory_labels = torch.arange(memory_slots) % classes
    centres = F.normalize(torch.randn(classes, dim, generator=g), dim=1)
    slots = F.normalize(centres[memory_labels] + torch.randn(memory_slots, dim, generator=g), dim=1)
    bank = MemoryBank(memory_slots, dim).to(device)
    bank.slots.copy_(slots)
    cdne = CDNELoss(bank, memory_labels, temperature=TEMPERATURE).to(device)
    c_indices = torch.randperm(memory_slots, generator=g)[:batch]
    c_labels = on(memory_labels[c_indices])
    codes = on(slots[c_indices] * 2 + 0.5 * torch.randn(batch, dim, generator=g))
    class_logits = on(torch.randn(batch, classes, generator=g) * 3)
    c_indices, slots, memory_labels = on(c_indices), on(slots), on(memory_labels)
    cases.append(Case("cdne", "CDNE: SNCA on codes + CE + quantization", [codes, class_logits],
                      lambda h, z: cdne(h, c_labels, indices=c_indices, logits=z),
                      lambda h, z: reference_cdne(h, z, c_labels, c_indices, slots, memory_labels),
                      f"B={batch} bits={dim} C={classes} N={memory_slots}", cdne))

    # correlated class centres and a noise level per image: easy and hard positives, hard negatives
    per_class = 4
    srl_labels = on(torch.arange(srl_batch) // per_class)
    centres = torch.randn(dim, generator=g) * 0.8 + torch.randn(srl_batch // per_class, dim, generator=g) * 0.6
    spread = torch.rand(srl_batch, 1, generator=g) * 0.6 + 0.3
    srl_x = on(centres.repeat_interleave(per_class, 0) + torch.randn(srl_batch, dim, generator=g) * spread)
    srl = SimilarityRetentionLoss(alpha=ALPHA, margin=SRL_MARGIN, temperature=SRL_T, lambda_=SRL_LAMBDA).to(device)
    cases.append(Case("srl", "similarity retention loss (per-anchor ranked-list reference)", [srl_x],
                      lambda x: srl(x, srl_labels), lambda x: reference_srl(x, srl_labels),
                      f"B={srl_batch} ({srl_batch // per_class} classes x {per_class}) d={dim}", srl))
    return cases


def compare(case: Case) -> dict:
    """Loss and gradient differences of dmlrs vs the reference on the case's inputs."""
    loss_a, grads_a = case.dmlrs_step()
    loss_b, grads_b = case.reference_step()
    grad_diff = max(float((a.double() - b.double()).abs().max()) for a, b in zip(grads_a, grads_b))
    return {"dmlrs_loss": float(loss_a), "reference_loss": float(loss_b),
            "max_abs_diff_loss": abs(float(loss_a) - float(loss_b)), "max_abs_diff_grad": grad_diff}


def sizes_for(quick: bool, tiny: bool) -> dict:
    if tiny:
        return {"batch": 32, "classes": 8, "dim": 16, "memory_slots": 400, "srl_batch": 32, "warmup": 1, "repeats": 2,
                "min_seconds": 0.0}
    if quick:
        return {"batch": 256, "classes": 45, "dim": 128, "memory_slots": 7000, "srl_batch": 128, "warmup": 2,
                "repeats": 5, "min_seconds": 1.0}
    return {"batch": 256, "classes": 45, "dim": 128, "memory_slots": 22050, "srl_batch": 256, "warmup": 3,
            "repeats": 15, "min_seconds": 3.0}


def run(quick: bool, device: str = "cpu", tiny: bool = False) -> dict:
    """``{loss name: {"dmlrs_ms", "reference_ms", "ratio", "max_abs_diff_loss", "max_abs_diff_grad",
    "sizes", "description"}}``, ratio = reference / dmlrs (> 1: dmlrs faster)."""
    size = sizes_for(quick, tiny)
    cases = make_cases(device, batch=size["batch"], classes=size["classes"], dim=size["dim"],
                       memory_slots=size["memory_slots"], srl_batch=size["srl_batch"])
    results = {}
    for case in cases:
        accuracy = compare(case)  # first call: the losses' input checks run here
        case.checks_off()
        ours, reference = timed_interleaved([case.dmlrs_step, case.reference_step], device, size["warmup"],
                                            size["repeats"], min_seconds=size["min_seconds"])
        results[case.name] = {"dmlrs_ms": 1e3 * ours, "reference_ms": 1e3 * reference, "ratio": reference / ours,
                              **accuracy, "sizes": case.sizes, "description": case.description,
                              "repeats": size["repeats"]}
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="CDNE memory N = 7,000, SRL B = 128, fewer repeats")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    results = run(args.quick, args.device)
    print(f"{'loss':6s} {'dmlrs ms':>9s} {'ref ms':>9s} {'ratio':>6s} {'|dloss|':>9s} {'|dgrad|':>9s}  sizes")
    for name, r in results.items():
        print(f"{name:6s} {r['dmlrs_ms']:9.2f} {r['reference_ms']:9.2f} {r['ratio']:6.2f} "
              f"{r['max_abs_diff_loss']:9.2e} {r['max_abs_diff_grad']:9.2e}  {r['sizes']}")


if __name__ == "__main__":
    main()
