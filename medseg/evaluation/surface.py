"""Surface distances between two masks on surface elements weighted by their area (Nikolov et al. 2021,
"Clinically applicable segmentation of head and neck anatomy for radiotherapy", the method of DeepMind's
``surface-distance`` package and so of the BraTS 2023 and 2024 evaluation scripts).

How the surfaces are found and weighted:

1. Every 2 x 2 x 2 cube of neighbouring voxel centres (the grid padded by one background voxel on each
   side) gets an 8-bit code from its corners: which of them lie inside the mask. A cube with some
   corners inside and some outside holds a piece of the mask's surface, a *surface element*, placed at
   the cube (a corner of the voxel grid, half a voxel off the voxel centres; both masks' elements share
   that grid, so distances between them are unaffected).
2. Its area (mm²) is that of the marching-cubes surface in the cube: polygons through the midpoints of
   the cube edges whose two corners differ, triangulated, with each triangle's area taken after the
   voxel spacing is applied (so anisotropic spacing weighs faces, edges and slants correctly). Where a
   cube face has two diagonal corners on one side, the smaller side's corners are cut off separately.
3. The distance (mm) from each element of one mask to the nearest element of the other, by a Euclidean
   distance transform of the other mask's element grid with the voxel spacing.

The 95th-percentile Hausdorff distance is then, in each direction, the smallest distance whose elements
(sorted by distance, then area) reach 95 % of the surface's area, and the larger of the two directions;
the normalised surface Dice is the share of both surfaces' area within the tolerance of the other.

Masks are boolean ``(X, Y, Z)`` arrays on one grid; ``spacing`` is the voxel size along those axes in mm.
Orientation does not matter.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from functools import lru_cache
from typing import NamedTuple

import numpy as np
from scipy import ndimage

Point = tuple[float, float, float]
Corner = tuple[int, int, int]

_CORNERS: tuple[Corner, ...] = tuple(itertools.product((0, 1), repeat=3))  # bit 4*c0 + 2*c1 + c2 of a code


def _bit(corner: Corner) -> int:
    return 4 * corner[0] + 2 * corner[1] + corner[2]


def _faces() -> list[tuple[Corner, Corner, Corner, Corner]]:
    """The cube's six faces, each as its four corners in order round the face."""
    faces = []
    for axis in range(3):
        a, b = (i for i in range(3) if i != axis)
        for value in (0, 1):
            ring = []
            for u, v in ((0, 0), (1, 0), (1, 1), (0, 1)):
                corner = [0, 0, 0]
                corner[axis], corner[a], corner[b] = value, u, v
                ring.append(tuple(corner))
            faces.append(tuple(ring))
    return faces


_FACES = _faces()


@lru_cache(maxsize=256)
def cube_polygons(code: int) -> tuple[tuple[Point, ...], ...]:
    """The surface that marching cubes draws in one 2 x 2 x 2 cube: closed polygons through the midpoints
    of the edges whose corners differ, in unit-cube coordinates (a corner is ``(c0, c1, c2)`` in {0, 1}³).

    Args:
        code: which corners are inside, bit ``4 c0 + 2 c1 + c2`` for corner ``(c0, c1, c2)`` (0..255).

    Returns:
        One vertex cycle per polygon; none for an all-inside or all-outside cube. A mask and its
        complement give the same polygons.
    """
    inside = {c for c in _CORNERS if code >> _bit(c) & 1}
    side = inside if len(inside) <= 4 else set(_CORNERS) - inside  # the side whose corners are cut off

    def midpoint(p: Corner, q: Corner) -> Point:
        return tuple((a + b) / 2 for a, b in zip(p, q, strict=True))  # type: ignore[return-value]

    links: dict[Point, list[Point]] = {}
    for ring in _FACES:
        cut = [(ring[i], ring[(i + 1) % 4]) for i in range(4) if (ring[i] in side) != (ring[(i + 1) % 4] in side)]
        if len(cut) == 2:
            pairs = [(cut[0], cut[1])]
        elif len(cut) == 4:  # diagonal corners on the side: cut each off on its own
            pairs = [tuple(e for e in cut if corner in e) for corner in ring if corner in side]
        else:
            continue
        for e, f in pairs:
            p, q = midpoint(*e), midpoint(*f)
            links.setdefault(p, []).append(q)
            links.setdefault(q, []).append(p)
    polygons = []
    unvisited = set(links)
    while unvisited:
        start = min(unvisited)
        cycle, previous, current = [start], None, start
        while True:
            step = next(p for p in links[current] if p != previous) if previous is not None else min(links[current])
            if step == start:
                break
            cycle.append(step)
            previous, current = current, step
        unvisited -= set(cycle)
        polygons.append(tuple(cycle))
    return tuple(polygons)


