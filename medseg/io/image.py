"""An image array together with the geometry of its voxel grid."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

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
