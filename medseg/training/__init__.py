"""Training: :func:`train` runs a config's training (:mod:`~medseg.training.trainer`; AMP on CUDA, DDP
under ``torchrun``) and writes its log (:mod:`~medseg.training.log`); the fold models it leaves segment
the cases they validated on (:mod:`~medseg.training.cross_validation`)."""

from __future__ import annotations

from medseg.training.cross_validation import FoldModel, check_folds, load_fold_model, out_of_fold_batch
from medseg.training.log import plot_curves, write_metrics_csv
from medseg.training.trainer import (
    RESUME_MAY_CHANGE,
    TrainResult,
    load_dataset_manifest,
    resolve_label_table,
    train,
    validate_config,
)

__all__ = [
    "RESUME_MAY_CHANGE",
    "FoldModel",
    "TrainResult",
    "check_folds",
    "load_dataset_manifest",
    "load_fold_model",
    "out_of_fold_batch",
    "plot_curves",
    "resolve_label_table",
    "train",
    "validate_config",
    "write_metrics_csv",
]
