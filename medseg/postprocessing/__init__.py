"""Post-processing: network outputs to label maps (:mod:`~medseg.postprocessing.regions`), small
connected components removed (:mod:`~medseg.postprocessing.components`), and the choice of
``inference.min_component_ml`` on validation cases (:mod:`~medseg.postprocessing.tuning`)."""

from __future__ import annotations

from medseg.postprocessing.components import (
    Pieces,
    check_min_component_ml,
    keep_largest_components,
    remove_small_components,
)
from medseg.postprocessing.regions import (
    check_min_region_ml,
    enclosing_label,
    outputs_to_labels,
    suppress_small_regions,
)
from medseg.postprocessing.tuning import (
    CANDIDATES_ML,
    TUNING_CSV,
    TUNING_JSON,
    Trial,
    criterion_name,
    format_trials,
    set_argument,
    tune_min_component_ml,
)

__all__ = [
    "CANDIDATES_ML",
    "TUNING_CSV",
    "TUNING_JSON",
    "Pieces",
    "Trial",
    "check_min_component_ml",
    "check_min_region_ml",
    "criterion_name",
    "enclosing_label",
    "format_trials",
    "keep_largest_components",
    "outputs_to_labels",
    "remove_small_components",
    "set_argument",
    "suppress_small_regions",
    "tune_min_component_ml",
]
