"""Batch inference: :func:`predict_folder` runs one :class:`~medseg.inference.Predictor` over a file, a DICOM
series folder or a folder of cases, with progress, resumability, per-case failures and a summary CSV.
:func:`run_batch` is its engine, which also takes a predictor per case (out-of-fold predictions,
:mod:`medseg.training.cross_validation`).

Contract of a batch run (``medseg predict``):

- **Outputs.** ``<output>/<case>.nii.gz`` (or ``.seg.nrrd``, or ``.dcm`` for a DICOM-SEG), optionally
  ``<case>_probabilities.nii.gz`` and ``<case>_uncertainty.nii.gz`` (:mod:`medseg.inference.uncertainty`),
  a summary CSV and ``labels.json``, the label table of the model (:data:`~medseg.protocol.LABELS_JSON`:
  what the label values mean, which ``medseg evaluate`` reads), and (but for a DICOM-SEG)
  ``<case>_quality.json``: what the quality flags measured of the input
  (:class:`~medseg.inference.quality.CaseProfile`). Every file is written to a temporary name
  in the output folder and renamed into place, so an output that exists is complete. No output may be an
  input (or lie inside an input DICOM folder); inputs are only ever opened for reading.
- **Resuming.** A case whose outputs all exist is reported as ``skipped`` (unless ``overwrite``), with the
  volumes and uncertainty scores of its outputs and the quality flags of its ``<case>_quality.json``: its
  images are not read again.
  Temporary files that a killed run left behind for this run's cases are removed first. The output
  folder records which model wrote it (``predict_run.json``: a fingerprint of the weights, labels,
  preprocessing, inference settings and format); resuming into a folder that another model or other
  settings wrote is an error, since its skipped cases would be theirs.
- **Failures.** A case that cannot be read or predicted is recorded as ``failed`` with its reason, and the
  batch goes on; the caller turns ``BatchSummary.failed > 0`` into a non-zero exit code. So is a case whose
  id cannot name its output files (too long for the file system, holding ``/``, ``\\``, a NUL or a
  character the file system cannot encode, or starting with ``.``), before anything is written for it.
- **Summary.** ``summary.csv``: one row per case (sorted by id) with status, seconds, output path, reason,
  the SeriesInstanceUID and SeriesDescription of a DICOM series case (which tell apart the cases
  ``study`` and ``study_2`` of a folder holding two series) and the volume in mL of every foreground
  label, and the case's quality flags (``flags``: :data:`~medseg.inference.quality.FLAGS` that it raises,
  separated by ``;``, empty when none; :mod:`medseg.inference.quality`); with uncertainty maps, also the
  case's uncertainty scores
  (:data:`~medseg.inference.uncertainty.CASE_SCORES`, nats; blank where nothing was predicted). With
  ``shard=I/N`` the run handles only its share of the cases (see :class:`~medseg.data.cases.Shard`) and
  writes ``summary.shard-I-of-N.csv`` instead, so that processes sharing one output folder never write the
  same file; :func:`merge_summaries` joins the shard files into ``summary.csv`` once all shards are done. A
  summary that cannot be written (a full disk) is an :class:`~medseg.errors.OutputError` naming it, raised
  once every case is done: the label maps written are kept, and a rerun skips their cases and writes the
  summary.
- **Progress.** ``bar``: a tqdm bar with ETA on stderr when it is a terminal, else a plain line there every
  tenth of the cases (:func:`medseg.progress.track`); ``json``: the progress events of :mod:`medseg.protocol`,
  one JSON object per line on stdout (read by the Slicer module); ``none``.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import re
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medseg import __version__
from medseg.data.cases import InputCase, Shard, discover_cases, read_cases_file, select_shard
from medseg.errors import MedsegError, MedsegInputError, OutputError, first_line
from medseg.inference.predictor import Prediction, Predictor, read_case
from medseg.inference.quality import CaseProfile, QualityReference, volumes_ml
from medseg.inference.uncertainty import CASE_SCORES, case_scores
from medseg.io import (
    Image,
    atomic_output,
    ensure_not_input,
    read_image,
    write_channels,
    write_label_map,
    write_probabilities,
)
from medseg.io.jsonfile import read_json
from medseg.io.writers import LabelFormat
from medseg.labels import LabelTable
from medseg.progress import track, write
from medseg.protocol import (
    LABELS_JSON,
    OUTPUT_SUFFIXES,
    PROBABILITIES_SUFFIX,
    UNCERTAINTY_SUFFIX,
    CaseFinished,
    CaseStarted,
    ProgressEvent,
    RunFinished,
    RunStarted,
)

SUMMARY_NAME = "summary.csv"
RUN_RECORD = "predict_run.json"
QUALITY_SUFFIX = "_quality.json"
"""The file ending of ``<output>/<case>`` for what the quality flags measured of its input."""


@dataclass
class CaseResult:
    """What happened to one case of a batch.

    Attributes:
        case: the case id.
        status: ``"ok"``, ``"skipped"`` (outputs already there) or ``"failed"``.
        seconds: wall time spent on the case (reading, predicting, writing).
        output: the label-map file, when there is one.
        reason: why it failed or was skipped.
        volumes_ml: volume in mL of each foreground label, by label name.
        series_uid: the SeriesInstanceUID of a DICOM series case (None for other cases).
        series_description: its SeriesDescription (None for other cases).
        uncertainty: the case's uncertainty scores (:func:`~medseg.inference.uncertainty.case_scores`), by
            name; empty when not computed or nothing was predicted.
        flags: the quality flags it raises (:func:`~medseg.inference.quality.quality_flags`), in
            :data:`~medseg.inference.quality.FLAGS` order.
    """

    case: str
    status: str
    seconds: float = 0.0
    output: Path | None = None
    reason: str | None = None
    volumes_ml: dict[str, float] = field(default_factory=dict)
    series_uid: str | None = None
    series_description: str | None = None
    uncertainty: dict[str, float] = field(default_factory=dict)
    flags: tuple[str, ...] = ()


@dataclass
class BatchSummary:
    """Counts of a :func:`predict_folder` run and its per-case results (sorted by case id)."""

    results: list[CaseResult]
    summary_path: Path | None = None

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
    """Progress as a tqdm bar on a terminal (plain lines in a log), the events of :mod:`medseg.protocol` as
    JSON lines on stdout, or nothing."""

    def __init__(self, mode: str, total: int, *, already_done: int = 0, shard: Shard | None = None) -> None:
        if mode not in ("bar", "json", "none"):
            raise MedsegInputError(f"unknown progress mode {mode!r}; use bar, json or none")
        self.mode = mode
        self.total = total
        self.bar = track(total=total, initial=already_done, desc="predict", unit="case") if mode == "bar" else None
        self.emit(RunStarted(total, shard=None if shard is None else f"{shard.index}/{shard.count}"))

    def emit(self, event: ProgressEvent) -> None:
        if self.mode == "json":
            print(event.to_line(), flush=True)

    def case_start(self, index: int, case: str) -> None:
        self.emit(CaseStarted(case, index, self.total))
        if self.bar is not None:
            self.bar.set_postfix_str(case)

    def case_done(self, index: int, result: CaseResult, *, count: bool = True) -> None:
        self.emit(
            CaseFinished(
                case=result.case,
                index=index,
                total=self.total,
                status=result.status,
                seconds=round(result.seconds, 3),
                output=str(result.output) if result.output else None,
                reason=result.reason,
                volumes_ml=result.volumes_ml,
                series_uid=result.series_uid,
                series_description=result.series_description,
                uncertainty=result.uncertainty,
                flags=list(result.flags),
            )
        )
        if result.status == "failed":
            message = f"medseg: error: {result.reason}"
            write(message, file=sys.stderr)
        if self.bar is not None and count:
            self.bar.update(1)

    def close(self, summary: BatchSummary) -> None:
        self.emit(RunFinished(summary.ok, summary.failed, summary.skipped))
        if self.bar is not None:
            self.bar.close()


def _prefetched(cases: Sequence[InputCase]) -> Iterator[tuple[InputCase, Future[Image]]]:
    """Yield each case with a future of its image; the next case is read while the current one runs.

    Only the current and the next image are held in memory.
    """
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="medseg-read") as pool:
        upcoming = pool.submit(read_case, cases[0]) if cases else None
        for i, case in enumerate(cases):
            current = upcoming
            upcoming = pool.submit(read_case, cases[i + 1]) if i + 1 < len(cases) else None
            assert current is not None
            yield case, current
            del current


def _summary_columns(label_names: Sequence[str], scores: Sequence[str]) -> list[str]:
    return [
        "case",
        "status",
        "seconds",
        "output",
        "reason",
        "flags",
        "SeriesInstanceUID",
        "SeriesDescription",
        *[f"{n}_ml" for n in label_names],
        *scores,
    ]


def _write_summary(
    results: Sequence[CaseResult], path: Path, label_names: Sequence[str], scores: Sequence[str] = ()
) -> None:
    """Write the summary CSV (UTF-8; a file name that is not, e.g. Latin-1 bytes, is written with
    backslash escapes), with a column per name in ``scores`` (uncertainty scores).

    Raises:
        OutputError: it cannot be written (a full disk), naming it and saying what is kept.
    """
    try:
        with atomic_output(path) as tmp, tmp.open("w", newline="", encoding="utf-8", errors="backslashreplace") as fh:
            writer = csv.writer(fh)
            writer.writerow(_summary_columns(label_names, scores))
            for r in results:
                writer.writerow(
                    [
                        r.case,
                        r.status,
                        f"{r.seconds:.3f}",
                        r.output or "",
                        r.reason or "",
                        ";".join(r.flags),
                        r.series_uid or "",
                        r.series_description or "",
                        *[r.volumes_ml.get(n, "") for n in label_names],
                        *[r.uncertainty.get(n, "") for n in scores],
                    ]
                )
    except OutputError as exc:
        done = BatchSummary(list(results))
        raise OutputError(
            f"{exc.reason} ({done.ok} ok, {done.skipped} skipped, {done.failed} failed: the label maps written are"
            " kept, and a rerun skips their cases and writes the summary)",
            path=path,
        ) from None


def merge_summaries(output_dir: str | Path) -> Path:
    """Join the ``summary.shard-I-of-N.csv`` files of ``output_dir`` into ``summary.csv`` (atomically).

    Run it once every shard has finished; rows are sorted by case id.

    Raises:
        MedsegInputError: no shard summaries, a missing shard, or shard files with different columns.
    """
    output_dir = Path(output_dir)
    files = sorted(output_dir.glob("summary.shard-*-of-*.csv"))
    if not files:
        raise MedsegInputError("no summary.shard-I-of-N.csv files to merge", path=output_dir)
    counts = {int(re.search(r"-of-(\d+)\.csv$", f.name)[1]) for f in files}  # type: ignore[index]
    if len(counts) != 1 or len(files) != next(iter(counts)):
        raise MedsegInputError(f"expected all shards of one split, found {[f.name for f in files]}", path=output_dir)
    header: list[str] | None = None
    rows: list[list[str]] = []
    for f in files:
        with f.open(newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh)
            this = next(reader)
            if header is not None and this != header:
                raise MedsegInputError(f"columns differ from {files[0].name}", path=f)
            header = this
            rows.extend(reader)
    path = output_dir / SUMMARY_NAME
    with atomic_output(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(sorted(rows, key=lambda r: r[0]))
    return path


def _remove_stale_temporaries(path: Path) -> None:
    """Delete the temporary files :func:`~medseg.io.atomic_output` left for ``path`` in a killed run."""
    stem = path.name.split(".")[0]
    suffix = "".join(path.suffixes)
    pattern = re.compile(rf"^\.{re.escape(stem)}\.[A-Za-z0-9_]{{8}}{re.escape(suffix)}$")
    if path.parent.is_dir():
        for candidate in path.parent.glob(f".{stem}.*"):
            if pattern.match(candidate.name) and candidate.is_file():
                candidate.unlink(missing_ok=True)


def _existing_result(
    case: InputCase, output: Path, maps: Path | None, fmt: str, names: dict[int, str], quality: _Quality
) -> CaseResult | None:
    """The ``skipped`` result of a case whose outputs exist, with what its existing label map (and uncertainty
    maps ``maps``, when written) give: volumes and uncertainty scores, and the quality flags of its
    :data:`QUALITY_SUFFIX` record (none of them for a DICOM-SEG). None if an output is unreadable or they do
    not fit: the case is predicted again."""
    result = CaseResult(case.id, "skipped", output=output, reason="outputs exist")
    if fmt == "dicom-seg":
        return result
    try:
        label_map = read_image(output)
        uncertainty = None if maps is None else read_image(maps)
        profile = CaseProfile.from_dict(read_json(_quality_record(output, case.id), what="quality record"))
    except (MedsegError, KeyError, TypeError, ValueError, AttributeError):
        return None
    labels, spacing = label_map.array, label_map.geometry.spacing
    result.volumes_ml = volumes_ml(labels, spacing, names)
    if uncertainty is not None:
        if uncertainty.array.shape[1:] != labels.shape:
            return None
        result.uncertainty = case_scores(uncertainty.array, labels, spacing=spacing, band_mm=quality.band_mm)
    result.flags = quality.reference.flags(profile, uncertainty=result.uncertainty)
    return result


def _quality_record(output: Path, case_id: str) -> Path:
    """The :data:`QUALITY_SUFFIX` record beside a case's label map ``output``."""
    return output.with_name(f"{case_id}{QUALITY_SUFFIX}")


