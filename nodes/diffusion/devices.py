"""Choosing the compute device and dtype: CUDA, then MPS, then the CPU; the fastest precision each runs well."""

from __future__ import annotations

import functools
from pathlib import Path

import torch

__all__ = ["pick_device", "pick_dtype", "cpu_has_fast_bf16", "parse_dtype", "DeviceError"]

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class DeviceError(ValueError):
    """A device or precision preference that cannot be honoured."""


def pick_device(pref: str | torch.device | None = "auto") -> torch.device:
    """The device to run on: `auto` takes CUDA, then MPS, then the CPU; anything else is checked and used."""
    if isinstance(pref, torch.device):
        pref = str(pref)
    pref = (pref or "auto").strip().lower()
    if pref == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(pref)
    except RuntimeError as exc:
        raise DeviceError(f"device {pref!r} is not a torch device; use auto, cpu, cuda, cuda:N or mps") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device {pref!r} asked for, but this torch build sees no CUDA GPU; use --device cpu or auto")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()):
        raise DeviceError(f"device {pref!r} asked for, but MPS is not available; use --device cpu or auto")
    return device


@functools.cache
def _cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> frozenset[str]:
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags") and ":" in line:
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def cpu_has_fast_bf16(flags: frozenset[str] | None = None) -> bool:
    """True when the CPU multiplies bf16 in hardware (Intel AMX or AVX-512 BF16), per /proc/cpuinfo.

    Without either, PyTorch's CPU bf16 matmul falls back to slow reference code (on an AVX2-only
    machine a 2048^2 bf16 product measured over 200x slower than fp32), so fp32 is the right choice.
    """
    flags = _cpu_flags() if flags is None else flags
    return "amx_bf16" in flags or "avx512_bf16" in flags


def parse_dtype(pref: str | torch.dtype) -> torch.dtype:
    """`fp32` / `bf16` / `fp16` (or a torch dtype) to a torch dtype."""
    if isinstance(pref, torch.dtype):
        if pref not in _DTYPES.values():
            raise DeviceError(f"precision {pref} is not supported; use fp32, bf16 or fp16")
        return pref
    key = pref.strip().lower()
    if key not in _DTYPES:
        raise DeviceError(f"precision {pref!r} is not one of auto, {', '.join(_DTYPES)}")
    return _DTYPES[key]


def pick_dtype(device: torch.device | str, pref: str | torch.dtype | None = "auto", flags: frozenset[str] | None = None) -> torch.dtype:
    """The compute dtype for a device: forced by `fp32|bf16|fp16`, else the fastest that is accurate enough.

    CUDA: bf16 where supported (Ampere and later; no fp16 overflow in the SDXL VAE), else fp16.
    MPS: fp16. CPU: bf16 when it has AMX or AVX-512 BF16, else fp32.
    """
    device = torch.device(device)
    if pref is not None and not (isinstance(pref, str) and pref.strip().lower() == "auto"):
        return parse_dtype(pref)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    if device.type == "cpu":
        return torch.bfloat16 if cpu_has_fast_bf16(flags) else torch.float32
    return torch.float32
