"""OpenVINO backend (CPU): the network is exported to ONNX once per checkpoint and cached on disk,
then compiled by OpenVINO for the window shape in use.

Beside each cached ``<key>.onnx`` lies ``<key>.json``: the digest of what it was exported from (the
checkpoint's weights and the export settings) and the SHA-256 of the ONNX file itself. An export is
used only when both match; one that does not (truncated, overwritten, written for other weights, or
from before medseg kept the record), or that OpenVINO fails to read, is exported again.

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

import hashlib
import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medseg.errors import MedsegError, first_line
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
        build_model: makes the network (eval mode, CPU); called only to export it, when the cache holds
            no valid export.
        in_channels: input channels.
        cache_dir: folder of the ONNX cache.
        key: the checkpoint's hash; the ONNX file is ``<cache_dir>/<key>.onnx``.
        source: the digest of the weights and export settings the export is made from (recorded beside
            it, and checked before it is used).
        divisor: the network's size divisor (the export traces a ``2 * divisor`` cube).
        precision: ``fp32``, or ``bf16`` (used only when :func:`cpu_has_native_bf16`).
        threads: CPU threads (default: :func:`available_threads`).
    """

    name = "openvino"

    def __init__(
        self,
        build_model: Callable[[], nn.Module],
        *,
        in_channels: int,
        cache_dir: Path,
        key: str,
        source: str,
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
        self.record_path = self.onnx_path.with_suffix(".json")
        self.source = source
        self.build_model = build_model
        self.in_channels, self.divisor = in_channels, divisor
        if not self._cached():
            self._export()

    def _cached(self) -> bool:
        """Whether the cached export is there, made from this ``source``, and intact (its SHA-256 recorded)."""
        try:
            record = json.loads(self.record_path.read_text())
        except (OSError, ValueError):
            return False
        return (
            isinstance(record, dict)
            and record.get("source") == self.source
            and self.onnx_path.is_file()
            and record.get("onnx_sha256") == _sha256(self.onnx_path)
        )

    def _export(self) -> None:
        """Export the network to the cache, then record what it was made from and its digest."""
        export_onnx(self.build_model(), self.onnx_path, in_channels=self.in_channels, size=2 * self.divisor)
        record = {"source": self.source, "onnx_sha256": _sha256(self.onnx_path)}
        with atomic_output(self.record_path) as tmp:
            tmp.write_text(json.dumps(record, indent=2) + "\n")

    def _compile(self, shape: tuple[int, ...]) -> Any:
        model = self.core.read_model(str(self.onnx_path))
        model.reshape({model.inputs[0]: list(shape)})
        config = {
            "INFERENCE_PRECISION_HINT": "bf16" if self.precision == "bf16" else "f32",
            "INFERENCE_NUM_THREADS": self.threads,
            "PERFORMANCE_HINT": "LATENCY",
        }
        return self.core.compile_model(model, "CPU", config).create_infer_request()

    def _request(self, shape: tuple[int, ...]) -> Any:
        """The infer request for windows of ``shape``; a cached export OpenVINO fails to read is
        exported again, once.

        Raises:
            MedsegError: OpenVINO cannot read or compile a fresh export either, naming it.
        """
        key = (str(self.onnx_path), shape, self.precision, self.threads)
        request = _LATEST.get(key)
        if request is None:
            _LATEST.clear()  # free the previous shape's memory before compiling the next
            try:
                request = self._compile(shape)
            except RuntimeError:
                self._export()
                try:
                    request = self._compile(shape)
                except RuntimeError as exc:
                    raise MedsegError(
                        f"OpenVINO cannot use this ONNX export: {_reason(exc)}", path=self.onnx_path
                    ) from None
            _LATEST[key] = request
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


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _reason(exc: RuntimeError) -> str:
    """The line of an OpenVINO error that says what is wrong (its first lines name source files)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return next((line for line in lines if not line.startswith(("Exception from", "Check '"))), first_line(exc))