def _check_not_inputs(outputs: Sequence[Path], cases: Sequence[InputCase]) -> None:
    """Refuse outputs that are input files or lie inside an input folder (a DICOM series), in O(n).

    Raises:
        MedsegInputError: naming the first such output.
    """
    files = {Path(os.path.realpath(p)) for c in cases for p in c.images}  # no error on a symbolic link loop
    folders = {p for p in files if p.is_dir()}
    for out in outputs:
        target = Path(os.path.realpath(out))
        if target in files or folders.intersection(target.parents):
            ensure_not_input(out, [target, *folders.intersection(target.parents)])  # raises, naming the input


def predict_folder(
    *,
    model: str | Path | Sequence[str | Path] | Predictor,
    input_path: str | Path | None,
    output_dir: str | Path,
    fmt: LabelFormat = "nifti",
    save_probabilities: bool = False,
    save_uncertainty: bool = False,
    cases_file: str | Path | None = None,
    shard: Shard | None = None,
    device: str = "auto",
    backend: str = "auto",
    inference_overrides: Sequence[str] = (),
    overwrite: bool = False,
    progress: str = "bar",
) -> BatchSummary:
    """Segment every case under ``input_path`` into ``output_dir`` (see the module docstring).

    Args:
        model: a checkpoint path, several (an ensemble), or a loaded :class:`~medseg.inference.Predictor`.
        input_path: an image file, a DICOM series folder (or one of its files), or a folder of cases
            (see :func:`~medseg.data.cases.discover_cases`). Ignored when ``cases_file`` is given.
        output_dir: where outputs and the summary go (created if missing).
        fmt: label-map format: ``nifti``, ``seg.nrrd`` or ``dicom-seg`` (DICOM input only).
        save_probabilities: also write ``<case>_probabilities.nii.gz`` (``(X, Y, Z, C_out)`` float32).
        save_uncertainty: also write ``<case>_uncertainty.nii.gz`` (``(X, Y, Z, 2)`` float32, nats: the
            :data:`~medseg.inference.uncertainty.UNCERTAINTY_MAPS`) and add the case's uncertainty scores to
            the summary and the progress events.
        cases_file: a JSON list of cases (see :func:`~medseg.data.cases.read_cases_file`).
        shard: handle only this shard of the cases.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        backend, inference_overrides: passed to :meth:`Predictor.from_checkpoint` (not used with a
            loaded Predictor).
        overwrite: redo cases whose outputs exist.
        progress: ``bar``, ``json`` or ``none``.

    Returns:
        The per-case results (cases of this shard only).

    Raises:
        CheckpointError: the model is not a readable medseg checkpoint.
        MedsegInputError: no cases found, an unknown format, ``dicom-seg`` for a non-DICOM case, or an
            output that would overwrite an input.
        OutputError: the summary cannot be written (a full disk), once every case is done.
    """
    output_dir = check_output(output_dir, fmt)
    predictor = (
        model
        if isinstance(model, Predictor)
        else Predictor.from_checkpoint(model, device=device, backend=backend, inference_overrides=inference_overrides)
    )
    if cases_file is not None:
        all_cases = read_cases_file(cases_file, channels=predictor.channels)
    elif input_path is None:
        raise MedsegInputError("give an input path or a cases file")
    else:
        all_cases = discover_cases(input_path, channels=predictor.channels, exclude=[output_dir])
    return run_batch(
        Batch(tuple((case, predictor) for case in all_cases), predictor.table, run_identity(predictor, fmt)),
        output_dir=output_dir,
        fmt=fmt,
        save_probabilities=save_probabilities,
        save_uncertainty=save_uncertainty,
        shard=shard,
        overwrite=overwrite,
        progress=progress,
    )


