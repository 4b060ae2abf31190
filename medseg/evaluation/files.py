"""The score files that ``medseg evaluate`` writes and ``medseg compare`` and the report read.

``metrics.csv`` holds one row per case and region (columns :data:`METRICS_COLUMNS`: Dice, HD95 in
mm, NSD and the NSD's tolerance in mm); ``lesion_metrics.csv`` the lesion-wise scores (columns
:data:`LESION_METRICS_COLUMNS`, with the BraTS rules they were computed under). Files are written
atomically, in UTF-8 (a case id from a file name that is not, e.g. Latin-1 bytes, with backslash
escapes); reading one that is missing, malformed or mixed is a one-line error naming it.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from medseg.errors import MedsegInputError
from medseg.evaluation.lesion_wise import LesionScore
from medseg.evaluation.metrics import NSD_TOLERANCE_MM, RegionScore
from medseg.evaluation.plot import Scores
from medseg.io import atomic_output

METRICS_CSV = "metrics.csv"
LESION_METRICS_CSV = "lesion_metrics.csv"
METRICS_COLUMNS = ("case", "region", "dice", "hd95", "nsd", "nsd_tolerance_mm")
SIZE_COUNTS = ("large_tp", "large_fn", "small_tp", "small_fn")
"""BraTS 2025 MET's lesion detection counts by size (:class:`~medseg.evaluation.lesion_wise.LesionScore`)."""
LESION_METRICS_COLUMNS = ("case", "region", "dice", "hd95", "nsd", "tp", "fn", "fp", "f1", *SIZE_COUNTS, "rules")


@dataclass(frozen=True)
class Metrics:
    """What a ``metrics.csv`` holds.

    Attributes:
        scores: case -> region -> ``RegionScore(dice, hd95, nsd)``, in the file's order.
        nsd_tolerance_mm: the tolerance (mm) every NSD in it was computed at.
    """

    scores: Scores
    nsd_tolerance_mm: float


def write_metrics_csv(path: Path, metrics: Metrics) -> None:
    """Write ``metrics`` as a ``metrics.csv`` (columns :data:`METRICS_COLUMNS`), atomically."""
    with atomic_output(path) as tmp, tmp.open("w", newline="", encoding="utf-8", errors="backslashreplace") as f:
        writer = csv.writer(f)
        writer.writerow(METRICS_COLUMNS)
        tolerance = f"{metrics.nsd_tolerance_mm:g}"
        for case, case_scores in metrics.scores.items():
            for region, s in case_scores.items():
                writer.writerow([case, region, f"{s.dice:.6f}", f"{s.hd95:.6f}", f"{s.nsd:.6f}", tolerance])


def write_lesion_metrics_csv(path: Path, lesions: Mapping[str, Mapping[str, LesionScore]], rules: str) -> None:
    """Write lesion-wise scores (case -> region -> score) computed under ``rules`` as a
    ``lesion_metrics.csv`` (columns :data:`LESION_METRICS_COLUMNS`; ``f1`` the lesion detection F1 of the
    counts, :attr:`~medseg.evaluation.lesion_wise.LesionScore.f1`; ``nsd`` and the large and small lesions'
    counts empty under rules that do not give them), atomically."""
    with atomic_output(path) as tmp, tmp.open("w", newline="", encoding="utf-8", errors="backslashreplace") as f:
        writer = csv.writer(f)
        writer.writerow(LESION_METRICS_COLUMNS)
        for case, case_scores in lesions.items():
            for region, s in case_scores.items():
                nsd = "" if s.nsd is None else f"{s.nsd:.6f}"
                scores = (f"{s.dice:.6f}", f"{s.hd95:.6f}", nsd, s.tp, s.fn, s.fp, f"{s.f1:.6f}")
                by_size = ("" if getattr(s, c) is None else getattr(s, c) for c in SIZE_COUNTS)
                writer.writerow([case, region, *scores, *by_size, rules])


@dataclass(frozen=True)
class LesionMetrics:
    """What a ``lesion_metrics.csv`` holds.

    Attributes:
        scores: case -> region -> :class:`~medseg.evaluation.lesion_wise.LesionScore`, in the file's order.
        rules: the :data:`~medseg.evaluation.lesion_wise.LESION_RULES` key they were computed with.
    """

    scores: dict[str, dict[str, LesionScore]]
    rules: str


def read_lesion_metrics_csv(path: Path) -> LesionMetrics:
    """Read a ``lesion_metrics.csv`` written by :func:`~medseg.evaluation.evaluate_folder` with ``lesion_rules``
    (the ``f1`` column, which the counts give, is not read; files written before the ``nsd`` and size-count
    columns existed read with ``None`` there).

    Raises:
        MedsegInputError: naming the file: it is missing or malformed, or holds scores under more than
            one set of rules.
    """
    scores: dict[str, dict[str, LesionScore]] = {}
    rules: set[str] = set()
    try:
        with Path(path).open(newline="") as f:
            for row in csv.DictReader(f):
                counts = (int(row["tp"]), int(row["fn"]), int(row["fp"]))
                by_size = (int(row[c]) if row.get(c) else None for c in SIZE_COUNTS)
                scores.setdefault(row["case"], {})[row["region"]] = LesionScore(
                    float(row["dice"]),
                    float(row["hd95"]),
                    *counts,
                    float(row["nsd"]) if row.get("nsd") else None,
                    *by_size,
                )
                rules.add(row["rules"])
    except FileNotFoundError:
        raise MedsegInputError("lesion metrics file not found", path=path) from None
    except (KeyError, TypeError, ValueError) as exc:
        raise MedsegInputError(f"not a medseg lesion_metrics.csv ({exc})", path=path) from None
    if len(rules) != 1:
        raise MedsegInputError(f"expected scores under one set of lesion rules, found {sorted(rules)}", path=path)
    return LesionMetrics(scores, rules.pop())


def read_metrics_csv(path: Path) -> Metrics:
    """Read a ``metrics.csv`` written by :func:`~medseg.evaluation.evaluate_folder`.

    Raises:
        MedsegInputError: naming the file: it is missing, lacks a column of :data:`METRICS_COLUMNS`
            (one written before medseg scored NSD: run ``medseg evaluate`` again), holds a value that
            is not a number, or NSDs at more than one tolerance.
    """
    scores: dict[str, dict[str, RegionScore]] = {}
    tolerances: set[float] = set()
    try:
        with Path(path).open(newline="") as f:
            reader = csv.DictReader(f)
            absent = [c for c in METRICS_COLUMNS if c not in (reader.fieldnames or [])]
            if absent:
                raise MedsegInputError(
                    f"not a metrics.csv of this medseg: no column {', '.join(absent)} (run medseg evaluate again)",
                    path=path,
                )
            for row in reader:
                score = RegionScore(float(row["dice"]), float(row["hd95"]), float(row["nsd"]))
                scores.setdefault(row["case"], {})[row["region"]] = score
                tolerances.add(float(row["nsd_tolerance_mm"]))
    except FileNotFoundError:
        raise MedsegInputError("metrics file not found", path=path) from None
    except (TypeError, ValueError) as exc:
        raise MedsegInputError(f"not a medseg metrics.csv ({exc})", path=path) from None
    if len(tolerances) > 1:
        raise MedsegInputError(f"NSDs at several tolerances {sorted(tolerances)} mm in one file", path=path)
    return Metrics(scores, tolerances.pop() if tolerances else NSD_TOLERANCE_MM)
