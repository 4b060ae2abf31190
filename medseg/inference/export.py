"""Exporting a checkpoint's network for deployment without medseg: TorchScript or ONNX.

The exported model is the bare network: input ``(B, C_in, X, Y, Z)`` float32 *after* medseg's
preprocessing (reorientation, spacing, intensity normalisation of the checkpoint's ``preprocessing``),
output raw logits ``(B, C_out, X, Y, Z)`` (apply sigmoid for region tables, softmax for class tables).
Spatial sizes must suit the network (e.g. divisible by the U-Net's total stride); sliding-window
inference with the checkpoint's ``inference.roi_size`` is the intended use. The checkpoint's description
(network, channels, labels, preprocessing, inference settings) travels with the file: as the extra file
``medseg.json`` in a TorchScript archive, as ``metadata_props["medseg"]`` in an ONNX model.

ONNX export needs the optional packages of the ``onnx`` extra (``pip install "medseg[onnx]"``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from medseg.errors import MedsegError

ExportFormat = Literal["torchscript", "onnx"]

ONNX_OPSET = 17
"""ONNX opset the exporter targets."""


def _description(checkpoint: Any) -> str:
    data = checkpoint.to_dict()
    for key in ("state_dict", "training", "config"):
        data.pop(key, None)
    return json.dumps(data)


def export_model(*, model: str | Path, fmt: ExportFormat, out: str | Path) -> Path:
    """Export the network of checkpoint ``model`` to ``out`` (written atomically).

    Args:
        model: a medseg checkpoint (``.pt``).
        fmt: ``"torchscript"`` (traced, load with ``torch.jit.load``) or ``"onnx"`` (opset 17, dynamic
            batch and spatial axes; input ``"image"``, output ``"logits"``).
        out: the file to write; never the checkpoint itself.

    Returns:
        ``out``.

    Raises:
        CheckpointError: ``model`` is not a readable medseg checkpoint.
        MedsegError: an unknown format, or ONNX export without the ``onnx`` extra installed.
        MedsegInputError: ``out`` is the checkpoint.
    """
    import torch

    from medseg.checkpoint import load_checkpoint
    from medseg.io import atomic_output, ensure_not_input

    if fmt not in ("torchscript", "onnx"):
        raise MedsegError(f"unknown export format {fmt!r}; use torchscript or onnx")
    if fmt == "onnx":
        try:
            import onnx
        except ImportError:
            raise MedsegError(
                'ONNX export needs the optional packages onnx and onnxruntime: pip install "medseg[onnx]"'
            ) from None
    out = Path(out)
    ensure_not_input(out, [model])
    checkpoint = load_checkpoint(model, training=False)
    network = checkpoint.build_model()
    roi = [int(s) for s in checkpoint.config["inference"]["roi_size"]]
    example = torch.zeros(1, len(checkpoint.channels), *roi)
    description = _description(checkpoint)
    with torch.no_grad(), atomic_output(out) as tmp:
        if fmt == "torchscript":
            traced = torch.jit.trace(network, example, check_trace=False)
            torch.jit.save(traced, str(tmp), _extra_files={"medseg.json": description})
        else:
            write_onnx(network, example, tmp)
            proto = onnx.load(str(tmp))
            entry = proto.metadata_props.add()
            entry.key, entry.value = "medseg", description
            onnx.checker.check_model(proto)
            onnx.save(proto, str(tmp))
    return out


def write_onnx(network: Any, example: Any, path: Path) -> None:
    """Trace ``network`` (a ``torch.nn.Module`` in eval mode) on ``example`` ``(1, C_in, X, Y, Z)``
    into an ONNX file at ``path`` (written in place): opset :data:`ONNX_OPSET`, input ``"image"``,
    output ``"logits"``, dynamic batch and spatial axes."""
    import torch

    axes = {0: "batch", 2: "x", 3: "y", 4: "z"}
    torch.onnx.export(
        network,
        (example,),
        str(path),
        input_names=["image"],
        output_names=["logits"],
        dynamic_axes={"image": axes, "logits": axes},
        opset_version=ONNX_OPSET,
        dynamo=False,
    )
