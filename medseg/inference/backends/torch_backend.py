"""Eager PyTorch backend: fp32 on the CPU, fp16 autocast (AMP) on CUDA."""

from __future__ import annotations

import torch
from torch import nn

from medseg.inference.backends.base import autocast_dtype, available_threads


class TorchBackend:
    """Runs ``model`` on ``device``.

    Args:
        model: the network (moved to ``device`` and put in eval mode).
        device: where to run.
        precision: ``fp32``, or ``bf16`` (CPU autocast, used only when the CPU has native bf16).
            On CUDA the backend always uses fp16 autocast.
    """

    name = "torch"

    def __init__(self, model: nn.Module, *, device: torch.device, precision: str = "fp32") -> None:
        self.device = device
        self.model = model.to(device).eval()
        self.autocast_dtype = autocast_dtype(device, precision)
        if device.type == "cpu" and torch.get_num_threads() > available_threads():
            torch.set_num_threads(available_threads())

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C_in, X, Y, Z)`` -> logits ``(B, C_out, X, Y, Z)`` float32 on :attr:`device`."""
        x = x.to(self.device, non_blocking=True)
        with torch.autocast(
            self.device.type, dtype=self.autocast_dtype or torch.float32, enabled=self.autocast_dtype is not None
        ):
            return self.model(x).float()
