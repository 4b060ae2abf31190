"""Compare models evaluated on the same cases (``medseg evaluate`` folders): per region, each model's
mean Dice, HD95 (mm) and NSD, its mean paired difference from the first model, and the two-sided Wilcoxon
signed-rank p-value of that difference over the cases (``scipy.stats.wilcoxon``; 1.0 where every
difference is 0). Writes ``comparison.csv`` and ``comparison.png`` (:func:`~medseg.evaluation.plot.plot_scores`,
the models side by side). When every folder also holds lesion-wise scores (``medseg evaluate
--lesion-wise``) under the same rules, their Dice and HD95 are compared the same way.

The p-values are per region and metric, not corrected for testing several; a handful of cases
gives little power, so read them as a guide, not a verdict.
"""

from __future__ import annotations

import csv
import sys
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medseg.errors import MedsegInputError
from medseg.evaluation.files import (
    LESION_METRICS_CSV,
    METRICS_CSV,
    LesionMetrics,
    Metrics,
    read_lesion_metrics_csv,
    read_metrics_csv,
)
from medseg.evaluation.plot import plot_scores
from medseg.io import atomic_output

COMPARISON_CSV = "comparison.csv"
COMPARISON_PNG = "comparison.png"
CaseScores = Mapping[str, Mapping[str, tuple]]
"""case -> region -> a named tuple of that case's scores (a ``RegionScore`` or a ``LesionScore``)."""

METRICS = ("dice", "hd95", "nsd")
LESION_METRICS = ("lesion_dice", "lesion_hd95")
METRIC_NAMES = {
    "dice": "Dice",
    "hd95": "HD95 mm",
    "nsd": "NSD",
    "lesion_dice": "lesion-wise Dice",
    "lesion_hd95": "lesion-wise HD95 mm",
}


@dataclass(frozen=True)
class Row:
    """One model's result on one region and metric.

    Attributes:
        region: region or organ name.
        metric: ``dice``, ``hd95`` (mm), ``nsd`` (at the folders' common tolerance), ``lesion_dice`` or
            ``lesion_hd95`` (mm; lesion-wise, under the folders' common rules).
        model: the model's name.
        mean: mean over the cases.
        difference: mean of (this model - first model) over the cases; 0 for the first model.
        p_value: two-sided Wilcoxon signed-rank p-value of that difference; ``None`` for the first model.
        cases: the cases that score the region (all of them, but for partially labelled data).
    """

    region: str
    metric: str
    model: str
    mean: float
    difference: float
    p_value: float | None
    cases: int


def distinct_names(folders: Sequence[Path]) -> list[str]:
    """Short names for ``folders``: the last path component, or as many last components as it takes to
    tell them apart (``runs/a/eval`` and ``runs/b/eval`` become ``a/eval`` and ``b/eval``)."""
    parts = [Path(f).resolve().parts for f in folders]
    for depth in range(1, max(len(p) for p in parts) + 1):
        names = ["/".join(p[-depth:]) for p in parts]
        if len(set(names)) == len(names):
            return names
    raise MedsegInputError(f"the same folder is given twice: {folders[0]}")