def _fan_start(polygon: tuple[Point, ...]) -> int:
    """The vertex a polygon is fanned into triangles from. Only the pentagons and the hexagons that are not
    flat have an area that depends on it; they are fanned as in the marching-cubes table of DeepMind's
    ``surface-distance`` (checked against it in the tests): a pentagon (three corners on one face) from
    either end of its three consecutive vertices on edges of one direction, a bent hexagon from a vertex
    whose neighbours both lie on edges of other directions than its own."""
    n = len(polygon)
    direction = [p.index(0.5) for p in polygon]  # the axis of the cube edge the vertex halves
    alike = [(direction[i - 1] == direction[i]) + (direction[(i + 1) % n] == direction[i]) for i in range(n)]
    wanted = {5: 1, 6: 0}.get(n)
    return next((i for i in range(n) if alike[i] == wanted), 0)


def element_areas(spacing: Sequence[float]) -> np.ndarray:
    """Area in mm² of the surface element of each cube code (see :func:`cube_polygons`), at this voxel
    spacing (mm along X, Y, Z): each polygon fanned into triangles (:func:`_fan_start`), each triangle's
    area measured after scaling the cube by the spacing.

    Returns:
        ``(256,)`` float array (read-only: one per spacing, kept); 0 for codes 0 and 255.
    """
    return _element_areas(tuple(float(s) for s in spacing))


@lru_cache(maxsize=64)
def _element_areas(spacing: tuple[float, ...]) -> np.ndarray:
    scale = np.asarray(spacing, dtype=float)
    areas = np.zeros(256)
    for code in range(1, 255):
        total = 0.0
        for polygon in cube_polygons(code):
            start = _fan_start(polygon)
            points = np.asarray(polygon[start:] + polygon[:start]) * scale
            for b, c in itertools.pairwise(points[1:]):
                total += 0.5 * float(np.linalg.norm(np.cross(b - points[0], c - points[0])))
        areas[code] = total
    areas.flags.writeable = False
    return areas


def _codes(mask: np.ndarray) -> np.ndarray:
    """The cube code of every 2 x 2 x 2 cube of ``mask`` padded by one background voxel per side:
    ``(X + 1, Y + 1, Z + 1)`` uint8."""
    padded = np.pad(mask, 1)
    n = mask.shape
    codes = np.zeros(tuple(s + 1 for s in n), dtype=np.uint8)
    for corner in _CORNERS:
        view = padded[tuple(slice(c, c + s + 1) for c, s in zip(corner, n, strict=True))]
        codes |= view.astype(np.uint8) << np.uint8(_bit(corner))
    return codes


class SurfaceDistances(NamedTuple):
    """The surface elements of two masks and their distances to the other surface.

    Attributes:
        pred_to_ref: distance (mm) from each element of the prediction to the reference's surface.
        pred_areas: area (mm²) of each of those elements.
        ref_to_pred: distance (mm) from each element of the reference to the prediction's surface.
        ref_areas: area (mm²) of each of those elements.
    """

    pred_to_ref: np.ndarray
    pred_areas: np.ndarray
    ref_to_pred: np.ndarray
    ref_areas: np.ndarray


