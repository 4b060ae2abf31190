"""Smooth random fields on a voxel grid, defined in world millimetres.

A field is a cubic B-spline whose control points (knots) sit on a fixed lattice in world space
(spacing ``cell_mm``, centred on the world origin) and carry independent standard-normal weights.
Because the knots do not depend on the voxel grid, the same random draw gives the same field in mm
whatever the grid's shape or spacing: a case generated at 1 mm and at 2 mm shows the same brain.

The voxel grids used here are axis-aligned in world space (BraTS-style ``diag(-s, -s, s)``
affines), so a field is separable: it is evaluated with three small matrix products instead of
interpolating at every voxel, which keeps full-size (240 x 240 x 155) fields well under a second.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Half-width (mm) of the world region covered by knots: larger than any head, so the field is defined
# wherever there is brain and falls to zero far outside it.
_EXTENT_MM = 130.0


@dataclass(frozen=True)
class WorldGrid:
    """World coordinates (RAS mm) of an axis-aligned voxel grid.

    Attributes:
        x: ``(X,)`` world x (right +) of each index along voxel axis 0.
        y: ``(Y,)`` world y (anterior +) along voxel axis 1.
        z: ``(Z,)`` world z (superior +) along voxel axis 2.
    """

    x: np.ndarray
    y: np.ndarray
    z: np.ndarray

    @property
    def shape(self) -> tuple[int, int, int]:
        """Voxel shape ``(X, Y, Z)``."""
        return (self.x.size, self.y.size, self.z.size)

    def axes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """World coordinates as broadcastable arrays of shapes ``(X,1,1)``, ``(1,Y,1)``, ``(1,1,Z)``."""
        return self.x[:, None, None], self.y[None, :, None], self.z[None, None, :]


def _bspline(t: np.ndarray) -> np.ndarray:
    """Cubic B-spline basis at offsets ``t`` (in knot units); support ``|t| < 2``."""
    a = np.abs(t)
    return np.where(a < 1, (4 - 6 * a**2 + 3 * a**3) / 6, np.where(a < 2, (2 - a) ** 3 / 6, 0.0))


def _bspline_derivative(t: np.ndarray) -> np.ndarray:
    """Derivative of :func:`_bspline` with respect to ``t``."""
    a = np.abs(t)
    d = np.where(a < 1, (-12 * a + 9 * a**2) / 6, np.where(a < 2, -3 * (2 - a) ** 2 / 6, 0.0))
    return np.sign(t) * d


def _weights(coords: np.ndarray, cell_mm: float, derivative: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Basis matrix ``(len(coords), K)`` of one axis and the per-coordinate norm of the value basis."""
    half = int(np.ceil(_EXTENT_MM / cell_mm)) + 2
    knots = np.arange(-half, half + 1) * cell_mm
    t = (coords[:, None] - knots[None, :]) / cell_mm
    value = _bspline(t)
    norm = np.sqrt((value**2).sum(axis=1))
    norm = np.maximum(norm, 1e-6)
    basis = _bspline_derivative(t) / cell_mm if derivative else value
    return basis.astype(np.float32), norm.astype(np.float32)


def _knot_count(cell_mm: float) -> int:
    return 2 * (int(np.ceil(_EXTENT_MM / cell_mm)) + 2) + 1


def _contract(coef: np.ndarray, wx: np.ndarray, wy: np.ndarray, wz: np.ndarray) -> np.ndarray:
    """``sum_ijk wx[a,i] wy[b,j] wz[c,k] coef[i,j,k]`` as three matrix products, ending in ``(X, Y, Z)`` order."""
    out = np.tensordot(wx, coef, axes=([1], [0]))  # (X, J, K)
    out = np.tensordot(out, wy, axes=([1], [1]))  # (X, K, Y)
    return np.tensordot(out, wz, axes=([1], [1]))  # (X, Y, Z)


