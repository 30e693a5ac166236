"""Device selection and mixed precision, without hard-coding CUDA anywhere."""
from __future__ import annotations

import contextlib

import torch

from dmlrs.errors import DmlrsError


def resolve_device(spec: str = "auto") -> torch.device:
    """``auto`` -> CUDA when present, else CPU; ``cpu``; ``cuda`` / ``cuda:N`` (case and
    surrounding spaces ignored). Anything else, or CUDA on a machine without it, raises one
    ``DmlrsError`` naming ``--device``; ``cli_checks.check_arguments`` calls this before any work."""
    if not isinstance(spec, str):
        raise DmlrsError(f"--device {spec!r} is not a device; use auto, cpu, cuda or cuda:N")
    spec = spec.strip().lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except (RuntimeError, ValueError, TypeError) as exc:
        raise DmlrsError(f"--device {spec!r} is not a device; use auto, cpu, cuda or cuda:N") from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DmlrsError(f"--device {spec}: CUDA is not available on this machine; use --device cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DmlrsError(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) here")
    elif device.type != "cpu":
        raise DmlrsError(f"--device {spec!r} is not supported; use auto, cpu, cuda or cuda:N")
    return device


def amp_dtype(device: torch.device) -> torch.dtype:
    """bf16 where the hardware has it (CPU, recent GPUs), else fp16 (needs a grad scaler)."""
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


def autocast(device: torch.device, enabled: bool):
    """Autocast context for the forward pass; losses switch themselves back to fp32."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=amp_dtype(device))


def make_grad_scaler(device: torch.device, enabled: bool) -> torch.amp.GradScaler:
    """A scaler that is active only for fp16 autocast (bf16 and fp32 need none)."""
    active = enabled and amp_dtype(device) == torch.float16
    return torch.amp.GradScaler(device.type, enabled=active)
