"""Inference backends: a :class:`Backend` maps a batch of windows ``(B, C_in, X, Y, Z)`` to logits
``(B, C_out, X, Y, Z)``; :func:`create_backend` picks one by name.

- ``torch``: eager PyTorch on the Predictor's device (fp16 autocast on CUDA); the default on CUDA.
- ``openvino``: OpenVINO on the CPU from an ONNX export cached on disk; the default on the CPU when
  the optional ``medseg[openvino]`` extra is installed.

OpenVINO is imported lazily, so importing this package does not need it.
"""

from __future__ import annotations

from medseg.inference.backends.base import Backend, available_threads, cpu_has_native_bf16, resolve_backend_name
from medseg.inference.backends.factory import create_backend, default_cache_dir

__all__ = [
    "Backend",
    "available_threads",
    "cpu_has_native_bf16",
    "create_backend",
    "default_cache_dir",
    "resolve_backend_name",
]
