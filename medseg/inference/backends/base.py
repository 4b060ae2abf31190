"""The backend contract and the facts about this machine that backends need."""

from __future__ import annotations

import importlib.util
import os
from functools import lru_cache
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch

from medseg.errors import MedsegError

BACKENDS = ("auto", "torch", "openvino")


@runtime_checkable
class Backend(Protocol):
    """Runs a network on a batch of windows.

    Attributes:
        name: ``torch`` or ``openvino``.
        device: where the logits come back (inputs may be on any device).
    """

    name: str
    device: torch.device

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C_in, X, Y, Z)`` float32 -> logits ``(B, C_out, X, Y, Z)`` float32 on :attr:`device`."""
        ...


def available_threads() -> int:
    """Cores this process may run on (``os.sched_getaffinity``; ``os.cpu_count`` where that is missing)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


@lru_cache(maxsize=1)
def cpu_has_native_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """True when the CPU reports native bf16 arithmetic (``avx512_bf16`` or ``amx_bf16`` flags).

    Reads ``/proc/cpuinfo`` (Linux); elsewhere the answer is False, so bf16 is never chosen blindly.
    """
    try:
        text = cpuinfo.read_text()
    except OSError:
        return False
    flags: set[str] = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def autocast_dtype(device: torch.device, precision: str, *, cuda_amp: bool = True) -> torch.dtype | None:
    """The dtype to autocast to when running on ``device``, or None for plain fp32.

    fp16 on CUDA (when ``cuda_amp``); bf16 on the CPU when ``precision`` is ``bf16`` and the CPU has
    it natively (:func:`cpu_has_native_bf16`: elsewhere bf16 is emulated and slower than fp32).
    """
    if device.type == "cuda":
        return torch.float16 if cuda_amp else None
    if device.type == "cpu" and precision == "bf16" and cpu_has_native_bf16():
        return torch.bfloat16
    return None


def openvino_available() -> bool:
    """Whether the ``openvino`` package can be imported (without importing it)."""
    return importlib.util.find_spec("openvino") is not None


def resolve_backend_name(name: str, device: torch.device) -> str:
    """``auto`` -> ``torch`` on CUDA, ``openvino`` on the CPU when installed, else ``torch``.

    Raises:
        MedsegError: an unknown name, or ``openvino`` when it is not installed.
    """
    if name not in BACKENDS:
        raise MedsegError(f"unknown inference backend {name!r}; available: {', '.join(BACKENDS)}")
    if name == "auto":
        return "openvino" if device.type == "cpu" and openvino_available() else "torch"
    if name == "openvino" and not openvino_available():
        raise MedsegError("backend 'openvino' needs OpenVINO, which is not installed: pip install 'medseg[openvino]'")
    return name
