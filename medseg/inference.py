"""Inference: a :class:`Predictor` loads a model once and segments many cases (batch runs over folders
of cases live in :mod:`medseg.batch`).

Geometry is preserved exactly: the image is reoriented (and, if configured, resampled and cropped)
with invertible MONAI transforms, and the probabilities are mapped back through their inverses, so
the label map is written on the input's own grid (same shape and affine).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.inferers import sliding_window_inference

from medseg.checkpoint import Checkpoint, load_checkpoint
from medseg.config import InferenceConfig, TransformConfig
from medseg.data.cases import InputCase
from medseg.distributed import resolve_device
from medseg.errors import MedsegInputError
from medseg.io import Image, read_dicom_series, read_image
from medseg.keys import IMAGE
from medseg.transforms import inference_transforms, outputs_to_labels


def read_case(case: InputCase) -> Image:
    """Read a case's images (any format of :func:`~medseg.io.read_image`) into one ``(C, X, Y, Z)`` float32
    :class:`Image` on the first file's grid; a 4-D file contributes all its channels.

    Raises:
        MedsegInputError: a file is missing or unreadable, or not on the first file's grid.
    """
    if case.series_uid is not None:
        images = [read_dicom_series(case.images[0], series_uid=case.series_uid or None, recursive=False)]
    else:
        images = [read_image(p) for p in case.images]
    first = images[0]
    for img in images:
        if img.array.ndim == 4 and len(images) > 1:
            raise MedsegInputError(f"expected a 3-D image per channel file, got shape {img.array.shape}", path=img.path)
        if img.geometry.shape != first.geometry.shape:
            raise MedsegInputError(
                f"shape {img.geometry.shape} differs from {first.path.name} {first.geometry.shape}", path=img.path
            )
        if not img.geometry.same_grid(first.geometry):
            raise MedsegInputError(f"affine differs from {first.path.name}", path=img.path)
    arrays = [c.astype(np.float32, copy=False) for img in images for c in img.array.reshape(-1, *img.geometry.shape)]
    return Image(np.stack(arrays), first.geometry, first.path, dict(first.meta))


class Predictor:
    """A model ready to segment images, loaded once.

    Args:
        checkpoint: a loaded medseg checkpoint.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        backend: ``auto`` or ``torch`` (eager PyTorch; AMP on CUDA).
    """

    def __init__(self, checkpoint: Checkpoint, *, device: str = "auto", backend: str = "auto") -> None:
        if backend not in ("auto", "torch"):
            raise MedsegInputError(f"unknown inference backend {backend!r}; available: auto, torch")
        self.checkpoint = checkpoint
        self.table = checkpoint.label_table
        self.channels = list(checkpoint.channels)
        self.device = resolve_device(device)
        self.inference = InferenceConfig(**checkpoint.config["inference"])
        self.transforms = inference_transforms(TransformConfig(**checkpoint.config["transforms"]))
        self.model = checkpoint.build_model().to(self.device)

    @classmethod
    def from_checkpoint(cls, path: str | Path, *, device: str = "auto", backend: str = "auto") -> Predictor:
        """Load ``path`` (a ``.pt`` written by ``medseg train``)."""
        return cls(load_checkpoint(path), device=device, backend=backend)

    @torch.no_grad()
    def predict_probabilities(self, image: Image) -> np.ndarray:
        """Per-output probabilities ``(C_out, X, Y, Z)`` float32 on ``image``'s own grid.

        ``image.array`` is ``(C_in, X, Y, Z)`` in file voxel order with ``image.geometry.affine``.
        Region models give sigmoid probabilities, class models softmax.
        """
        if image.array.shape[0] != len(self.channels):
            raise MedsegInputError(
                f"the model needs {len(self.channels)} channels ({', '.join(self.channels)}), "
                f"got {image.array.shape[0]}",
                path=image.path,
            )
        data = self.transforms({IMAGE: MetaTensor(torch.as_tensor(image.array), affine=image.geometry.affine)})
        x = data[IMAGE]
        inf = self.inference
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.device.type == "cuda"):
            logits = sliding_window_inference(
                x.unsqueeze(0).as_tensor().to(self.device),
                inf.roi_size,
                inf.sw_batch_size,
                self.model,
                overlap=inf.overlap,
                mode=inf.mode,
            )
        logits = logits[0].float().cpu()
        probs = torch.sigmoid(logits) if self.table.kind == "regions" else torch.softmax(logits, 0)
        restored = self.transforms.inverse(
            {IMAGE: MetaTensor(probs, affine=x.affine, applied_operations=x.applied_operations)}
        )
        out = torch.as_tensor(restored[IMAGE]).numpy().astype(np.float32, copy=False)
        if tuple(out.shape[1:]) != image.geometry.shape:
            raise RuntimeError(f"inverse transforms gave shape {out.shape[1:]}, expected {image.geometry.shape}")
        return out

    def predict(self, image: Image) -> np.ndarray:
        """Label map ``(X, Y, Z)`` uint8 in the model's own label values, on ``image``'s grid."""
        probs = self.predict_probabilities(image)
        return outputs_to_labels(torch.from_numpy(probs), self.table, threshold=self.inference.threshold)


def __getattr__(name: str) -> Any:
    # ``predict_folder`` moved to :mod:`medseg.batch`; resolved lazily for callers not yet updated.
    if name == "predict_folder":
        from medseg.batch import predict_folder

        return predict_folder
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