def check_output(output_dir: str | Path, fmt: str) -> Path:
    """``output_dir`` as a path, once ``fmt`` is a known label-map format and ``output_dir`` is a
    folder or does not exist yet (checked before any model is loaded).

    Raises:
        MedsegInputError: an unknown format, or an output that is a file.
    """
    if fmt not in OUTPUT_SUFFIXES:
        raise MedsegInputError(f"unknown output format {fmt!r}; use {', '.join(OUTPUT_SUFFIXES)}")
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise MedsegInputError("the output must be a folder", path=output_dir)
    return output_dir


@dataclass(frozen=True)
class Batch:
    """What a run segments: every input case with the predictor that segments it, the label table of
    every predictor, and the run's identity (:func:`run_identity`: a run into a folder that a run of
    another identity wrote is refused)."""

    jobs: tuple[tuple[InputCase, Predictor], ...]
    table: LabelTable
    identity: str


def run_batch(
    batch: Batch,
    *,
    output_dir: Path,
    fmt: LabelFormat = "nifti",
    save_probabilities: bool = False,
    save_uncertainty: bool = False,
    shard: Shard | None = None,
    overwrite: bool = False,
    progress: str = "bar",
) -> BatchSummary:
    """Segment the cases of ``batch`` (those of ``shard``) into ``output_dir``, under the contract of the
    module docstring: the engine of :func:`predict_folder`, and of runs whose cases need different
    models (:func:`~medseg.training.cross_validation.out_of_fold_batch`).

    Args:
        batch: the cases, their predictors and the run's identity.
        output_dir: where outputs and the summary go (created if missing; see :func:`check_output`).
        fmt, save_probabilities, save_uncertainty, shard, overwrite, progress: as for :func:`predict_folder`.

    Raises:
        MedsegInputError: ``dicom-seg`` for a non-DICOM case, an output that would overwrite an input,
            or an output folder that a run of another identity wrote.
        OutputError: the summary cannot be written (a full disk), once every case is done.
    """
    inputs = [case for case, _ in batch.jobs]
    chosen = {case.id for case in select_shard(inputs, shard)}
    jobs = [(case, predictor) for case, predictor in batch.jobs if case.id in chosen]
    if fmt == "dicom-seg":
        for case, _ in jobs:
            if not case.is_dicom:
                raise MedsegInputError(
                    "--format dicom-seg needs DICOM series input; use nifti or seg.nrrd for this case",
                    path=case.images[0],
                )
    cases = [case for case, _ in jobs]
    predictor_of = {case.id: predictor for case, predictor in jobs}
    extras = _Extras(save_probabilities, save_uncertainty, quality_record=fmt != "dicom-seg")
    extra_suffixes = [
        *([PROBABILITIES_SUFFIX] if extras.probabilities else []),
        *([UNCERTAINTY_SUFFIX] if extras.uncertainty else []),
        *([QUALITY_SUFFIX] if extras.quality_record else []),
    ]
    suffixes = [OUTPUT_SUFFIXES[fmt], *extra_suffixes]
    name_max = _name_max(output_dir)
    refused = {c.id: problem for c in cases if (problem := _id_problem(c.id, suffixes, name_max)) is not None}
    named = [c for c in cases if c.id not in refused]
    label_outputs = {c.id: output_dir / f"{c.id}{OUTPUT_SUFFIXES[fmt]}" for c in named}
    extra_outputs = {c.id: [output_dir / f"{c.id}{suffix}" for suffix in extra_suffixes] for c in named}
    summary_path = output_dir / (SUMMARY_NAME if shard is None else f"summary.{shard.tag}.csv")
    labels_path = output_dir / LABELS_JSON
    _check_not_inputs(
        [summary_path, labels_path, *label_outputs.values(), *(p for ps in extra_outputs.values() for p in ps)],
        inputs,
    )
    output_dir.mkdir(parents=True, exist_ok=True)
    _claim_output_folder(output_dir, batch.identity, overwrite=overwrite)
    with atomic_output(labels_path) as tmp:  # what the label values mean, for medseg evaluate
        tmp.write_text(json.dumps(batch.table.to_dict(), indent=2) + "\n")

    names = batch.table.labels  # a shard without cases still writes every label's column
    label_names = [names[v] for v in sorted(names) if v != 0]
    scores = CASE_SCORES if save_uncertainty else ()
    quality_of = {predictor: _Quality.of(predictor) for predictor in predictor_of.values()}
    results: list[CaseResult] = []
    todo: list[InputCase] = []
    done_before: list[tuple[int, CaseResult]] = []
    for index, case in enumerate(cases):
        if case.id in refused:
            done_before.append((index, _of_case(CaseResult(case.id, "failed", reason=refused[case.id]), case)))
            continue
        expected = [label_outputs[case.id], *extra_outputs[case.id]]
        for out in expected:
            _remove_stale_temporaries(out)
        found = None
        if not overwrite and all(p.is_file() for p in expected):
            maps = output_dir / f"{case.id}{UNCERTAINTY_SUFFIX}" if save_uncertainty else None
            quality = quality_of[predictor_of[case.id]]
            found = _existing_result(case, label_outputs[case.id], maps, fmt, names, quality)
        if found is None:
            todo.append(case)
        else:
            done_before.append((index, _of_case(found, case)))
    _remove_stale_temporaries(summary_path)

    reporter = _Progress(progress, len(cases), already_done=len(done_before), shard=shard)
    for index, result in done_before:
        results.append(result)
        reporter.case_done(index, result, count=False)
    position = {c.id: i for i, c in enumerate(cases)}
    finished = False
    try:
        for case, future in _prefetched(todo):
            reporter.case_start(position[case.id], case.id)
            result = _predict_one(
                predictor_of[case.id],
                case,
                future,
                label_outputs[case.id],
                fmt,
                extras,
                names,
                quality_of[predictor_of[case.id]],
            )
            result = _of_case(result, case)
            results.append(result)
            reporter.case_done(position[case.id], result)
        finished = True
    finally:  # also when interrupted: the summary of the cases done so far
        results.sort(key=lambda r: r.case)
        summary = BatchSummary(results, summary_path)
        try:
            _write_summary(results, summary_path, label_names, scores)
        finally:
            if finished:
                reporter.close(summary)
    return summary


