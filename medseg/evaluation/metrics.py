"""Per-region Dice, HD95 (mm) and normalised surface Dice, following the BraTS conventions.

Conventions (the BraTS challenge's, which every number medseg reports follows):

* **Dice** of two boolean masks is ``2 |P ∩ R| / (|P| + |R|)``. Both masks empty gives 1; exactly
  one empty gives 0 (``monai.metrics.compute_dice(..., ignore_empty=False)``).
* **HD95** is the 95th-percentile Hausdorff distance in mm between the mask surfaces. Both empty
  gives 0; exactly one empty gives the :class:`Scoring`'s constant: the diagonal of the image,
  ``sqrt(sum((shape * spacing)^2))`` mm (373.13 mm for a 240 x 240 x 155 grid at 1 mm; BraTS 2021 and
  medseg's default), 374 mm (the BraTS 2023 and 2024 scripts) or 373 mm (BraTS 2025's
  ``brats-evaluation``).
* **NSD** (normalised surface Dice at a tolerance of tau mm, Nikolov et al. 2021) is the share of
  the two masks' surfaces that lie within tau mm of the other mask's surface. Both empty gives 1 and
  exactly one empty gives 0, as for Dice. The tolerance is a property of the task: 1 mm by default
  (FLARE, AbdomenCT-1K); TotalSegmentator reports 3 mm.

A surface is measured one of two ways (:attr:`Scoring.surface`):

* ``"elements"``: surface elements weighted by their area in mm² (DeepMind's ``surface-distance``, the
  method of the BraTS 2023 and 2024 evaluation scripts; :mod:`medseg.evaluation.surface`). HD95 is, in each
  direction, the distance below which 95 % of the surface's *area* lies, and the larger of the two; NSD
  shares are shares of area. The default for BraTS label tables.
* ``"voxels"``: surface voxels counted alike (MONAI 1.6.1, ``compute_hausdorff_distance(...,
  percentile=95, spacing=...)`` and ``compute_surface_dice(..., use_subvoxels=False)``, checked against
  its source and in ``tests/evaluation/test_metrics.py``): the voxels removed by one binary erosion with
  the 6-connected cross (voxels on the image border count as surface); for every surface voxel of P the
  Euclidean distance in mm to the nearest surface voxel of R and back (voxel centres); HD95 is the 95th
  percentile of each directed set (``torch.quantile``, linear interpolation) and the **maximum of the
  two** (not the pooled percentile medpy's ``hd95`` returns); NSD counts voxels. The default for other
  tables.
* ``"panoptica"``: the same surface voxels, as Panoptica measures them (BraTS 2025's ``brats-evaluation``):
  HD95 is the 95th percentile of both directions' distances **pooled** (linear interpolation, as medpy),
  NSD the **mean of the two directions'** shares within the tolerance (Panoptica's default tolerance is the
  smallest voxel side: 1 mm on BraTS data, medseg's default too).

The two differ by more than a fraction of a voxel where a surface's voxels and its area are spread
differently (flat faces against slanted ones, thick slices): docs/conventions.md gives figures.

Masks are indexed ``(X, Y, Z)`` in file voxel order; ``spacing`` is the voxel size along those axes
in mm (``Geometry.spacing``). Orientation does not matter for these metrics as long as prediction
and reference share one grid.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal, NamedTuple

import numpy as np
import torch
from monai.metrics import compute_dice, compute_hausdorff_distance, compute_surface_dice

from medseg.errors import MedsegInputError
from medseg.evaluation.surface import (
    SurfaceDistances,
    hausdorff_elements,
    mean_directed_surface_dice,
    pooled_hausdorff,
    surface_dice_elements,
    surface_distances,
    voxel_surface_distances,
)
from medseg.io.image import check_label_map
from medseg.labels import LabelTable

HD95_PERCENTILE = 95.0
NSD_TOLERANCE_MM = 1.0

Surface = Literal["elements", "voxels", "panoptica"]


class RegionScore(NamedTuple):
    """Dice (0..1), HD95 (mm) and NSD (0..1, at a tolerance in mm) of one region or class of one case."""

    dice: float
    hd95: float
    nsd: float


@dataclass(frozen=True)
class Scoring:
    """How HD95 and NSD measure surfaces, and the HD95 of a case where exactly one mask is empty.

    Attributes:
        name: registry key (:data:`SCORINGS`).
        surface: ``"elements"`` (area-weighted surface elements, DeepMind's method), ``"voxels"``
            (surface voxels counted alike, MONAI's) or ``"panoptica"`` (surface voxels, pooled percentile,
            NSD as the mean of the two directions); see the module docstring.
        one_empty_hd95_mm: HD95 (mm) when exactly one of prediction and reference is empty (also a
            missed lesion's and a false positive's, lesion-wise); ``None``: the diagonal of the grid.
    """

    name: str
    surface: Surface
    one_empty_hd95_mm: float | None = None

    def one_empty_hd95(self, shape: Sequence[int], spacing: Sequence[float]) -> float:
        """The HD95 (mm) of a case whose prediction or reference, not both, is empty, on a grid of
        ``shape`` voxels of ``spacing`` mm."""
        if self.one_empty_hd95_mm is None:
            return image_diagonal_mm(shape, spacing)
        return self.one_empty_hd95_mm


SCORINGS: dict[str, Scoring] = {
    s.name: s
    for s in (
        Scoring("voxels", "voxels"),
        Scoring("elements", "elements"),
        Scoring("brats2023", "elements", one_empty_hd95_mm=374.0),
        Scoring("brats2025", "panoptica", one_empty_hd95_mm=373.0),
    )
}
"""The scorings medseg knows: ``voxels`` (medseg's default for non-BraTS tables: MONAI's surface voxels,
the grid's diagonal), ``elements`` (surface elements, the grid's diagonal: BraTS 2021's constant),
``brats2023`` (surface elements and 374 mm, the BraTS 2023 and 2024 scripts) and ``brats2025`` (Panoptica's
surface voxels and 373 mm, BraTS 2025's ``brats-evaluation``)."""

_TABLE_SCORINGS = {
    "brats2021": "elements",
    "brats2023": "brats2023",
    "brats2024-gli": "brats2023",
    "brats2024-ped": "brats2023",
    "brats2024-met": "brats2023",
    "brats2024-men-rt": "brats2023",
}


def default_scoring(table_name: str) -> Scoring:
    """The scoring a label table is evaluated with unless another is asked for: its BraTS year's
    (``brats2021`` -> ``elements``, ``brats2023`` and the 2024 tables -> ``brats2023``, tables named
    ``brats2025...`` -> ``brats2025``), else ``voxels``."""
    if table_name.startswith("brats2025"):
        return SCORINGS["brats2025"]
    return SCORINGS[_TABLE_SCORINGS.get(table_name, "voxels")]


def get_scoring(name: str) -> Scoring:
    """The :class:`Scoring` registered as ``name`` (a key of :data:`SCORINGS`).

    Raises:
        MedsegInputError: an unknown name, listing the known ones.
    """
    try:
        return SCORINGS[name]
    except KeyError:
        raise MedsegInputError(f"unknown scoring {name!r}; choose one of {', '.join(SCORINGS)}") from None


VOXELS = SCORINGS["voxels"]


@contextmanager
def _quiet_monai() -> Iterator[None]:
    """Silence MONAI's empty-mask warnings (the callers handle empty masks first) and the deprecations
    its surface-distance code raises internally."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", FutureWarning)
        yield


def image_diagonal_mm(shape: Sequence[int], spacing: Sequence[float]) -> float:
    """Length in mm of the diagonal of a grid: ``sqrt(sum((shape * spacing)^2))``.

    The HD95 that the ``voxels`` and ``elements`` scorings assign when exactly one of prediction and
    reference is empty (373.13 mm for ``(240, 240, 155)`` at 1 mm).
    """
    extent = np.asarray(shape, dtype=float) * np.asarray(spacing, dtype=float)
    return float(math.sqrt(float(np.sum(extent**2))))


def _require_same_shape(pred: np.ndarray, ref: np.ndarray) -> None:
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from reference shape {ref.shape}")


def check_masks(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """``pred`` and ``ref`` as boolean ``(X, Y, Z)`` masks (nonzero = inside), checked to be one 3-D shape
    with three spacing values (mm).

    Raises:
        ValueError: shapes differ, not 3-D, or not three spacing values.
    """
    pred = np.asarray(pred).astype(bool, copy=False)
    ref = np.asarray(ref).astype(bool, copy=False)
    _require_same_shape(pred, ref)
    if pred.ndim != 3:
        raise ValueError(f"expected 3-D (X, Y, Z) masks, got shape {pred.shape}")
    if len(spacing) != 3:
        raise ValueError(f"expected 3 spacing values (mm), got {tuple(spacing)}")
    return pred, ref


def mask_box(mask: np.ndarray, margin: int) -> tuple[slice, ...]:
    """The bounding box of ``mask``'s voxels (at least one) grown by ``margin`` voxels per side,
    clipped to the grid, as slices."""
    box = []
    for axis in range(mask.ndim):
        hits = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        box.append(slice(max(int(hits[0]) - margin, 0), min(int(hits[-1]) + margin + 1, mask.shape[axis])))
    return tuple(box)


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Dice coefficient of two boolean ``(X, Y, Z)`` masks (1 when both are empty, 0 when one is)."""
    pred_t = torch.from_numpy(np.ascontiguousarray(pred, dtype=bool))[None, None]
    ref_t = torch.from_numpy(np.ascontiguousarray(ref, dtype=bool))[None, None]
    return float(compute_dice(pred_t, ref_t, include_background=True, ignore_empty=False)[0, 0])


def _monai_hd95(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float]) -> float:
    with _quiet_monai():
        value = compute_hausdorff_distance(
            torch.from_numpy(np.ascontiguousarray(pred))[None, None],
            torch.from_numpy(np.ascontiguousarray(ref))[None, None],
            include_background=True,
            distance_metric="euclidean",
            percentile=HD95_PERCENTILE,
            spacing=[float(s) for s in spacing],
        )
    return float(value[0, 0])


def _monai_nsd(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float], tolerance_mm: float) -> float:
    with _quiet_monai():
        value = compute_surface_dice(
            torch.from_numpy(np.ascontiguousarray(pred))[None, None],
            torch.from_numpy(np.ascontiguousarray(ref))[None, None],
            class_thresholds=[float(tolerance_mm)],
            include_background=True,
            distance_metric="euclidean",
            spacing=[float(s) for s in spacing],
            use_subvoxels=False,
        )
    return float(value[0, 0])


def _both_surfaces(pred: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two non-empty masks cut to the box that holds both, with one voxel of background around (so that
    no surface voxel moves onto the box's edge): the same surface distances, less work."""
    box = mask_box(pred | ref, margin=1)
    return pred[box], ref[box]


def _distances(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float], scoring: Scoring) -> SurfaceDistances:
    """The surface distances of the ``elements`` and ``panoptica`` surfaces."""
    if scoring.surface == "elements":
        return surface_distances(pred, ref, spacing=spacing)
    return voxel_surface_distances(pred, ref, spacing=spacing)


def _distances_hd95(d: SurfaceDistances, scoring: Scoring) -> float:
    if scoring.surface == "elements":
        return hausdorff_elements(d, percentile=HD95_PERCENTILE)
    return pooled_hausdorff(d, percentile=HD95_PERCENTILE)


def _distances_nsd(d: SurfaceDistances, scoring: Scoring, tolerance_mm: float) -> float:
    if scoring.surface == "elements":
        return surface_dice_elements(d, tolerance_mm=tolerance_mm)
    return mean_directed_surface_dice(d, tolerance_mm=tolerance_mm)


def hd95(pred: np.ndarray, ref: np.ndarray, *, spacing: Sequence[float], scoring: Scoring = VOXELS) -> float:
    """95th-percentile Hausdorff distance in mm between two boolean ``(X, Y, Z)`` masks.

    Args:
        pred: predicted mask ``(X, Y, Z)``.
        ref: reference mask on the same grid.
        spacing: voxel size along X, Y, Z in mm (may be anisotropic).
        scoring: how surfaces are measured and the one-empty constant (see the module docstring).

    Returns:
        ``max(p95(d(P->R)), p95(d(R->P)))`` in mm; 0 when both masks are empty,
        ``scoring.one_empty_hd95(...)`` when exactly one is.
    """
    pred, ref = check_masks(pred, ref, spacing)
    has_pred, has_ref = bool(pred.any()), bool(ref.any())
    if not has_pred and not has_ref:
        return 0.0
    if has_pred != has_ref:
        return scoring.one_empty_hd95(ref.shape, spacing)
    pred, ref = _both_surfaces(pred, ref)
    if scoring.surface == "voxels":
        return _monai_hd95(pred, ref, spacing)
    return _distances_hd95(_distances(pred, ref, spacing, scoring), scoring)


def check_nsd_tolerance(tolerance_mm: float) -> float:
    """``tolerance_mm`` as a float; ``ValueError`` unless it is a finite number of mm >= 0."""
    value = float(tolerance_mm)
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"the NSD tolerance must be a finite number of mm >= 0, got {tolerance_mm}")
    return value


def nsd(
    pred: np.ndarray, ref: np.ndarray, *, spacing: Sequence[float], tolerance_mm: float, scoring: Scoring = VOXELS
) -> float:
    """Normalised surface Dice of two boolean ``(X, Y, Z)`` masks at ``tolerance_mm``.

    Args:
        pred: predicted mask ``(X, Y, Z)``.
        ref: reference mask on the same grid.
        spacing: voxel size along X, Y, Z in mm (may be anisotropic).
        tolerance_mm: the largest surface distance, in mm, that still counts as agreement (>= 0).
        scoring: how surfaces are measured (see the module docstring).

    Returns:
        The share (0..1) of both masks' surfaces within ``tolerance_mm`` of the other mask's surface
        (by area for ``elements``, by voxel count for ``voxels``); 1 when both masks are empty, 0 when
        exactly one is.
    """
    pred, ref = check_masks(pred, ref, spacing)
    check_nsd_tolerance(tolerance_mm)
    has_pred, has_ref = bool(pred.any()), bool(ref.any())
    if not has_pred and not has_ref:
        return 1.0
    if has_pred != has_ref:
        return 0.0
    pred, ref = _both_surfaces(pred, ref)
    if scoring.surface == "voxels":
        return _monai_nsd(pred, ref, spacing, tolerance_mm)
    return _distances_nsd(_distances(pred, ref, spacing, scoring), scoring, tolerance_mm)


def score_masks(
    pred: np.ndarray,
    ref: np.ndarray,
    *,
    spacing: Sequence[float],
    nsd_tolerance_mm: float = NSD_TOLERANCE_MM,
    scoring: Scoring = VOXELS,
) -> RegionScore:
    """Dice, HD95 (mm) and NSD of two boolean ``(X, Y, Z)`` masks with BraTS empty-mask rules.

    Args:
        pred: predicted mask ``(X, Y, Z)``, any dtype (nonzero = inside).
        ref: reference mask on the same grid.
        spacing: voxel size along X, Y, Z in mm.
        nsd_tolerance_mm: the NSD's tolerance in mm.
        scoring: how surfaces are measured and the one-empty constant (see the module docstring).

    Returns:
        ``RegionScore(dice, hd95, nsd)``: both empty -> ``(1, 0, 1)``; exactly one empty ->
        ``(0, scoring.one_empty_hd95(...), 0)``.
    """
    pred, ref = check_masks(pred, ref, spacing)
    check_nsd_tolerance(nsd_tolerance_mm)
    has_pred, has_ref = bool(pred.any()), bool(ref.any())
    if not has_pred and not has_ref:
        return RegionScore(1.0, 0.0, 1.0)
    if has_pred != has_ref:
        return RegionScore(0.0, scoring.one_empty_hd95(ref.shape, spacing), 0.0)
    pred, ref = _both_surfaces(pred, ref)
    if scoring.surface != "voxels":
        distances = _distances(pred, ref, spacing, scoring)
        return RegionScore(
            dice(pred, ref),
            _distances_hd95(distances, scoring),
            _distances_nsd(distances, scoring, nsd_tolerance_mm),
        )
    return RegionScore(
        dice(pred, ref), _monai_hd95(pred, ref, spacing), _monai_nsd(pred, ref, spacing, nsd_tolerance_mm)
    )


def score_label_maps(
    pred: np.ndarray,
    ref: np.ndarray,
    *,
    table: LabelTable,
    spacing: Sequence[float],
    nsd_tolerance_mm: float = NSD_TOLERANCE_MM,
    scoring: Scoring = VOXELS,
) -> dict[str, RegionScore]:
    """Score two integer label maps region by region (or class by class).

    Args:
        pred: predicted label map ``(X, Y, Z)`` with values from ``table.labels``.
        ref: reference label map on the same grid.
        table: gives the scored sets through :meth:`LabelTable.evaluation_sets` (BraTS: WT, TC, ET
            as unions of labels; class tables: one set per foreground label, e.g. each organ).
        spacing: voxel size along X, Y, Z in mm.
        nsd_tolerance_mm: the NSD's tolerance in mm.
        scoring: how surfaces are measured and the one-empty constant, e.g. ``default_scoring(table.name)``.

    Returns:
        Set name -> ``RegionScore(dice, hd95, nsd)``, in the table's evaluation order.

    Raises:
        ValueError: shapes differ.
        MedsegInputError: a map holds values that are not in ``table.labels``.
    """
    pred = np.asarray(pred)
    ref = np.asarray(ref)
    _require_same_shape(pred, ref)
    for what, arr in (("prediction", pred), ("reference", ref)):
        check_label_map(arr, table, path=None, what=f"{what} label values")
    scores: dict[str, RegionScore] = {}
    for name, values in table.evaluation_sets().items():
        scores[name] = score_masks(
            np.isin(pred, values),
            np.isin(ref, values),
            spacing=spacing,
            nsd_tolerance_mm=nsd_tolerance_mm,
            scoring=scoring,
        )
    return scores
