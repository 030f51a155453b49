"""Where the arithmetic runs: device choice, memory budget, and ONE precision policy.

Training and prediction both ask this module which device to use, in which
floating-point precision (autocast dtype) and memory layout, so the two never
disagree: bf16 on CUDA GPUs that support it, fp32 elsewhere; channels_last on
CPU and CUDA, where the convolutions run faster in it.
"""

from __future__ import annotations

from typing import Literal

import torch

__all__ = [
    "DEVICE_CHOICES",
    "PRECISIONS",
    "Precision",
    "autocast_dtype",
    "available_devices",
    "available_memory",
    "cpu_bf16_native",
    "cpu_flags",
    "default_precision",
    "memory_format",
    "resolve_device",
]

Precision = Literal["fp32", "bf16", "fp16"]
PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16")
# what a user may choose in the widgets and the CLI; "auto" = cuda > mps > cpu
DEVICE_CHOICES: tuple[str, ...] = ("auto", "cpu", "cuda", "mps")


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """'auto'/None -> cuda > mps > cpu."""
    if device is None or str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:  # torch's message lists device types this package never uses (xla, ipu, ...)
        raise ValueError(f"unknown device {device!r}: use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            build = "this PyTorch is a CPU build" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise ValueError(f"device {device!r} asked for, but {build}; use device 'auto' or 'cpu'")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    if dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ValueError(f"device {device!r} asked for, but MPS (Apple GPU) is not available; use 'auto' or 'cpu'")
    return dev


def available_devices() -> list[str]:
    """The entries of :data:`DEVICE_CHOICES` this machine has (the widgets' device menus)."""
    have = {"auto": True, "cpu": True, "cuda": torch.cuda.is_available()}
    mps = getattr(torch.backends, "mps", None)
    have["mps"] = mps is not None and mps.is_available()
    return [d for d in DEVICE_CHOICES if have[d]]


def available_memory(device: torch.device) -> int:
    """Bytes we may use for activations on ``device``."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free * 0.6)
    try:
        with open("/proc/meminfo") as f:
            info = {ln.split(":")[0]: int(ln.split()[1]) * 1024 for ln in f}
        avail = info.get("MemAvailable", info["MemTotal"] // 2)
    except (OSError, KeyError, ValueError):
        avail = 4 << 30
    return int(avail * 0.25)


def default_precision(device: torch.device) -> str:
    """bf16 on CUDA GPUs that support it, else fp32 (training and prediction alike)."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return "bf16"
    return "fp32"


_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (Linux; empty elsewhere)."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith(("flags", "Features")):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_bf16_native() -> tuple[bool, str]:
    """(True, why) when this CPU computes bf16 natively (AVX512-BF16 or AMX-BF16) and torch uses AVX512.

    Without them oneDNN emulates bf16 and it is slower than fp32 (an Intel Xeon without avx512_bf16:
    docs/benchmarks.md), so only these CPUs are worth a trial.
    """
    cap = getattr(getattr(torch.backends, "cpu", None), "get_cpu_capability", lambda: "unknown")()
    flags = cpu_flags() & set(_BF16_FLAGS)
    if not flags:
        return False, f"the CPU has no native bf16 (no {' / '.join(_BF16_FLAGS)} flag; torch uses {cap})"
    if not str(cap).upper().startswith("AVX512"):
        return False, f"the CPU has {', '.join(sorted(flags))}, but torch runs {cap} kernels"
    return True, f"the CPU has {', '.join(sorted(flags))} and torch runs {cap} kernels"


def autocast_dtype(precision: str | None, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``precision`` (None = :func:`default_precision`); None = no autocast.

    fp16 on a CPU becomes bf16: CPU autocast has no fast fp16 kernels.
    """
    if precision is None:
        precision = default_precision(device)
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    if dtype is torch.float16 and device.type == "cpu":
        dtype = torch.bfloat16
    return dtype


def memory_format(device: torch.device) -> torch.memory_format:
    """channels_last where the convolutions are faster in it (CPU, CUDA), else contiguous."""
    return torch.channels_last if device.type in ("cpu", "cuda") else torch.contiguous_format