def paired_p_value(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p-value of ``b - a`` (paired by position); 1.0 when they are equal."""
    from scipy.stats import wilcoxon

    if np.all(a == b):
        return 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # scipy's note on ties with few cases
        return float(wilcoxon(b, a).pvalue)


def _read(folder: Path) -> Metrics:
    if not folder.is_dir():
        raise MedsegInputError("evaluation folder not found", path=folder)
    metrics = read_metrics_csv(folder / METRICS_CSV)
    if not metrics.scores:
        raise MedsegInputError("no cases in the metrics file", path=folder / METRICS_CSV)
    return metrics


def _read_lesions(folders: dict[str, Path]) -> dict[str, LesionMetrics]:
    """Every folder's lesion-wise scores when every folder has them under the same rules; none (with a
    warning line) when only some have them."""
    present = {name: folder / LESION_METRICS_CSV for name, folder in folders.items()}
    lacking = [name for name, path in present.items() if not path.is_file()]
    if len(lacking) == len(present):
        return {}
    if lacking:
        print(
            f"medseg: warning: lesion-wise scores not compared: {folders[lacking[0]]} has no {LESION_METRICS_CSV}",
            file=sys.stderr,
        )
        return {}
    lesions = {name: read_lesion_metrics_csv(path) for name, path in present.items()}
    first_name, first = next(iter(lesions.items()))
    for name, scored in lesions.items():
        if scored.rules != first.rules:
            raise MedsegInputError(
                f"lesion-wise scores under {scored.rules} rules, {folders[first_name]} under {first.rules}",
                path=present[name],
            )
    return lesions


def _paired_rows(models: dict[str, CaseScores], metrics: Sequence[tuple[str, str]]) -> list[Row]:
    """For each region, each ``(metric, field)``: every model's mean of ``field`` over the cases that score
    the region, its mean paired difference from the first model and the p-value of that difference."""
    names = list(models)
    first = models[names[0]]
    rows: list[Row] = []
    for region in _regions(first):
        cases = [c for c, case_scores in first.items() if region in case_scores]
        for metric, field in metrics:
            base = np.array([getattr(first[c][region], field) for c in cases])
            for name in names:
                values = np.array([getattr(models[name][c][region], field) for c in cases])
                p_value = None if name == names[0] else paired_p_value(base, values)
                mean, difference = float(values.mean()), float((values - base).mean())
                rows.append(Row(region, metric, name, mean, difference, p_value, len(cases)))
    return rows


def _regions(scores: CaseScores) -> list[str]:
    """Every region of ``scores``, in the order the cases first name them (a partially labelled case
    skips those it does not annotate)."""
    return list(dict.fromkeys(region for case_scores in scores.values() for region in case_scores))


def _check_same_tolerance(metrics: dict[str, Metrics], folders: dict[str, Path]) -> None:
    first_name, first = next(iter(metrics.items()))
    for name, m in metrics.items():
        if m.nsd_tolerance_mm != first.nsd_tolerance_mm:
            raise MedsegInputError(
                f"NSD at {m.nsd_tolerance_mm:g} mm, {folders[first_name]} at {first.nsd_tolerance_mm:g} mm: "
                "evaluate both with the same --nsd-tolerance",
                path=folders[name],
            )


def _check_same_cases_and_regions(models: dict[str, CaseScores], folders: dict[str, Path]) -> None:
    """Every folder holds the first folder's cases, each case with the regions it has in the first folder
    (the same for every case, but where partially labelled cases skip those they do not annotate)."""
    first_name, first = next(iter(models.items()))
    for name, scores in models.items():
        missing, extra = sorted(first.keys() - scores.keys()), sorted(scores.keys() - first.keys())
        if missing or extra:
            what = f"lacks case(s) {', '.join(missing[:3])}" if missing else f"has extra case(s) {', '.join(extra[:3])}"
            raise MedsegInputError(
                f"{what} of {folders[first_name]}: compare evaluations of the same cases", path=folders[name]
            )
        for case, case_scores in scores.items():
            if set(case_scores) != set(first[case]):
                raise MedsegInputError(
                    f"case {case} has regions {', '.join(case_scores)}, in {folders[first_name]}"
                    f" {', '.join(first[case])}: compare evaluations of the same regions",
                    path=folders[name],
                )


def compare_evaluations(*, eval_dirs: Sequence[Path], out_dir: Path, names: Sequence[str] | None = None) -> list[Row]:
    """Compare the ``metrics.csv`` of two or more ``medseg evaluate`` output folders (see the module docstring).

    Args:
        eval_dirs: evaluation folders of the same cases and regions; the first is the one others are
            compared with.
        out_dir: where ``comparison.csv`` and ``comparison.png`` go (created if missing).
        names: a name per folder (default: :func:`distinct_names`).

    Returns:
        The rows of ``comparison.csv``: for each region Dice, HD95 and NSD, then (when compared) for each
        region the lesion-wise Dice and HD95; each model in the given order.

    Raises:
        MedsegInputError: fewer than two folders, names that do not match them, a missing or foreign
            metrics file, or folders that scored different cases or regions, NSD at different
            tolerances, or lesion-wise scores under different rules.
    """
    folders = [Path(f) for f in eval_dirs]
    if len(folders) < 2:
        raise MedsegInputError("give two or more evaluation folders to compare")
    names = list(names) if names else distinct_names(folders)
    if len(names) != len(folders) or len(set(names)) != len(names):
        raise MedsegInputError(f"give one distinct name per folder: {len(folders)} folders, names {names}")
    by_name = dict(zip(names, folders, strict=True))
    metrics = {name: _read(folder) for name, folder in by_name.items()}
    _check_same_tolerance(metrics, by_name)
    models = {name: m.scores for name, m in metrics.items()}
    _check_same_cases_and_regions(models, by_name)
    rows = _paired_rows(models, [(metric, metric) for metric in METRICS])
    lesions = {name: m.scores for name, m in _read_lesions(by_name).items()}
    if lesions:
        _check_same_cases_and_regions(lesions, by_name)
        rows += _paired_rows(lesions, [(metric, metric.removeprefix("lesion_")) for metric in LESION_METRICS])
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_output(out_dir / COMPARISON_CSV) as tmp, tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["region", "metric", "model", "mean", "difference", "p_value", "cases"])
        for r in rows:
            p = "" if r.p_value is None else f"{r.p_value:.6g}"
            writer.writerow([r.region, r.metric, r.model, f"{r.mean:.6f}", f"{r.difference:.6f}", p, r.cases])
    plot_scores(models, out_dir / COMPARISON_PNG, nsd_tolerance_mm=metrics[names[0]].nsd_tolerance_mm)
    return rows


def format_comparison(rows: Sequence[Row]) -> str:
    """An aligned text table: a line per region and metric, a column per model (mean, and for the others
    the difference from the first and its p-value)."""
    models = list(dict.fromkeys(r.model for r in rows))
    header = ["region", "metric", *models]
    table = [header]
    for start in range(0, len(rows), len(models)):
        group = rows[start : start + len(models)]
        digits = 2 if group[0].metric.endswith("hd95") else 4
        cells = [f"{group[0].mean:.{digits}f}"]
        cells += [f"{r.mean:.{digits}f} ({r.difference:+.{digits}f}, p={r.p_value:.2g})" for r in group[1:]]
        table.append([group[0].region, METRIC_NAMES[group[0].metric], *cells])
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    lines = [f"paired over the cases, against {models[0]} (Wilcoxon signed-rank, two-sided)"]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip() for line in table]
    return "\n".join(lines)
