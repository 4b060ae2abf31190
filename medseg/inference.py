"""Inference: a :class:`Predictor` loads a model once and segments many cases; :func:`predict_folder`
runs it over a case, a folder of cases, with progress, resumability and per-case failures.

Geometry is preserved exactly: the image is reoriented (and, if configured, resampled and cropped)
with invertible MONAI transforms, and the probabilities are mapped back through their inverses, so
the label map is written on the input's own grid (same shape and affine).
"""

from __future__ import annotations

import csv
import json
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.inferers import sliding_window_inference
from tqdm import tqdm

from medseg.checkpoint import Checkpoint, load_checkpoint
from medseg.config import InferenceConfig, TransformConfig
from medseg.data.cases import InputCase, discover_cases
from medseg.distributed import resolve_device
from medseg.errors import MedsegError, MedsegInputError
from medseg.io import Image, atomic_output, read_nifti, write_nifti
from medseg.keys import IMAGE
from medseg.transforms import inference_transforms, outputs_to_labels


def read_case(case: InputCase) -> Image:
    """Read and stack a case's channel files into one ``(C, X, Y, Z)`` :class:`Image`.

    Raises:
        MedsegInputError: a file is unreadable, not 3-D, or not on the first channel's grid.
    """
    channels = [read_nifti(p) for p in case.images]
    first = channels[0]
    for img in channels:
        if img.array.ndim != 3:
            raise MedsegInputError(f"expected a 3-D image, got shape {img.array.shape}", path=img.path)
        if img.geometry.shape != first.geometry.shape:
            raise MedsegInputError(
                f"shape {img.geometry.shape} differs from {first.path.name} {first.geometry.shape}", path=img.path
            )
        if not img.geometry.same_grid(first.geometry):
            raise MedsegInputError(f"affine differs from {first.path.name}", path=img.path)
    return Image(np.stack([c.array for c in channels]), first.geometry, first.path, dict(first.meta))


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


@dataclass
class CaseResult:
    """What happened to one case of a batch."""

    case: str
    status: str  # "ok", "skipped" or "failed"
    seconds: float = 0.0
    output: Path | None = None
    reason: str | None = None
    volumes_ml: dict[str, float] = field(default_factory=dict)


@dataclass
class BatchSummary:
    """Counts of a :func:`predict_folder` run and its per-case results."""

    results: list[CaseResult]

    @property
    def ok(self) -> int:
        return sum(r.status == "ok" for r in self.results)

    @property
    def failed(self) -> int:
        return sum(r.status == "failed" for r in self.results)

    @property
    def skipped(self) -> int:
        return sum(r.status == "skipped" for r in self.results)


class _Progress:
    """Progress as a tqdm bar, JSON lines on stdout (one event per line), or nothing."""

    def __init__(self, mode: str, total: int) -> None:
        self.mode = mode
        self.total = total
        self.bar = tqdm(total=total, unit="case", dynamic_ncols=True) if mode == "bar" else None
        self.emit({"event": "start", "total": total})

    def emit(self, event: dict[str, Any]) -> None:
        if self.mode == "json":
            print(json.dumps(event), flush=True)

    def case_start(self, index: int, case: str) -> None:
        self.emit({"event": "case_start", "case": case, "index": index, "total": self.total})
        if self.bar is not None:
            self.bar.set_postfix_str(case)

    def case_done(self, index: int, result: CaseResult) -> None:
        self.emit(
            {
                "event": "case_done",
                "case": result.case,
                "index": index,
                "total": self.total,
                "status": result.status,
                "seconds": round(result.seconds, 3),
                "output": str(result.output) if result.output else None,
                "reason": result.reason,
            }
        )
        if result.status == "failed":
            message = f"medseg: error: {result.reason}"
            (tqdm.write(message, file=sys.stderr) if self.bar is not None else print(message, file=sys.stderr))
        if self.bar is not None:
            self.bar.update(1)

    def close(self, summary: BatchSummary) -> None:
        self.emit({"event": "done", "ok": summary.ok, "failed": summary.failed, "skipped": summary.skipped})
        if self.bar is not None:
            self.bar.close()


