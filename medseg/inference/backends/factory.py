"""Building a backend for a checkpoint, and where its OpenVINO cache lives."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from medseg.checkpoint import Checkpoint
from medseg.inference.backends.base import Backend, resolve_backend_name
from medseg.networks.registry import size_divisor


def user_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/medseg``, else ``~/.cache/medseg``."""
    base = os.environ.get("XDG_CACHE_HOME")
    return (Path(base) if base else Path.home() / ".cache") / "medseg"


def default_cache_dir(checkpoint_path: Path | None) -> Path:
    """``<checkpoint folder>/.medseg-cache`` when that folder is writable, else :func:`user_cache_dir`."""
    if checkpoint_path is not None:
        folder = Path(checkpoint_path).resolve().parent
        cache = folder / ".medseg-cache"
        if (cache.is_dir() and os.access(cache, os.W_OK)) or (not cache.exists() and os.access(folder, os.W_OK)):
            return cache
    return user_cache_dir()


def network_divisor(checkpoint: Checkpoint) -> int:
    """Every spatial size of the network's input must be a multiple of this."""
    return size_divisor(checkpoint.network["name"], checkpoint.network["kwargs"])


def create_backend(
    name: str,
    checkpoint: Checkpoint,
    *,
    device: torch.device,
    cache_dir: Path | None = None,
    precision: str = "fp32",
) -> Backend:
    """The backend ``name`` (``auto``, ``torch`` or ``openvino``) for ``checkpoint``'s network.

    ``auto`` is ``torch`` on CUDA and ``openvino`` on the CPU when it is installed, else ``torch``.
    The OpenVINO backend always runs on the CPU; its ONNX export is cached in ``cache_dir``
    (default: :func:`user_cache_dir`) under the checkpoint's hash, and checked against a digest
    recorded beside it before it is used (see :mod:`~medseg.inference.backends.openvino_backend`).

    Raises:
        MedsegError: an unknown backend, or ``openvino`` when it is not installed.
    """
    resolved = resolve_backend_name(name, device)
    if resolved == "torch":
        from medseg.inference.backends.torch_backend import TorchBackend

        return TorchBackend(checkpoint.build_model(), device=device, precision=precision)
    from medseg.inference.backends.openvino_backend import OpenVINOBackend

    description = {
        "network": checkpoint.network,
        "channels": list(checkpoint.channels),
        "outputs": checkpoint.label_table.num_outputs,
        "torch": torch.__version__,
    }
    source = checkpoint.fingerprint(description)
    return OpenVINOBackend(
        checkpoint.build_model,
        in_channels=len(checkpoint.channels),
        cache_dir=cache_dir or user_cache_dir(),
        key=f"{checkpoint.network['name']}-{source[:20]}",
        source=source,
        divisor=network_divisor(checkpoint),
        precision=precision,
    )
