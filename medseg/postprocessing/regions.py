"""Network outputs to label maps, and the region rules applied to them: painting regions in order, and
relabelling a region predicted too small as its enclosing region (``inference.min_region_ml``)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from medseg.errors import ConfigError
from medseg.labels import LabelTable


def outputs_to_labels(probs: torch.Tensor, table: LabelTable, *, threshold: float = 0.5) -> np.ndarray:
    """Network probabilities ``(C, X, Y, Z)`` -> label map ``(X, Y, Z)`` uint8 in the table's own values.

    Regions are thresholded and painted in ``table.regions_class_order`` (outer to inner, so BraTS ET
    overwrites TC overwrites WT); classes take the argmax.
    """
    probs = torch.as_tensor(probs)
    if table.kind == "regions":
        labels = torch.zeros(probs.shape[1:], dtype=torch.uint8)
        for channel, value in enumerate(table.regions_class_order):
            labels[probs[channel] > threshold] = value
        return labels.numpy()
    values = torch.as_tensor(sorted(table.labels), dtype=torch.uint8)
    return values[probs.argmax(0)].numpy()


def check_min_region_ml(table: LabelTable, min_region_ml: Mapping[str, float]) -> None:
    """Raise :class:`ConfigError` if a name of ``min_region_ml`` is not one of ``table``'s regions."""
    names = [r.name for r in table.regions]
    for name in min_region_ml:
        if name not in names:
            raise ConfigError(f"inference.min_region_ml: {name!r} is not a region of {table.name} ({', '.join(names)})")


def suppress_small_regions(
    labels: np.ndarray, table: LabelTable, *, voxel_ml: float, min_region_ml: Mapping[str, float]
) -> np.ndarray:
    """Relabel regions predicted smaller than ``min_region_ml[name]`` mL as their enclosing region.

    ``labels`` is a ``(X, Y, Z)`` label map of a region table; the voxels painted for a region
    take the label of the region that encloses it (:func:`enclosing_label`). Returns a new array.

    Raises:
        ConfigError: a name that is not one of the table's regions.
    """
    check_min_region_ml(table, min_region_ml)
    out = labels.copy()
    names = [r.name for r in table.regions]
    for name, minimum in min_region_ml.items():
        index = names.index(name)
        voxels = out == table.regions_class_order[index]
        if 0 < voxels.sum() * voxel_ml < minimum:
            out[voxels] = enclosing_label(table, name)
    return out


def enclosing_label(table: LabelTable, name: str) -> int:
    """The label that takes over a removed piece of ``name``: for region tables the label painted for
    the nearest region before it that holds all its labels (BraTS: TC for ET, WT for TC), background
    when none does (WT; BraTS 2024's resection cavity, which lies outside the tumour); for class tables
    background."""
    if table.kind != "regions":
        return 0
    names = [r.name for r in table.regions]
    inner = set(table.regions[names.index(name)].labels)
    for index in range(names.index(name) - 1, -1, -1):
        if inner <= set(table.regions[index].labels):
            return table.regions_class_order[index]
    return 0
