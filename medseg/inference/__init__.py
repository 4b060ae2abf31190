"""Inference: a :class:`Predictor` loads a model (or an ensemble) once and segments many cases
(:mod:`~medseg.inference.predictor`), covering each case with windows (:mod:`~medseg.inference.tiling`)
that run on a backend (:mod:`~medseg.inference.backends`); :func:`predict_folder` runs it over a file or
a folder of cases (:mod:`~medseg.inference.batch`), with uncertainty maps and scores on request
(:mod:`~medseg.inference.uncertainty`); :func:`calibrate` fits a temperature for calibrated probabilities
(:mod:`~medseg.inference.calibration`); :func:`export_model` writes the network as TorchScript or ONNX
(:mod:`~medseg.inference.export`)."""

from __future__ import annotations

from medseg.inference.batch import (
    OUTPUT_SUFFIXES,
    PROBABILITIES_SUFFIX,
    RUN_RECORD,
    SUMMARY_NAME,
    Batch,
    BatchSummary,
    CaseResult,
    check_output,
    merge_summaries,
    predict_folder,
    run_batch,
    run_identity,
)
from medseg.inference.calibration import CalibrationParams, CalibrationResult, calibrate, fit_temperature
from medseg.inference.export import ExportFormat, export_model, write_onnx
from medseg.inference.predictor import (
    INFERENCE_PREPROCESSING,
    Prediction,
    Predictor,
    Windows,
    check_ensemble,
    read_case,
)
from medseg.inference.tiling import TilePlan, smallest_window, tiled_inference
from medseg.inference.uncertainty import CASE_SCORES, UNCERTAINTY_MAPS, case_scores

__all__ = [
    "CASE_SCORES",
    "INFERENCE_PREPROCESSING",
    "OUTPUT_SUFFIXES",
    "PROBABILITIES_SUFFIX",
    "RUN_RECORD",
    "SUMMARY_NAME",
    "UNCERTAINTY_MAPS",
    "Batch",
    "BatchSummary",
    "CalibrationParams",
    "CalibrationResult",
    "CaseResult",
    "ExportFormat",
    "Prediction",
    "Predictor",
    "TilePlan",
    "Windows",
    "calibrate",
    "case_scores",
    "check_ensemble",
    "check_output",
    "export_model",
    "fit_temperature",
    "merge_summaries",
    "predict_folder",
    "read_case",
    "run_batch",
    "run_identity",
    "smallest_window",
    "tiled_inference",
    "write_onnx",
]
