"""Eager PyTorch backend: fp32 on the CPU, fp16 autocast (AMP) on CUDA; Monte Carlo dropout passes."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn
from torch.nn.modules.dropout import _DropoutNd

from medseg.inference.backends.base import autocast_dtype, available_threads


def dropout_layers(model: nn.Module) -> list[nn.Module]:
    """The dropout layers of ``model`` that drop something (rate > 0; MONAI builds ``Dropout(p=0)`` layers when
    a network's dropout is off)."""
    return [m for m in model.modules() if isinstance(m, _DropoutNd) and m.p > 0]


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

    @contextlib.contextmanager
    def dropout_active(self, seed: int) -> Iterator[None]:
        """Within the block, the model's :func:`dropout_layers` drop (train mode; every other layer stays in
        eval mode, so normalisation is unchanged) with masks drawn from torch's generator seeded with ``seed``;
        the generator's state (CPU and this CUDA device) and eval mode are restored after."""
        layers = dropout_layers(self.model)
        cuda = self.device.type == "cuda"
        devices = [self.device.index if self.device.index is not None else torch.cuda.current_device()] if cuda else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            for layer in layers:
                layer.train()
            try:
                yield
            finally:
                for layer in layers:
                    layer.eval()
