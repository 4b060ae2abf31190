"""Per-region Dice, HD95 (mm) and normalised surface Dice, following the BraTS conventions, computed
with MONAI.

Conventions (the BraTS challenge's, which every number medseg reports follows):

* **Dice** of two boolean masks is ``2 |P ∩ R| / (|P| + |R|)``. Both masks empty gives 1; exactly
  one empty gives 0 (``monai.metrics.compute_dice(..., ignore_empty=False)``).
* **HD95** is the 95th-percentile Hausdorff distance in mm between the mask surfaces. Both empty
  gives 0; exactly one empty gives the diagonal of the image, ``sqrt(sum((shape * spacing)^2))``
  mm (373.13 mm for a 240 x 240 x 155 grid at 1 mm).

What MONAI 1.6.1 computes for HD95 (``compute_hausdorff_distance(..., percentile=95, spacing=...)``,
checked against its source and in ``tests/evaluation/test_metrics.py``):

1. surface voxels of each mask are the voxels removed by one binary erosion with the 6-connected
   cross (voxels on the image border count as surface);
2. for every surface voxel of P the Euclidean distance, in mm with the given anisotropic voxel
   spacing, to the nearest surface voxel of R, and the same from R to P (voxel centres);
3. the 95th percentile of each of the two *directed* distance sets separately (``torch.quantile``,
   linear interpolation), and the **maximum of the two**.

This is *not* the 95th percentile of the pooled symmetric set (what medpy's ``hd95`` returns); the
two usually differ by a fraction of a voxel but can differ by more when one surface is much larger.

* **NSD** (normalised surface Dice at a tolerance of tau mm, Nikolov et al. 2021) is the share of
  the two masks' surface voxels (the same surfaces as above) that lie within tau mm of the other
  mask's surface: ``(|{d(P->R) <= tau}| + |{d(R->P) <= tau}|) / (|S_P| + |S_R|)``
  (``monai.metrics.compute_surface_dice``, voxel-counted surfaces, ``use_subvoxels=False``). Both
  empty gives 1 and exactly one empty gives 0, as for Dice. The tolerance is a property of the task:
  1 mm by default (FLARE, AbdomenCT-1K); TotalSegmentator reports 3 mm.

Masks are indexed ``(X, Y, Z)`` in file voxel order; ``spacing`` is the voxel size along those axes
in mm (``Geometry.spacing``). Orientation does not matter for these metrics as long as prediction
and reference share one grid.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import NamedTuple

import numpy as np
import torch
from monai.metrics import compute_dice, compute_hausdorff_distance, compute_surface_dice

from medseg.io.image import check_label_map
from medseg.labels import LabelTable

HD95_PERCENTILE = 95.0
NSD_TOLERANCE_MM = 1.0


class RegionScore(NamedTuple):
    """Dice (0..1), HD95 (mm) and NSD (0..1, at a tolerance in mm) of one region or class of one case."""

    dice: float
    hd95: float
    nsd: float


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

    This is the HD95 that BraTS assigns when exactly one of prediction and reference is empty
    (373.13 mm for ``(240, 240, 155)`` at 1 mm).
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


def hd95(pred: np.ndarray, ref: np.ndarray, *, spacing: Sequence[float]) -> float:
    """95th-percentile Hausdorff distance in mm between two boolean ``(X, Y, Z)`` masks.

    Args:
        pred: predicted mask ``(X, Y, Z)``.
        ref: reference mask on the same grid.
        spacing: voxel size along X, Y, Z in mm (may be anisotropic).

    Returns:
        ``max(p95(d(P->R)), p95(d(R->P)))`` over surface voxels, in mm (see the module docstring for
        MONAI's exact definition); 0 when both masks are empty, the image diagonal when exactly one is.
    """
    pred, ref = check_masks(pred, ref, spacing)
    has_pred, has_ref = bool(pred.any()), bool(ref.any())
    if not has_pred and not has_ref:
        return 0.0
    if has_pred != has_ref:
        return image_diagonal_mm(ref.shape, spacing)
    pred_t = torch.from_numpy(np.ascontiguousarray(pred))[None, None]
    ref_t = torch.from_numpy(np.ascontiguousarray(ref))[None, None]
    with _quiet_monai():
        value = compute_hausdorff_distance(
            pred_t,
            ref_t,
            include_background=True,
            distance_metric="euclidean",
            percentile=HD95_PERCENTILE,
            spacing=[float(s) for s in spacing],
        )
    return float(value[0, 0])


def check_nsd_tolerance(tolerance_mm: float) -> float:
    """``tolerance_mm`` as a float; ``ValueError`` unless it is a finite number of mm >= 0."""
    value = float(tolerance_mm)
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"the NSD tolerance must be a finite number of mm >= 0, got {tolerance_mm}")
    return value


def nsd(pred: np.ndarray, ref: np.ndarray, *, spacing: Sequence[float], tolerance_mm: float) -> float:
    """Normalised surface Dice of two boolean ``(X, Y, Z)`` masks at ``tolerance_mm``.

    Args:
        pred: predicted mask ``(X, Y, Z)``.
        ref: reference mask on the same grid.
        spacing: voxel size along X, Y, Z in mm (may be anisotropic).
        tolerance_mm: the largest surface distance, in mm, that still counts as agreement (>= 0).

    Returns:
        The share (0..1) of both masks' surface voxels within ``tolerance_mm`` of the other mask's
        surface (see the module docstring); 1 when both masks are empty, 0 when exactly one is.
    """
    pred, ref = check_masks(pred, ref, spacing)
    check_nsd_tolerance(tolerance_mm)
    has_pred, has_ref = bool(pred.any()), bool(ref.any())
    if not has_pred and not has_ref:
        return 1.0
    if has_pred != has_ref:
        return 0.0
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


def score_masks(
    pred: np.ndarray, ref: np.ndarray, *, spacing: Sequence[float], nsd_tolerance_mm: float = NSD_TOLERANCE_MM
) -> RegionScore:
    """Dice, HD95 (mm) and NSD of two boolean ``(X, Y, Z)`` masks with BraTS empty-mask rules.

    Args:
        pred: predicted mask ``(X, Y, Z)``, any dtype (nonzero = inside).
        ref: reference mask on the same grid.
        spacing: voxel size along X, Y, Z in mm.
        nsd_tolerance_mm: the NSD's tolerance in mm.

    Returns:
        ``RegionScore(dice, hd95, nsd)``: both empty -> ``(1, 0, 1)``; exactly one empty ->
        ``(0, diagonal, 0)``.
    """
    pred, ref = check_masks(pred, ref, spacing)
    if pred.any() and ref.any():
        # the same scores on the box that holds both masks (with one voxel of background around, so
        # that no surface voxel moves onto the box's edge): less work on a mostly empty grid
        box = mask_box(pred | ref, margin=1)
        pred, ref = pred[box], ref[box]
    return RegionScore(
        dice=dice(pred, ref),
        hd95=hd95(pred, ref, spacing=spacing),
        nsd=nsd(pred, ref, spacing=spacing, tolerance_mm=nsd_tolerance_mm),
    )


def score_label_maps(
    pred: np.ndarray,
    ref: np.ndarray,
    *,
    table: LabelTable,
    spacing: Sequence[float],
    nsd_tolerance_mm: float = NSD_TOLERANCE_MM,
) -> dict[str, RegionScore]:
    """Score two integer label maps region by region (or class by class).

    Args:
        pred: predicted label map ``(X, Y, Z)`` with values from ``table.labels``.
        ref: reference label map on the same grid.
        table: gives the scored sets through :meth:`LabelTable.evaluation_sets` (BraTS: WT, TC, ET
            as unions of labels; class tables: one set per foreground label, e.g. each organ).
        spacing: voxel size along X, Y, Z in mm.
        nsd_tolerance_mm: the NSD's tolerance in mm.

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
            np.isin(pred, values), np.isin(ref, values), spacing=spacing, nsd_tolerance_mm=nsd_tolerance_mm
        )
    return scores
