"""Device choice and mixed precision: CUDA fp16/bf16 with a scaler where needed, CPU bf16."""

from __future__ import annotations

import contextlib
import warnings

import torch

from myutils.cli import InputError


def resolve_device(name: str | None = None) -> torch.device:
    """``None``/"auto" picks CUDA when present; an unavailable CUDA request is a clear error."""
    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {name} was requested but CUDA is not available on this machine")
    return device


def autocast_dtype(device: torch.device, prefer: str = "auto") -> torch.dtype:
    """bf16 where the hardware supports it (CPU, Ampere+), otherwise fp16 on CUDA."""
    if prefer == "fp16":
        return torch.float16
    if prefer == "bf16" or device.type == "cpu":
        return torch.bfloat16
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def autocast(device: torch.device, enabled: bool, dtype: torch.dtype | None = None):
    """An autocast context for ``device``; a no-op context when disabled."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype or autocast_dtype(device))


def make_grad_scaler(device: torch.device, enabled: bool, dtype: torch.dtype | None = None) -> torch.amp.GradScaler:
    """A scaler that is active only for fp16 on CUDA (bf16 keeps fp32's exponent range)."""
    dtype = dtype or autocast_dtype(device)
    needed = enabled and device.type == "cuda" and dtype == torch.float16
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # GradScaler warns when created disabled on CPU
        return torch.amp.GradScaler(device.type, enabled=needed)


def amp_settings(choice: str, device: torch.device) -> tuple[bool, torch.dtype]:
    """(enabled, dtype) for an ``--amp auto|bf16|fp16|off`` flag: auto is off on CPU, bf16 or fp16 on CUDA."""
    if choice == "off" or (choice == "auto" and device.type == "cpu"):
        return False, torch.float32
    return True, autocast_dtype(device, "auto" if choice == "auto" else choice)