def _of_case(result: CaseResult, case: InputCase) -> CaseResult:
    """``result`` with the DICOM series of ``case`` (none for a case of image files)."""
    return dataclasses.replace(result, series_uid=case.series_uid, series_description=case.series_description)


# what atomic_output adds to a file name for its temporary file: "." + stem + "." + 8 random characters
_TEMPORARY_NAME_EXTRA = 10


def _name_max(folder: Path) -> int:
    """The longest file name, in bytes, that the file system of ``folder`` (or of its nearest existing
    parent) takes; 255 (ext4, XFS, APFS, NTFS) where the system does not say."""
    existing = next((p for p in (folder, *folder.parents) if p.is_dir()), Path("."))
    try:
        return int(os.pathconf(existing, "PC_NAME_MAX"))
    except (AttributeError, OSError, ValueError):  # AttributeError: no pathconf (Windows)
        return 255


def _id_problem(case_id: str, suffixes: Sequence[str], name_max: int) -> str | None:
    """Why ``case_id`` cannot name the output files ``<id><suffix>`` (and their temporary files) in a
    file system taking names of up to ``name_max`` bytes, as a case's failure reason; None when it can."""
    bad = [c for c in ("/", "\\", "\0") if c in case_id]
    if not case_id:
        problem = "it is empty"
    elif bad:
        problem = f"it holds {bad[0]!r}, which a file name cannot"
    elif case_id.startswith("."):
        problem = "it starts with '.' (a hidden file, as medseg's temporary files are)"
    else:
        try:
            longest = max(len(os.fsencode(f"{case_id}{suffix}")) for suffix in suffixes) + _TEMPORARY_NAME_EXTRA
        except UnicodeEncodeError:
            problem = "it holds characters the file system cannot encode"
        else:
            if longest <= name_max:
                return None
            problem = f"it is too long (names of {longest} bytes with its endings; the file system takes {name_max})"
    shown = case_id if len(case_id) <= 60 else f"{case_id[:40]}...{case_id[-10:]}"
    return f"case id {shown!r} cannot name an output file: {problem}"


