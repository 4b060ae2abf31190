"""Shape primitives for the CT phantoms, evaluated at arbitrary world points (RAS mm).

Unlike :mod:`medseg.phantoms._fields`, which is separable and so needs axis-aligned grids, these
functions take a ``(3, N)`` or ``(3, X, Y, Z)`` array of world coordinates, so the same anatomy can be
sampled on any voxel grid: flipped, permuted or oblique.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

Array = np.ndarray


class SmoothNoise:
    """A smooth random scalar field in world mm: random values on a cubic lattice, spline-interpolated.

    Args:
        rng: draws the lattice values (a fixed count for given ``cell_mm`` and ``extent_mm``).
        cell_mm: lattice spacing in mm; features are about ``cell_mm`` across.
        extent_mm: half-width of the cube (centred on ``centre``) where the field varies; outside, it
            continues the border values.
        centre: world RAS mm of the lattice centre.
    """

    def __init__(
        self, rng: np.random.Generator, *, cell_mm: float, extent_mm: float = 260.0, centre: Array | None = None
    ) -> None:
        self.cell_mm = float(cell_mm)
        self.half = int(np.ceil(extent_mm / cell_mm))
        self.centre = np.zeros(3) if centre is None else np.asarray(centre, dtype=float)
        n = 2 * self.half + 1
        values = rng.standard_normal((n, n, n)).astype(np.float32)
        # A cubic interpolating spline through white noise has a variance below 1; rescale to ~unit.
        self.coeffs = ndimage.spline_filter(values, order=3, mode="nearest") * 0.55

    def __call__(self, points: Array) -> Array:
        """Field values at ``points`` (``(3, ...)`` world mm) -> array of shape ``points.shape[1:]``."""
        idx = (points.reshape(3, -1) - self.centre[:, None]) / self.cell_mm + self.half
        out = ndimage.map_coordinates(self.coeffs, idx, order=3, mode="nearest", prefilter=False)
        return out.reshape(points.shape[1:]).astype(np.float32)


def rotation_matrix(ax: float, ay: float, az: float) -> Array:
    """3x3 rotation by ``ax``, ``ay``, ``az`` radians about x, then y, then z (``Rz @ Ry @ Rx``)."""
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def ellipsoid_level(points: Array, centre: Array, semi: Array, rotation: Array | None = None) -> Array:
    """Normalised radius of ``points`` (``(3, ...)`` mm) in an ellipsoid: < 1 inside, 1 on the surface.

    Args:
        centre: ``(3,)`` mm; semi: ``(3,)`` semi-axes in mm along the ellipsoid's own axes;
        rotation: 3x3, ellipsoid axes -> world (columns are the ellipsoid axes in world).
    """
    d = points - np.asarray(centre, dtype=np.float32).reshape((3,) + (1,) * (points.ndim - 1))
    if rotation is not None:
        d = np.tensordot(np.asarray(rotation, dtype=np.float32).T, d, axes=1)
    semi = np.asarray(semi, dtype=np.float32)
    return np.sqrt(sum((d[i] / semi[i]) ** 2 for i in range(3)))


def tube_distance(points: Array, path: Array) -> tuple[Array, Array]:
    """Distance (mm) from ``points`` (``(3, ...)``) to a polyline, and the position along it.

    Args:
        path: ``(M, 3)`` polyline vertices in mm.

    Returns:
        ``(distance, t)``: both of shape ``points.shape[1:]``; ``t`` runs from 0 at ``path[0]`` to 1 at
        ``path[-1]`` (by arc length), for tapering the tube radius.
    """
    flat = points.reshape(3, -1).T.astype(np.float32)
    seg = np.diff(path, axis=0).astype(np.float32)
    lengths = np.linalg.norm(seg, axis=1)
    cum = np.concatenate([[0.0], np.cumsum(lengths)]) / max(lengths.sum(), 1e-6)
    best = np.full(flat.shape[0], np.inf, dtype=np.float32)
    best_t = np.zeros(flat.shape[0], dtype=np.float32)
    for a, v, length, t0, t1 in zip(path[:-1], seg, lengths, cum[:-1], cum[1:], strict=True):
        u = np.clip(((flat - a) @ v) / max(length**2, 1e-6), 0.0, 1.0)
        dist = np.linalg.norm(flat - a - u[:, None] * v, axis=1)
        closer = dist < best
        best[closer] = dist[closer]
        best_t[closer] = (t0 + u * (t1 - t0))[closer]
    shape = points.shape[1:]
    return best.reshape(shape), best_t.reshape(shape)


def bezier(control: Array, samples: int = 24) -> Array:
    """``(samples, 3)`` points on the Bezier curve with ``(K, 3)`` control points (de Casteljau)."""
    t = np.linspace(0.0, 1.0, samples)[:, None, None]
    pts = np.broadcast_to(np.asarray(control, dtype=float), (samples, *np.shape(control))).copy()
    while pts.shape[1] > 1:
        pts = (1 - t) * pts[:, :-1] + t * pts[:, 1:]
    return pts[:, 0]
