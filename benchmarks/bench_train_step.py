"""One full SNCA-CE training step, fp32 vs mixed precision + channels_last, ResNet18 and ResNet50.

The step is the engine's (``dmlrs.engine.trainer``): batch to the device, channels_last when on,
``method.training_step`` under autocast (``dmlrs.engine.device.autocast``: bf16 where the
hardware has it, else fp16 with a grad scaler), zero_grad, backward, SGD step (lr 0.1,
momentum 0.9, nesterov, weight decay 1e-4, as the paper), memory-bank update. Not included:
image loading (``bench_pipeline.py``), logging, the non-finite check. Images are random tensors
already in memory. The method is SNCA-CE (MB): ResNet -> FC(128) -> L2 norm, class head over 45
classes (NWPU-RESISC45), SNCA over a memory of 22,050 slots (its 70% train split), T = 0.05.

Paper setting: batch 256 at 256 x 256 px. On the CPU ``--quick`` uses batch 8 at 96 px and the
full run batch 64 at 256 px (batch 256 of ResNet50 activations does not fit a small machine's
memory); the sizes are printed. Reported per model: median ms per step and images/s for fp32
and for ``--amp --channels-last`` (ratio = fp32 ms / amp ms, > 1: mixed precision faster; both
settings live side by side and their steps alternate), and the peak memory of one step on top of
the resident state (activations, gradients, workspaces): ``torch.cuda.max_memory_allocated`` on
CUDA (where the resident state -- weights, optimizer, memory bank -- is reported too), the peak
resident set size on the CPU.

    python benchmarks/bench_train_step.py --device cuda
    python benchmarks/bench_train_step.py --quick
"""
from __future__ import annotations

import argparse
import gc
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # benchlib, when imported from elsewhere
from benchlib import PeakMemory, mib, timed_interleaved  # noqa: E402
from dmlrs.engine.device import amp_dtype, autocast, make_grad_scaler  # noqa: E402
from dmlrs.methods.snca_ce import SNCACE  # noqa: E402
from dmlrs.models import build_model  # noqa: E402

CLASSES, SLOTS, DIM = 45, 22_050, 128


def sizes_for(quick: bool, tiny: bool, device: torch.device) -> dict:
    if tiny:
        return {"batch": 4, "image": 32, "slots": 256, "warmup": 1, "repeats": 1}
    if device.type == "cuda":
        return {"batch": 256, "image": 256, "slots": SLOTS, "warmup": 2 if quick else 3, "repeats": 3 if quick else 10}
    if quick:
        return {"batch": 8, "image": 96, "slots": SLOTS, "warmup": 1, "repeats": 3}
    return {"batch": 64, "image": 256, "slots": SLOTS, "warmup": 1, "repeats": 3}


class Setup:
    """A method, optimizer, scaler and one batch for one precision setting."""

    def __init__(self, backbone: str, device: torch.device, amp: bool, channels_last: bool, size: dict, seed=0):
        generator = torch.Generator().manual_seed(seed)
        train_labels = torch.arange(size["slots"]) % CLASSES
        torch.manual_seed(seed)
        model = build_model(backbone, DIM, weights="none", num_classes=CLASSES, channels_last=channels_last)
        self.method = SNCACE(model, train_labels).to(device)
        if channels_last:
            self.method.to(memory_format=torch.channels_last)
        if hasattr(self.method, "set_input_checks"):
            self.method.set_input_checks(False)  # as the engine after the first step of an epoch
        self.optimizer = torch.optim.SGD(self.method.parameters(), lr=0.1, momentum=0.9, nesterov=True,
                                         weight_decay=1e-4)
        self.scaler = make_grad_scaler(device, amp)
        indices = torch.randperm(size["slots"], generator=generator)[: size["batch"]]
        self.batch = {
            "image": torch.randn(size["batch"], 3, size["image"], size["image"], generator=generator),
            "label": train_labels[indices],
            "index": indices,
        }
        if device.type == "cuda":  # the engine's loader pins its batches
            self.batch = {key: value.pin_memory() for key, value in self.batch.items()}
        self.device, self.amp, self.channels_last = device, amp, channels_last

    def step(self):
        batch = {key: value.to(self.device, non_blocking=True) for key, value in self.batch.items()}
        if self.channels_last:
            batch["image"] = batch["image"].contiguous(memory_format=torch.channels_last)
        with autocast(self.device, self.amp):
            out = self.method.training_step(batch)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(out["loss"]).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.method.after_optimizer_step()


