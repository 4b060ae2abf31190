"""OpenVINO backend (CPU): the network is exported to ONNX once per checkpoint and cached on disk,
then compiled by OpenVINO for the window shape in use.

The ONNX file has dynamic batch and spatial axes, so one export serves every window shape; each
shape is reshaped to static and compiled separately (static shapes run fastest on the CPU plugin).
Only the latest compiled shape is kept per process: a compiled model and its request hold that
shape's working memory (about 250 MB for the ResU-Net at 160³, more than 1 GB for the DynUNet), and
tight tiling sizes windows to each case's crop, so keeping every shape would grow without bound over
a batch. A case uses one shape for all its windows; a new shape costs one compile.
Precision is fp32 unless bf16 is asked for and the CPU has native bf16: OpenVINO's own default on
such CPUs is bf16, so the hint is always set explicitly.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medseg.inference.backends.base import available_threads, cpu_has_native_bf16
from medseg.inference.export import write_onnx
from medseg.io.atomic import atomic_output

# the latest (onnx path, window shape (B, C, X, Y, Z), precision, threads) and its infer request
_LATEST: dict[tuple[str, tuple[int, ...], str, int], Any] = {}


def export_onnx(model: nn.Module, path: Path, *, in_channels: int, size: int) -> Path:
    """Export ``model`` (eval mode, CPU) to ONNX at ``path`` atomically, with dynamic batch and spatial
    axes; traced on a ``(1, in_channels, size, size, size)`` input."""
    example = torch.zeros(1, in_channels, size, size, size)
    with atomic_output(path) as tmp, warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        write_onnx(model.cpu().eval(), example, tmp)
    return path


class OpenVINOBackend:
    """Runs an ONNX export of a network with OpenVINO on the CPU.

    Args:
        model: the network (used only to export when the ONNX file is not cached).
        in_channels: input channels.
        cache_dir: folder of the ONNX cache.
        key: the checkpoint's hash; the ONNX file is ``<cache_dir>/<key>.onnx``.
        divisor: the network's size divisor (the export traces a ``2 * divisor`` cube).
        precision: ``fp32``, or ``bf16`` (used only when :func:`cpu_has_native_bf16`).
        threads: CPU threads (default: :func:`available_threads`).
    """

    name = "openvino"

    def __init__(
        self,
        model: nn.Module,
        *,
        in_channels: int,
        cache_dir: Path,
        key: str,
        divisor: int = 16,
        precision: str = "fp32",
        threads: int | None = None,
    ) -> None:
        import openvino as ov

        self.device = torch.device("cpu")
        self.core = ov.Core()
        self.threads = threads or available_threads()
        self.precision = "bf16" if precision == "bf16" and cpu_has_native_bf16() else "fp32"
        self.onnx_path = Path(cache_dir) / f"{key}.onnx"
        if not self.onnx_path.is_file():
            export_onnx(model, self.onnx_path, in_channels=in_channels, size=2 * divisor)

    def _request(self, shape: tuple[int, ...]) -> Any:
        key = (str(self.onnx_path), shape, self.precision, self.threads)
        request = _LATEST.get(key)
        if request is None:
            _LATEST.clear()  # free the previous shape's memory before compiling the next
            model = self.core.read_model(str(self.onnx_path))
            model.reshape({model.inputs[0]: list(shape)})
            config = {
                "INFERENCE_PRECISION_HINT": "bf16" if self.precision == "bf16" else "f32",
                "INFERENCE_NUM_THREADS": self.threads,
                "PERFORMANCE_HINT": "LATENCY",
            }
            request = _LATEST[key] = self.core.compile_model(model, "CPU", config).create_infer_request()
        return request

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C_in, X, Y, Z)`` -> logits ``(B, C_out, X, Y, Z)`` float32 on the CPU (one window at a time)."""
        arrays = x.detach().to("cpu", torch.float32).contiguous().numpy()
        request = self._request((1, *arrays.shape[1:]))
        outputs = []
        for item in arrays:
            request.infer({0: np.ascontiguousarray(item[None])})
            outputs.append(torch.from_numpy(request.get_output_tensor(0).data.copy()))
        return torch.cat(outputs)
