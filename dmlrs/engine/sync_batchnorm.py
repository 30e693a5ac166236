"""Batch norm over the global batch of all processes, on any device (``--sync-bn`` on the CPU).

PyTorch's ``nn.SyncBatchNorm`` only runs on GPUs; ``--sync-bn`` uses it on CUDA and this layer
elsewhere (gloo on CPUs). In training mode under a process group of W > 1 it normalises with the
mean and (biased) variance of the whole global batch::

    n    = sum over ranks of the rows (x.numel() / channels)
    mean = allreduce(sum x) / n
    var  = allreduce(sum (x - mean)^2) / n          (two passes: no cancellation)
    y    = (x - mean) / sqrt(var + eps) * weight + bias

and updates the running statistics as ``F.batch_norm`` does (unbiased variance ``var * n / (n -
1)``), so they are the same on every rank. The all-reduces are differentiable: their backward
sums the ranks' gradients, so each rank's inputs get the gradient of the sum of all ranks'
losses, and DDP's averaging makes that the gradient of the single-process loss on the global
batch, as with ``nn.SyncBatchNorm``. In eval mode, or without a process group, it is the plain
batch norm. Statistics are computed in float32 at least (fp16/bf16 inputs under autocast).
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


class _AllReduceSum(torch.autograd.Function):
    """Sum over the ranks; the backward sums the incoming gradients over the ranks too."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(tensor)
        return tensor

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad)
        return grad


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch norm (any input of shape ``(N, C, ...)``) whose training statistics are those of the
    global batch of every rank (module docstring)."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected an input of at least 2 dimensions (N, C, ...), got {input.dim()}")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(input)
        self._check_input_dim(input)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average
                factor = 1.0 / float(self.num_batches_tracked)
        dims = [0, *range(2, input.dim())]
        shape = [1, input.shape[1]] + [1] * (input.dim() - 2)  # broadcast per channel
        x = input if input.dtype in (torch.float32, torch.float64) else input.float()  # fp16/bf16: fp32
        rows = x.new_full((1,), input.numel() // input.shape[1])
        totals = _AllReduceSum.apply(torch.cat([x.sum(dims), rows]))  # (C + 1,)
        count = totals[-1]
        mean = totals[:-1] / count  # (C,)
        centered = x - mean.view(shape)
        var = _AllReduceSum.apply((centered * centered).sum(dims)) / count  # (C,) biased
        out = centered * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.to(x.dtype).view(shape) + self.bias.to(x.dtype).view(shape)
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), factor)
                unbiased = var.detach() * count / (count - 1).clamp(min=1)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), factor)
        return out.to(input.dtype)


def convert_global_batchnorm(module: nn.Module) -> nn.Module:
    """Every batch-norm layer of ``module`` replaced by a :class:`GlobalBatchNorm` sharing its
    parameters and buffers (state dict keys unchanged); returns the converted module (``module``
    itself unless it is a batch-norm layer)."""
    output = module
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, (GlobalBatchNorm,
                                                                                       nn.SyncBatchNorm)):
        output = GlobalBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                                 module.track_running_stats)
        if module.affine:
            output.weight, output.bias = module.weight, module.bias
        output.running_mean, output.running_var = module.running_mean, module.running_var
        output.num_batches_tracked = module.num_batches_tracked
        output.train(module.training)
    for name, child in module.named_children():
        output.add_module(name, convert_global_batchnorm(child))
    return output