def smooth_field(rng: np.random.Generator, grid: WorldGrid, cell_mm: float) -> np.ndarray:
    """A smooth random field with zero mean and unit variance at every point.

    Args:
        rng: source of the knot weights (one normal draw per knot, fixed count for a given ``cell_mm``).
        grid: where to evaluate.
        cell_mm: knot spacing in mm; features of the field are about ``2 * cell_mm`` across.

    Returns:
        ``(X, Y, Z)`` float32 array.
    """
    n = _knot_count(cell_mm)
    coef = rng.standard_normal((n, n, n), dtype=np.float32)
    (wx, nx), (wy, ny), (wz, nz) = (_weights(c, cell_mm) for c in (grid.x, grid.y, grid.z))
    field = _contract(coef, wx, wy, wz)
    field /= nx[:, None, None] * ny[None, :, None] * nz[None, None, :]
    return field


def smooth_field_with_gradient(
    rng: np.random.Generator, grid: WorldGrid, cell_mm: float
) -> tuple[np.ndarray, np.ndarray]:
    """Like :func:`smooth_field`, plus the magnitude of the field's gradient in 1/mm.

    ``|f| / |grad f|`` is then a first-order estimate of the distance (mm) to the zero level set of
    ``f``, which is how sheet-like structures (sulci) of a chosen width are drawn.

    Returns:
        ``(field, gradient_magnitude)``, both ``(X, Y, Z)`` float32.
    """
    n = _knot_count(cell_mm)
    coef = rng.standard_normal((n, n, n), dtype=np.float32)
    axes = (grid.x, grid.y, grid.z)
    values = [_weights(c, cell_mm) for c in axes]
    derivs = [_weights(c, cell_mm, derivative=True)[0] for c in axes]
    (wx, nx), (wy, ny), (wz, nz) = values
    norm = nx[:, None, None] * ny[None, :, None] * nz[None, None, :]
    field = _contract(coef, wx, wy, wz) / norm
    grad_sq = _contract(coef, derivs[0], wy, wz) ** 2
    grad_sq += _contract(coef, wx, derivs[1], wz) ** 2
    grad_sq += _contract(coef, wx, wy, derivs[2]) ** 2
    return field, np.sqrt(grad_sq) / norm


def supersampled(grid: WorldGrid, factor: int) -> WorldGrid:
    """The grid with each voxel split into ``factor**3`` sub-voxels (centres at their own positions)."""
    if factor == 1:
        return grid

    def split(axis: np.ndarray) -> np.ndarray:
        step = axis[1] - axis[0] if axis.size > 1 else 1.0
        offsets = ((np.arange(factor) + 0.5) / factor - 0.5) * step
        return (axis[:, None] + offsets[None, :]).reshape(-1).astype(np.float32)

    return WorldGrid(split(grid.x), split(grid.y), split(grid.z))


def _blocks(array: np.ndarray, factor: int) -> np.ndarray:
    x, y, z = (s // factor for s in array.shape)
    return array.reshape(x, factor, y, factor, z, factor)


def block_mean(array: np.ndarray, factor: int) -> np.ndarray:
    """Average over ``factor**3`` blocks: the partial-volume signal of each target voxel."""
    if factor == 1:
        return array
    return _blocks(array, factor).mean(axis=(1, 3, 5), dtype=np.float32)


def block_mode(codes: np.ndarray, factor: int) -> np.ndarray:
    """Most frequent code (0-7) in each ``factor**3`` block (ties go to the smaller code), as uint8."""
    if factor == 1:
        return codes
    if factor != 2 or codes.max(initial=0) > 7:
        raise ValueError("block_mode supports factor 2 and codes 0-7")
    # Each sub-voxel adds 1 to a 4-bit counter of its code; the eight counters are packed in one uint32.
    packed = np.left_shift(np.uint32(1), 4 * codes.astype(np.uint32))
    counts = _blocks(packed, 2).sum(axis=(1, 3, 5), dtype=np.uint32)
    best = np.zeros(counts.shape, dtype=np.uint8)
    best_count = counts & 15
    for code in range(1, 8):
        count = (counts >> (4 * code)) & 15
        better = count > best_count
        best[better] = code
        best_count = np.where(better, count, best_count)
    return best
