"""An image array together with the geometry of its voxel grid."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medseg.errors import MedsegInputError
from medseg.labels import LabelTable, require_known_values

_LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0])

GRID_TOLERANCE = 1e-4
"""Largest difference in voxel spacing or origin (mm), or in a direction cosine, at which two grids are one."""


@dataclass(frozen=True)
class Geometry:
    """The voxel grid of an image: shape plus the affine that maps voxel indices to world mm.

    ``affine`` follows the NIfTI/nibabel convention: a 4x4 matrix taking (i, j, k, 1) voxel indices
    to RAS+ world coordinates in mm. ``spacing``, ``origin`` and ``direction`` are the equivalent
    ITK/SimpleITK (LPS) description of the same grid.
    """

    shape: tuple[int, int, int]
    affine: np.ndarray

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size along i, j, k in mm."""
        return tuple(float(s) for s in np.linalg.norm(self.affine[:3, :3], axis=0))  # type: ignore[return-value]

    @property
    def origin(self) -> np.ndarray:
        """World position of voxel (0, 0, 0) in LPS mm (as SimpleITK reports it)."""
        return _LPS_FROM_RAS @ self.affine[:3, 3]

    @property
    def direction(self) -> np.ndarray:
        """3x3 LPS direction cosines, one column per voxel axis (as SimpleITK's matrix)."""
        return _LPS_FROM_RAS @ (self.affine[:3, :3] / np.asarray(self.spacing))

    def same_grid(self, other: Geometry, *, atol: float = GRID_TOLERANCE) -> bool:
        """True when :func:`grid_difference` finds none, within ``atol`` (mm for spacing and origin, and
        for direction cosines)."""
        return grid_difference(self, other, tolerance_mm=atol, tolerance_direction=atol) is None

    @classmethod
    def from_itk(cls, *, shape: tuple[int, int, int], spacing: Any, origin: Any, direction: Any) -> Geometry:
        """Build from SimpleITK-style LPS spacing, origin and 3x3 (or flat 9) direction."""
        spacing = np.asarray(spacing, dtype=float)
        direction = np.asarray(direction, dtype=float).reshape(3, 3)
        affine = np.eye(4)
        affine[:3, :3] = _LPS_FROM_RAS @ direction @ np.diag(spacing)
        affine[:3, 3] = _LPS_FROM_RAS @ np.asarray(origin, dtype=float)
        return cls(shape=tuple(int(s) for s in shape), affine=affine)  # type: ignore[arg-type]


def _numbers(values: Any) -> str:
    return "(" + ", ".join(f"{float(v):.6g}" for v in values) + ")"


def grid_difference(
    geometry: Geometry,
    reference: Geometry,
    *,
    tolerance_mm: float = GRID_TOLERANCE,
    tolerance_direction: float = GRID_TOLERANCE,
) -> str | None:
    """How ``geometry`` differs from ``reference``, checked in the order shape, spacing, origin, direction;
    ``None`` when they are one grid.

    Args:
        geometry: the grid to check.
        reference: the grid it must equal.
        tolerance_mm: largest difference in voxel spacing or in origin (mm) taken as equal.
        tolerance_direction: largest difference in a direction cosine taken as equal.

    Returns:
        The first difference, e.g. ``"spacing (1, 1, 2.5) mm, not (1, 1, 2) mm"``, or ``None``.
    """
    if tuple(geometry.shape) != tuple(reference.shape):
        return f"shape {tuple(geometry.shape)}, not {tuple(reference.shape)}"
    if not np.allclose(geometry.spacing, reference.spacing, rtol=0, atol=tolerance_mm):
        return f"spacing {_numbers(geometry.spacing)} mm, not {_numbers(reference.spacing)} mm"
    if not np.allclose(geometry.origin, reference.origin, rtol=0, atol=tolerance_mm):
        return f"origin (LPS) {_numbers(geometry.origin)} mm, not {_numbers(reference.origin)} mm"
    turn = float(np.max(np.abs(geometry.direction - reference.direction)))
    if not turn <= tolerance_direction:  # also refuses NaN
        return f"direction cosines differ by up to {turn:.3g}"
    return None


def require_same_grid(
    geometry: Geometry,
    reference: Geometry,
    *,
    path: str | Path | None,
    reference_path: str | Path | None,
    tolerance_mm: float = GRID_TOLERANCE,
) -> None:
    """Refuse an image (or label map) at ``path`` whose grid is not the one of ``reference_path``: the two
    would not overlay voxel by voxel (see :func:`grid_difference` for what is compared).

    Raises:
        MedsegInputError: naming ``path``: ``"not on the grid of <reference_path>: <difference>"``.
    """
    difference = grid_difference(geometry, reference, tolerance_mm=tolerance_mm)
    if difference is not None:
        raise _off_grid(difference, path=path, reference_path=reference_path)


def _off_grid(difference: str, *, path: str | Path | None, reference_path: str | Path | None) -> MedsegInputError:
    return MedsegInputError(f"not on the grid of {reference_path}: {difference}", path=path)


