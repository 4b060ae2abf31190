"""Evaluation: label maps scored against references, per case and region
(:mod:`~medseg.evaluation.evaluate`, with :mod:`~medseg.evaluation.metrics` and the BraTS 2023 lesion-wise
scores of :mod:`~medseg.evaluation.lesion_wise` and the expected calibration error of
:mod:`~medseg.evaluation.calibration`), the score files and plots it writes
(:mod:`~medseg.evaluation.files`, :mod:`~medseg.evaluation.plot`), paired comparisons of evaluations
(:mod:`~medseg.evaluation.comparison`) and the HTML report (:mod:`~medseg.evaluation.report`)."""

from __future__ import annotations

from medseg.evaluation.calibration import ECE_BINS, Bins, calibration_of_case, expected_calibration_error
from medseg.evaluation.comparison import COMPARISON_CSV, COMPARISON_PNG, compare_evaluations, format_comparison
from medseg.evaluation.evaluate import (
    CALIBRATION_CSV,
    METRICS_PNG,
    SUMMARY_JSON,
    CasePairs,
    References,
    evaluate_folder,
    find_references,
    format_mean_sd,
    format_summary,
    label_table_from_json,
    pair_cases,
    read_case,
    summarize,
    summarize_calibration,
)
from medseg.evaluation.files import (
    LESION_METRICS_CSV,
    METRICS_CSV,
    LesionMetrics,
    Metrics,
    read_lesion_metrics_csv,
    read_metrics_csv,
    write_lesion_metrics_csv,
    write_metrics_csv,
)
from medseg.evaluation.lesion_wise import (
    LESION_RULES,
    LesionRules,
    LesionScore,
    get_lesion_rules,
    lesion_wise_label_maps,
    lesion_wise_scores,
)
from medseg.evaluation.metrics import (
    NSD_TOLERANCE_MM,
    RegionScore,
    check_nsd_tolerance,
    dice,
    hd95,
    image_diagonal_mm,
    nsd,
    score_label_maps,
    score_masks,
)
from medseg.evaluation.plot import plot_scores
from medseg.evaluation.report import render_case_overlays, write_report

__all__ = [
    "CALIBRATION_CSV",
    "COMPARISON_CSV",
    "COMPARISON_PNG",
    "ECE_BINS",
    "LESION_METRICS_CSV",
    "LESION_RULES",
    "METRICS_CSV",
    "METRICS_PNG",
    "NSD_TOLERANCE_MM",
    "SUMMARY_JSON",
    "Bins",
    "CasePairs",
    "LesionMetrics",
    "LesionRules",
    "LesionScore",
    "Metrics",
    "References",
    "RegionScore",
    "calibration_of_case",
    "check_nsd_tolerance",
    "compare_evaluations",
    "dice",
    "evaluate_folder",
    "expected_calibration_error",
    "find_references",
    "format_comparison",
    "format_mean_sd",
    "format_summary",
    "get_lesion_rules",
    "hd95",
    "image_diagonal_mm",
    "label_table_from_json",
    "lesion_wise_label_maps",
    "lesion_wise_scores",
    "nsd",
    "pair_cases",
    "plot_scores",
    "read_case",
    "read_lesion_metrics_csv",
    "read_metrics_csv",
    "render_case_overlays",
    "score_label_maps",
    "score_masks",
    "summarize",
    "summarize_calibration",
    "write_lesion_metrics_csv",
    "write_metrics_csv",
    "write_report",
]