def _prefetched(cases: Sequence[InputCase]) -> Iterator[tuple[InputCase, Future[Image]]]:
    """Yield each case with a future of its image, reading the next case while the current one runs."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        futures = [pool.submit(read_case, cases[0])] if cases else []
        for i, case in enumerate(cases):
            if i + 1 < len(cases):
                futures.append(pool.submit(read_case, cases[i + 1]))
            yield case, futures[i]


def _volumes_ml(labels: np.ndarray, image: Image, names: dict[int, str]) -> dict[str, float]:
    voxel_ml = float(np.prod(image.geometry.spacing)) / 1000.0
    counts = np.bincount(labels.ravel(), minlength=max(names) + 1)
    return {names[v]: round(float(counts[v]) * voxel_ml, 3) for v in sorted(names) if v != 0}


def _write_summary(results: Sequence[CaseResult], path: Path, label_names: Sequence[str]) -> None:
    with atomic_output(path) as tmp, tmp.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["case", "status", "seconds", "output", "reason", *[f"{n}_ml" for n in label_names]])
        for r in results:
            writer.writerow(
                [
                    r.case,
                    r.status,
                    f"{r.seconds:.3f}",
                    r.output or "",
                    r.reason or "",
                    *[r.volumes_ml.get(n, "") for n in label_names],
                ]
            )


def predict_folder(
    *,
    model: str | Path,
    input_path: str | Path,
    output_dir: str | Path,
    device: str = "auto",
    overwrite: bool = False,
    progress: str = "bar",
) -> BatchSummary:
    """Segment every case under ``input_path`` into ``output_dir/<case>.nii.gz`` and ``summary.csv``.

    A case whose output exists is skipped unless ``overwrite`` (outputs are written atomically, so an
    existing one is complete). A case that fails is recorded with its reason and the batch goes on.

    Raises:
        CheckpointError: the model is not a readable medseg checkpoint.
        MedsegInputError: no cases found, or ``output_dir`` would overwrite an input.
    """
    predictor = Predictor.from_checkpoint(model, device=device)
    output_dir = Path(output_dir)
    cases = discover_cases(input_path, num_channels=len(predictor.channels), layout=predictor.checkpoint.layout)
    inputs = {p.resolve() for c in cases for p in c.images}
    outputs = {c.id: output_dir / f"{c.id}.nii.gz" for c in cases}
    for out in outputs.values():
        if out.resolve() in inputs:
            raise MedsegInputError("output would overwrite an input file; choose another --output", path=out)
    names = predictor.table.labels
    reporter = _Progress(progress, len(cases))
    results: list[CaseResult] = []
    todo = [c for c in cases if overwrite or not outputs[c.id].is_file()]
    for index, case in enumerate(cases):
        if case not in todo:
            results.append(CaseResult(case.id, "skipped", output=outputs[case.id], reason="output exists"))
            reporter.case_done(index, results[-1])
    for case, future in _prefetched(todo):
        index = cases.index(case)
        reporter.case_start(index, case.id)
        tick = time.monotonic()
        try:
            image = future.result()
            labels = predictor.predict(image)
            write_nifti(labels, image.geometry, outputs[case.id], reference=image)
            result = CaseResult(
                case.id, "ok", time.monotonic() - tick, outputs[case.id], volumes_ml=_volumes_ml(labels, image, names)
            )
        except MedsegError as exc:
            result = CaseResult(case.id, "failed", time.monotonic() - tick, reason=str(exc))
        except Exception as exc:  # one broken case must not stop a batch of hundreds
            result = CaseResult(
                case.id, "failed", time.monotonic() - tick, reason=f"{case.id}: {type(exc).__name__}: {exc}"
            )
        results.append(result)
        reporter.case_done(index, result)
    results.sort(key=lambda r: r.case)
    summary = BatchSummary(results)
    _write_summary(results, output_dir / "summary.csv", [names[v] for v in sorted(names) if v != 0])
    reporter.close(summary)
    return summary
