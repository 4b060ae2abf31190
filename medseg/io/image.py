"""An image array together with the geometry of its voxel grid."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medseg.errors import MedsegInputError

_LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0])


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

    def same_grid(self, other: Geometry, *, atol: float = 1e-4) -> bool:
        """True when both grids have the same shape and affines equal within ``atol`` mm."""
        return self.shape == other.shape and bool(np.allclose(self.affine, other.affine, atol=atol))

    @classmethod
    def from_itk(cls, *, shape: tuple[int, int, int], spacing: Any, origin: Any, direction: Any) -> Geometry:
        """Build from SimpleITK-style LPS spacing, origin and 3x3 (or flat 9) direction."""
        spacing = np.asarray(spacing, dtype=float)
        direction = np.asarray(direction, dtype=float).reshape(3, 3)
        affine = np.eye(4)
        affine[:3, :3] = _LPS_FROM_RAS @ direction @ np.diag(spacing)
        affine[:3, 3] = _LPS_FROM_RAS @ np.asarray(origin, dtype=float)
        return cls(shape=tuple(int(s) for s in shape), affine=affine)  # type: ignore[arg-type]


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