def step_state_bytes(device: torch.device) -> int | None:
    return torch.cuda.memory_allocated(device) if device.type == "cuda" else None


def step_peak(setup: Setup, device: torch.device) -> float | None:
    """Peak memory one step needs on top of what is resident before it (activations, gradients,
    workspaces), MiB."""
    with PeakMemory(device) as peak:
        setup.step()
    return mib(peak.extra_bytes)


def run(quick: bool, device: str = "cpu", tiny: bool = False, backbones=("resnet18", "resnet50")) -> dict:
    """``{backbone: {"fp32_ms", "amp_ms", "ratio", "fp32_img_per_s", "amp_img_per_s",
    "fp32_step_peak_mib", "amp_step_peak_mib", "state_mib", "sizes", ...}}``; ratio = fp32 ms /
    amp ms. Both settings live side by side and their steps alternate, so load changes on a
    shared machine hit both alike; the peak memory of each is measured in its own step."""
    device = torch.device(device)
    size = sizes_for(quick, tiny, device)
    precision = str(amp_dtype(device)).replace("torch.", "")
    results = {}
    for backbone in backbones:
        before = step_state_bytes(device)
        fp32 = Setup(backbone, device, False, False, size)
        for _ in range(size["warmup"]):
            fp32.step()
        state = None if before is None else torch.cuda.memory_allocated(device) - before
        amp = Setup(backbone, device, True, True, size)
        for _ in range(size["warmup"]):
            amp.step()
        fp32_peak, amp_peak = step_peak(fp32, device), step_peak(amp, device)
        fp32_s, amp_s = timed_interleaved([fp32.step, amp.step], device, 0, size["repeats"])
        del fp32, amp
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        note = "" if size["batch"] == 256 and size["image"] == 256 else " (paper: batch 256 at 256 px)"
        results[backbone] = {
            "fp32_ms": 1e3 * fp32_s, "amp_ms": 1e3 * amp_s, "ratio": fp32_s / amp_s,
            "fp32_img_per_s": size["batch"] / fp32_s, "amp_img_per_s": size["batch"] / amp_s,
            "fp32_step_peak_mib": fp32_peak, "amp_step_peak_mib": amp_peak, "state_mib": mib(state),
            "peak_memory": ("cuda max_memory_allocated" if device.type == "cuda" else "peak RSS")
                           + " of one step over the resident state (weights, optimizer, memory bank)",
            "amp": f"autocast {precision} + channels_last", "batch": size["batch"], "image": size["image"],
            "sizes": f"SNCA-CE {backbone}, batch {size['batch']} at {size['image']} px{note}, "
                     f"N={size['slots']} slots, {size['repeats']} timed steps each, alternating",
            "ratio_means": f"fp32 step time / {precision} autocast + channels_last step time",
        }
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--models", nargs="+", default=["resnet18", "resnet50"])
    args = parser.parse_args(argv)
    for backbone, r in run(args.quick, args.device, backbones=args.models).items():
        print(f"{backbone}: fp32 {r['fp32_ms']:.0f} ms ({r['fp32_img_per_s']:.1f} img/s, step peak "
              f"{r['fp32_step_peak_mib']} MiB)  {r['amp']} {r['amp_ms']:.0f} ms ({r['amp_img_per_s']:.1f} img/s, "
              f"step peak {r['amp_step_peak_mib']} MiB)  ratio {r['ratio']:.2f}  [{r['sizes']}]")


if __name__ == "__main__":
    main()