def run_identity(predictor: Predictor, fmt: LabelFormat) -> str:
    """What decides a run's label maps: the weights (every member's), labels, preprocessing, inference
    settings and format."""
    checkpoint = predictor.checkpoint
    extra: dict[str, Any] = {
        "labels": checkpoint.label_table.to_dict(),
        "transforms": checkpoint.config["transforms"],
        "inference": dataclasses.asdict(predictor.inference),
        "format": fmt,
    }
    if len(predictor.checkpoints) > 1:
        extra["ensemble"] = [member.weights_sha256 for member in predictor.checkpoints]
    if predictor.inference.temperature_scaling:
        extra["temperatures"] = predictor.temperatures
    return checkpoint.fingerprint(extra)


def _claim_output_folder(output_dir: Path, identity: str, *, overwrite: bool) -> None:
    """Record ``identity`` in ``output_dir``; refuse (unless ``overwrite``) when a run of another
    identity wrote there: resuming would keep that run's outputs as this one's."""
    record = output_dir / RUN_RECORD
    if record.is_file() and not overwrite and read_json(record, what="run record").get("model") != identity:
        raise MedsegInputError(
            "holds predictions of another model or other inference settings; use --overwrite to redo every"
            " case, or another output folder",
            path=output_dir,
        )
    with atomic_output(record) as tmp:
        tmp.write_text(json.dumps({"model": identity, "medseg": __version__}, indent=2) + "\n")


