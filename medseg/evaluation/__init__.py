"""Evaluation: label maps scored against references, per case and region
(:mod:`~medseg.evaluation.evaluate`, with :mod:`~medseg.evaluation.metrics` and the BraTS 2023 lesion-wise
scores of :mod:`~medseg.evaluation.lesion_wise`), the score files and plots it writes
(:mod:`~medseg.evaluation.files`, :mod:`~medseg.evaluation.plot`), paired comparisons of evaluations
(:mod:`~medseg.evaluation.comparison`) and the HTML report (:mod:`~medseg.evaluation.report`)."""

from __future__ import annotations

from medseg.evaluation.comparison import COMPARISON_CSV, COMPARISON_PNG, compare_evaluations, format_comparison
from medseg.evaluation.evaluate import (
    EMPTY_BOTH_RULES,
    LABEL_MAP_ENDINGS,
    METRICS_PNG,
    SUMMARY_JSON,
    CaseMaps,
    CasePairs,
    References,
    evaluate_folder,
    find_references,
    format_mean_sd,
    format_summary,
    label_table_from_json,
    pair_cases,
    predictions_label_table,
    read_case,
    summarize,
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
    "COMPARISON_CSV",
    "COMPARISON_PNG",
    "EMPTY_BOTH_RULES",
    "LABEL_MAP_ENDINGS",
    "LESION_METRICS_CSV",
    "LESION_RULES",
    "METRICS_CSV",
    "METRICS_PNG",
    "NSD_TOLERANCE_MM",
    "SUMMARY_JSON",
    "CaseMaps",
    "CasePairs",
    "LesionMetrics",
    "LesionRules",
    "LesionScore",
    "Metrics",
    "References",
    "RegionScore",
    "check_nsd_tolerance",
    "compare_evaluations",
    "dice",
    "evaluate_folder",
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
    "predictions_label_table",
    "read_case",
    "read_lesion_metrics_csv",
    "read_metrics_csv",
    "render_case_overlays",
    "score_label_maps",
    "score_masks",
    "summarize",
    "write_lesion_metrics_csv",
    "write_metrics_csv",
    "write_report",
]
