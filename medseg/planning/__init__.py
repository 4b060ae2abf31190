"""Planning: a dataset's fingerprint and the preprocessing it suggests (:mod:`~medseg.planning.plan`), and
the plot of both (:mod:`~medseg.planning.plot`)."""

from __future__ import annotations

from medseg.planning.plan import (
    ANISOTROPY_RATIO,
    FINGERPRINT_JSON,
    FINGERPRINT_PNG,
    FOREGROUND_SAMPLES_PER_CASE,
    MAX_PATCH_VOXELS,
    PLAN_JSON,
    CaseFingerprint,
    Fingerprint,
    IntensityRange,
    Suggestion,
    check_max_patch_voxels,
    fingerprint_dataset,
    format_suggestions,
    missing_labels,
    patch_size,
    plan_transforms,
    pooled_foreground,
    set_arguments,
    target_spacing,
    train_command,
    unusual_spacing,
    write_plan,
)
from medseg.planning.plot import plot_fingerprint

__all__ = [
    "ANISOTROPY_RATIO",
    "FINGERPRINT_JSON",
    "FINGERPRINT_PNG",
    "FOREGROUND_SAMPLES_PER_CASE",
    "MAX_PATCH_VOXELS",
    "PLAN_JSON",
    "CaseFingerprint",
    "Fingerprint",
    "IntensityRange",
    "Suggestion",
    "check_max_patch_voxels",
    "fingerprint_dataset",
    "format_suggestions",
    "missing_labels",
    "patch_size",
    "plan_transforms",
    "plot_fingerprint",
    "pooled_foreground",
    "set_arguments",
    "target_spacing",
    "train_command",
    "unusual_spacing",
    "write_plan",
]