@dataclass(frozen=True)
class _Quality:
    """What a predictor's cases are scored and flagged with: the band of its uncertainty scores (mm) and
    its :class:`~medseg.inference.quality.QualityReference`."""

    band_mm: float
    reference: QualityReference

    @classmethod
    def of(cls, predictor: Predictor) -> _Quality:
        temperature_scaling = predictor.inference.temperature_scaling
        reference = QualityReference.of(predictor.checkpoint, temperature_scaling=temperature_scaling)
        return cls(predictor.inference.uncertainty_band_mm, reference)


@dataclass(frozen=True)
class _Extras:
    """The outputs a batch writes beside each label map (the quality record: :data:`QUALITY_SUFFIX`)."""

    probabilities: bool
    uncertainty: bool
    quality_record: bool


def _predict_one(
    predictor: Predictor,
    case: InputCase,
    future: Future[Image],
    output: Path,
    fmt: LabelFormat,
    extras: _Extras,
    names: dict[int, str],
    quality: _Quality,
) -> CaseResult:
    """Read (from the prefetch), predict and write one case; any error becomes a ``failed`` result."""
    tick = time.monotonic()
    try:
        image = future.result()
        scores: dict[str, float] = {}
        if extras.probabilities or extras.uncertainty:
            prediction = (
                predictor.predict_with_uncertainty(image)
                if extras.uncertainty
                else Prediction(predictor.predict_probabilities(image))
            )
            labels = predictor.labels_from_probabilities(prediction.probabilities, image)
            if extras.probabilities:
                path = output.with_name(f"{case.id}{PROBABILITIES_SUFFIX}")
                write_probabilities(prediction.probabilities, image.geometry, path, reference=image)
            if prediction.uncertainty is not None:
                path = output.with_name(f"{case.id}{UNCERTAINTY_SUFFIX}")
                write_channels(prediction.uncertainty, image.geometry, path, reference=image)
                spacing = image.geometry.spacing
                scores = case_scores(prediction.uncertainty, labels, spacing=spacing, band_mm=quality.band_mm)
        else:
            labels = predictor.predict(image)
        volumes = volumes_ml(labels, image.geometry.spacing, names)
        profile = quality.reference.profile(image, labels, volumes=volumes)
        if extras.quality_record:  # what a resumed run flags the case from, without reading its images
            with atomic_output(_quality_record(output, case.id)) as tmp:
                tmp.write_text(json.dumps(profile.to_dict(), allow_nan=False) + "\n")
        # the label map last: a killed run leaves no label map without the files beside it
        write_label_map(labels, image.geometry, output, table=predictor.table, reference=image, fmt=fmt)
        return CaseResult(
            case.id,
            "ok",
            time.monotonic() - tick,
            output,
            volumes_ml=volumes,
            uncertainty=scores,
            flags=quality.reference.flags(profile, uncertainty=scores),
        )
    except MedsegError as exc:
        return CaseResult(case.id, "failed", time.monotonic() - tick, reason=str(exc))
    except Exception as exc:  # one broken case must not stop a batch of hundreds
        reason = f"{case.id}: {type(exc).__name__}: {first_line(exc)}"  # one line of stderr and of summary.csv
        return CaseResult(case.id, "failed", time.monotonic() - tick, reason=reason)
