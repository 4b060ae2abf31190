"""Batch inference: :func:`predict_folder` runs a :class:`~medseg.inference.Predictor` over a case or a
folder of cases, with progress, resumability and per-case failures, and writes ``summary.csv``.
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
from tqdm import tqdm

from medseg.data.cases import InputCase, discover_cases
from medseg.errors import MedsegError, MedsegInputError
from medseg.inference import Predictor, read_case
from medseg.io import Image, atomic_output, write_nifti


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
    cases = discover_cases(input_path, channels=predictor.channels, exclude=[output_dir])
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