@dataclass(frozen=True)
class VoxelMap:
    """How the voxels of one grid lie on another's, exactly: axis ``axes[d]`` of the first grid runs along
    axis ``d`` of the second, reversed where ``flips[d]``, and starts at voxel ``offsets[d]`` of it.

    Same grid: ``axes (0, 1, 2)``, no flips, offsets 0. A label map stored LAS beside an LPS grid: axis 0
    flipped. A DICOM-SEG whose empty frames were omitted: offsets along the slice axis.
    """

    axes: tuple[int, int, int]
    flips: tuple[bool, bool, bool]
    offsets: tuple[int, int, int]

    @property
    def is_identity(self) -> bool:
        """Whether the voxels are stored in the same order (possibly a part of the other grid)."""
        return self.axes == (0, 1, 2) and not any(self.flips)


def voxel_map(geometry: Geometry, reference: Geometry, *, tolerance_mm: float = GRID_TOLERANCE) -> VoxelMap | None:
    """How every voxel of ``geometry`` lies on a voxel of ``reference``, when it does: the two grids hold
    the same voxel centres (within ``tolerance_mm``) in another axis order or direction, ``geometry``
    possibly covering only a box of ``reference``; ``None`` otherwise (another spacing, a rotation,
    a shift by a fraction of a voxel, voxels outside ``reference``).

    Voxel ``v`` of ``geometry`` is voxel ``P @ v + t`` of ``reference``, with ``P`` a signed permutation
    and ``t`` whole voxels: ``P`` and ``t`` are the rounded ``inv(reference.affine) @ geometry.affine``,
    and each may differ from it by ``tolerance_mm`` over a voxel (``P``, as the direction cosines of
    :func:`grid_difference`) or in mm (``t``).
    """
    to_reference = np.linalg.inv(reference.affine) @ geometry.affine
    rotation, shift = to_reference[:3, :3], to_reference[:3, 3]
    permutation = np.round(rotation)
    if not np.all(np.isfinite(to_reference)) or np.max(np.abs(rotation - permutation)) > tolerance_mm:
        return None
    if not np.array_equal(np.abs(permutation).sum(axis=0), np.ones(3)) or np.abs(np.linalg.det(permutation)) != 1:
        return None
    whole = np.round(shift)
    if np.max(np.abs(shift - whole) * np.asarray(reference.spacing)) > tolerance_mm:
        return None
    axes = tuple(int(np.flatnonzero(permutation[d])[0]) for d in range(3))
    flips = tuple(bool(permutation[d, axes[d]] < 0) for d in range(3))
    sizes = [geometry.shape[a] for a in axes]
    # a flipped axis runs from the reference voxel of its last voxel on
    offsets = tuple(int(whole[d]) - (sizes[d] - 1 if flips[d] else 0) for d in range(3))
    if any(o < 0 or o + n > r for o, n, r in zip(offsets, sizes, reference.shape, strict=True)):
        return None
    return VoxelMap(axes, flips, offsets)  # type: ignore[arg-type]


def onto_grid(
    image: Image, reference: Geometry, *, reference_path: str | Path | None, partial: bool = False
) -> tuple[np.ndarray, VoxelMap]:
    """``image``'s ``(X, Y, Z)`` array on ``reference``'s grid, moved voxel for voxel (no interpolation):
    the array itself when the grids are one, else reordered and flipped where :func:`voxel_map` finds
    the same voxels stored in another axis order or direction. With ``partial``, ``image`` may cover a
    box of ``reference`` (a DICOM-SEG without its empty frames): zeros elsewhere.

    Returns:
        The array on ``reference`` and the map that moved it (``is_identity`` and zero offsets: unmoved).

    Raises:
        MedsegInputError: naming ``image.path``: ``"not on the grid of <reference_path>: <difference>"``
            (:func:`require_same_grid`) when neither holds.
    """
    geometry = image.geometry
    difference = grid_difference(geometry, reference)
    if difference is None:
        return image.array, VoxelMap((0, 1, 2), (False, False, False), (0, 0, 0))
    mapping = voxel_map(geometry, reference)
    whole = mapping is not None and tuple(geometry.shape[a] for a in mapping.axes) == tuple(reference.shape)
    if mapping is None or not (whole or partial):
        raise _off_grid(difference, path=image.path, reference_path=reference_path)
    moved = np.transpose(image.array, mapping.axes)
    moved = np.flip(moved, axis=[d for d in range(3) if mapping.flips[d]])
    if whole:
        return np.ascontiguousarray(moved), mapping
    placed = np.zeros(reference.shape, dtype=image.array.dtype)
    box = tuple(slice(o, o + n) for o, n in zip(mapping.offsets, moved.shape, strict=True))
    placed[box] = moved
    return placed, mapping