def surface_distances(pred: np.ndarray, ref: np.ndarray, *, spacing: Sequence[float]) -> SurfaceDistances:
    """Surface elements of two non-empty boolean ``(X, Y, Z)`` masks on one grid, with their areas (mm²)
    and their distances (mm) to the other mask's elements (see the module docstring).

    Args:
        pred: predicted mask ``(X, Y, Z)``, at least one voxel.
        ref: reference mask on the same grid, at least one voxel.
        spacing: voxel size along X, Y, Z in mm (may be anisotropic).
    """
    spacing = [float(s) for s in spacing]
    areas = element_areas(spacing)
    code_pred, code_ref = _codes(pred), _codes(ref)
    on_pred = (code_pred != 0) & (code_pred != 255)
    on_ref = (code_ref != 0) & (code_ref != 255)
    to_ref = ndimage.distance_transform_edt(~on_ref, sampling=spacing)
    to_pred = ndimage.distance_transform_edt(~on_pred, sampling=spacing)
    return SurfaceDistances(to_ref[on_pred], areas[code_pred[on_pred]], to_pred[on_ref], areas[code_ref[on_ref]])


def _area_percentile(distances: np.ndarray, areas: np.ndarray, percentile: float) -> float:
    """The smallest distance whose elements, sorted by distance then area, hold ``percentile`` % of the
    total area."""
    order = np.lexsort((areas, distances))
    share = np.cumsum(areas[order]) / np.sum(areas)
    index = min(int(np.searchsorted(share, percentile / 100.0)), len(order) - 1)
    return float(distances[order][index])


def hausdorff_elements(d: SurfaceDistances, *, percentile: float) -> float:
    """The ``percentile``-th area-weighted percentile of the distances in each direction, the larger of
    the two (mm)."""
    return max(
        _area_percentile(d.pred_to_ref, d.pred_areas, percentile),
        _area_percentile(d.ref_to_pred, d.ref_areas, percentile),
    )


def surface_dice_elements(d: SurfaceDistances, *, tolerance_mm: float) -> float:
    """The share (0..1) of both surfaces' area that lies within ``tolerance_mm`` of the other surface."""
    near = np.sum(d.pred_areas[d.pred_to_ref <= tolerance_mm]) + np.sum(d.ref_areas[d.ref_to_pred <= tolerance_mm])
    return float(near / (np.sum(d.pred_areas) + np.sum(d.ref_areas)))


def voxel_surface_distances(pred: np.ndarray, ref: np.ndarray, *, spacing: Sequence[float]) -> SurfaceDistances:
    """Surface *voxels* of two non-empty boolean ``(X, Y, Z)`` masks, each weighing 1, and their distances (mm)
    to the other mask's surface voxels: the voxels one erosion with the 6-connected cross removes (voxels on
    the grid's border count as surface), distances between voxel centres (the surfaces of MONAI, medpy and
    Panoptica).

    Args:
        pred: predicted mask ``(X, Y, Z)``, at least one voxel.
        ref: reference mask on the same grid, at least one voxel.
        spacing: voxel size along X, Y, Z in mm (may be anisotropic).
    """
    spacing = [float(s) for s in spacing]
    on_pred = pred & ~ndimage.binary_erosion(pred, border_value=0)
    on_ref = ref & ~ndimage.binary_erosion(ref, border_value=0)
    to_ref = ndimage.distance_transform_edt(~on_ref, sampling=spacing)[on_pred]
    to_pred = ndimage.distance_transform_edt(~on_pred, sampling=spacing)[on_ref]
    return SurfaceDistances(to_ref, np.ones(to_ref.size), to_pred, np.ones(to_pred.size))


def pooled_hausdorff(d: SurfaceDistances, *, percentile: float) -> float:
    """The ``percentile``-th percentile (linear interpolation) of both directions' distances pooled (mm): the
    HD95 of medpy and of Panoptica (BraTS 2025's ``brats-evaluation``)."""
    return float(np.percentile(np.concatenate([d.pred_to_ref, d.ref_to_pred]), percentile))


def mean_directed_surface_dice(d: SurfaceDistances, *, tolerance_mm: float) -> float:
    """The mean of the two directions' shares of surface voxels within ``tolerance_mm`` of the other surface
    (Panoptica's normalised surface Dice)."""
    return float((np.mean(d.pred_to_ref <= tolerance_mm) + np.mean(d.ref_to_pred <= tolerance_mm)) / 2)