@dataclass
class Image:
    """Voxel data with its grid.

    Attributes:
        array: ``(X, Y, Z)`` for one channel or ``(C, X, Y, Z)`` for several, in file voxel order
            (not reoriented).
        geometry: the grid of the spatial axes.
        path: where it was read from, if anywhere.
        meta: format-specific extras a writer may reuse (e.g. NIfTI qform/sform codes).
    """

    array: np.ndarray
    geometry: Geometry
    path: Path | None = None
    meta: dict[str, Any] = field(default_factory=dict)


# no scanner or modality stores intensities near this; values beyond it come from a bad scale factor
MAX_INTENSITY = 1e10


def require_finite(array: np.ndarray, *, path: str | Path | None, channel: str | None = None) -> None:
    """Refuse image voxels that are NaN or infinite, or finite beyond :data:`MAX_INTENSITY` (a bad scale
    factor): a network fed one returns NaN logits around it (and every instance norm spreads them through
    its window), or a map of background, so the label map would be silently wrong.

    Raises:
        MedsegInputError: naming ``path`` (and ``channel``, when given) and how many voxels are bad, or
            the largest value.
    """
    if not np.issubdtype(array.dtype, np.floating):
        return
    bad = int(array.size - np.count_nonzero(np.isfinite(array)))
    where = f"channel {channel}: " if channel is not None else ""
    if bad:
        are = "voxel is" if bad == 1 else "voxels are"
        raise MedsegInputError(f"{where}{bad} {are} NaN or infinite", path=path)
    if array.size and (largest := float(np.abs(array).max())) > MAX_INTENSITY:
        raise MedsegInputError(
            f"{where}voxel value {largest:.3g} is beyond any image intensity (|v| > {MAX_INTENSITY:g}):"
            " check the file's scale factor",
            path=path,
        )


def require_invertible(affine: np.ndarray, *, path: str | Path | None) -> None:
    """Refuse a 4x4 voxel-to-world affine that is not finite or whose three voxel axes (columns) are
    zero or (nearly) parallel: no orientation, spacing or resampling can be derived from it.

    Raises:
        MedsegInputError: naming ``path``.
    """
    axes = np.asarray(affine, dtype=float)[:3, :3]
    lengths = np.linalg.norm(axes, axis=0)
    if not np.all(np.isfinite(affine)) or np.any(lengths == 0):
        raise MedsegInputError("the affine has a zero-length or non-finite voxel axis", path=path)
    if abs(np.linalg.det(axes / lengths)) < 1e-3:  # 1 for orthogonal axes, 0 for parallel ones
        raise MedsegInputError("the affine's voxel axes are parallel: no orientation can be derived", path=path)


def label_values(array: np.ndarray, *, path: str | Path | None) -> set[int]:
    """The distinct values of a label map, as ints.

    Raises:
        MedsegInputError: naming ``path``, when a value is not an integer (a label map resampled with
            linear interpolation holds 0.5s, which casting would silently turn into other labels), NaN,
            or not a number at all.
    """
    values = np.unique(array)
    if values.dtype.kind == "f":
        bad = values[~np.isfinite(values) | (values != np.round(values))]
        if bad.size:
            raise MedsegInputError(f"label map holds non-integer values {bad[:5].tolist()}", path=path)
    elif values.dtype.kind not in "iub":
        raise MedsegInputError(f"label map has non-numeric type {values.dtype}", path=path)
    return {int(v) for v in values}


def check_label_map(
    array: np.ndarray, table: LabelTable, *, path: str | Path | None, what: str = "label values"
) -> set[int]:
    """The values of a label map (:func:`label_values`), each of which ``table`` must define
    (:func:`~medseg.labels.require_known_values`).

    Raises:
        MedsegInputError: naming ``path``: a value that is not an integer, or not in ``table``.
    """
    values = label_values(array, path=path)
    require_known_values(values, table, path=path, what=what)
    return values


def stack_channels(images: Sequence[Image]) -> Image:
    """One ``(C, X, Y, Z)`` float32 image of a case's channels, on the first image's grid: one 3-D image per
    channel, or a single image that holds them all (a 4-D file, channels first).

    ``meta`` is the first image's, plus ``"channel_files"``: the file of each channel, for errors about one.

    Raises:
        MedsegInputError: naming the file: a 4-D image among several, or an image not on the first one's grid.
    """
    first = images[0]
    for img in images:
        if img.array.ndim == 4 and len(images) > 1:
            raise MedsegInputError(f"expected a 3-D image per channel file, got shape {img.array.shape}", path=img.path)
        require_same_grid(img.geometry, first.geometry, path=img.path, reference_path=first.path)
    channels = [(img.path, c) for img in images for c in img.array.reshape(-1, *img.geometry.shape)]
    meta = {**first.meta, "channel_files": [path for path, _ in channels]}
    array = np.empty((len(channels), *first.geometry.shape), dtype=np.float32)  # no float copy per channel
    for index, (_, channel) in enumerate(channels):
        array[index] = channel
    return Image(array, first.geometry, first.path, meta)
