"""A randomised brain: tissue classes on a voxel grid, built from analytic shapes in millimetres.

Coordinates follow RAS: x to the right, y anterior, z superior, in mm. The brain is drawn in a
*template* frame centred on the brain: world points are moved by a random rigid pose, a smooth
random displacement (so every case has its own shape) and an optional mass effect from tumours, then
scaled per axis; the cerebrum, cerebellum, brainstem, ventricles and deep grey nuclei are then simple
shapes in that frame. Cortex and sulci come from random fields evaluated in world mm.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medseg.phantoms._fields import WorldGrid, smooth_field, smooth_field_with_gradient

# Tissue codes of the tissue map (not label values of the segmentation).
BACKGROUND, CSF, GM, WM, DEEP_GM, VESSEL = 0, 1, 2, 3, 4, 5
TISSUE_NAMES = {BACKGROUND: "background", CSF: "CSF", GM: "GM", WM: "WM", DEEP_GM: "deep GM", VESSEL: "vessel"}

# Template brain semi-axes in mm (left-right, anterior-posterior, inferior-superior): 140 x 170 x 120 mm.
SEMI_AXES = (70.0, 85.0, 60.0)
# Template box (mm) holding the ventricles, deep grey nuclei and choroid plexus.
_INNER_BOX = ((-45.0, -50.0, -30.0), (45.0, 40.0, 35.0))

Ellipsoid = tuple[tuple[float, float, float], tuple[float, float, float]]  # (centre, semi-axes) in mm


@dataclass(frozen=True)
class BrainParams:
    """Random parameters of one brain (template-frame mm unless noted)."""

    centre: np.ndarray  # world RAS mm of the brain centre
    rotation: np.ndarray  # 3x3, template -> world
    scale: np.ndarray  # per-axis size factor
    warp_mm: float  # standard deviation of the smooth shape deformation
    ventricle_size: float  # 1 = typical adult; larger = atrophy
    sulcus_half_width: float  # mm
    cortex_thickness: float  # mm
    csf_rim: float  # mm of CSF kept outside the cortex by the skull-stripping mask


def sample_brain_params(rng: np.random.Generator) -> BrainParams:
    """Draw the shape parameters of one brain."""
    angles = np.deg2rad(rng.uniform(-6, 6, size=3))
    return BrainParams(
        centre=np.array([rng.uniform(-4, 4), rng.uniform(-6, 4), rng.uniform(4, 12)]),
        rotation=_rotation(*angles),
        scale=rng.uniform(0.9, 1.1) * rng.uniform(0.96, 1.04, size=3),
        warp_mm=rng.uniform(1.5, 3.5),
        ventricle_size=rng.uniform(0.9, 1.8),
        sulcus_half_width=rng.uniform(0.6, 1.4),
        cortex_thickness=rng.uniform(2.5, 3.3),
        csf_rim=rng.uniform(0.5, 2.0),
    )


def _rotation(ax: float, ay: float, az: float) -> np.ndarray:
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def template_coordinates(
    rng: np.random.Generator, grid: WorldGrid, params: BrainParams
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Template-frame coordinates (mm) of every voxel: pose, smooth warp and per-axis scale undone.

    Returns:
        ``(qx, qy, qz)``, each ``(X, Y, Z)`` float32.
    """
    wx, wy, wz = grid.axes()
    c = params.centre.tolist()
    d = (wx - np.float32(c[0]), wy - np.float32(c[1]), wz - np.float32(c[2]))
    inv = params.rotation.T.tolist()
    q = []
    for axis in range(3):
        warp = smooth_field(rng, grid, cell_mm=50.0)
        warp *= params.warp_mm
        warp += inv[axis][0] * d[0] + inv[axis][1] * d[1] + inv[axis][2] * d[2]
        warp /= float(params.scale[axis])
        q.append(warp)
    return q[0], q[1], q[2]


def world_box(
    grid: WorldGrid, params: BrainParams, lo: tuple[float, ...], hi: tuple[float, ...], margin: float
) -> tuple[slice, slice, slice]:
    """Voxel slices covering a template-frame box ``lo..hi`` (mm) once posed in the world, plus ``margin`` mm.

    Used to compute small structures only where they can be, instead of over the whole grid.
    """
    corners = np.array([[a, b, c] for a in (lo[0], hi[0]) for b in (lo[1], hi[1]) for c in (lo[2], hi[2])])
    world = params.centre + (params.rotation @ (corners * params.scale).T).T
    low, high = world.min(axis=0) - margin, world.max(axis=0) + margin
    slices = []
    for axis, coords in enumerate((grid.x, grid.y, grid.z)):
        inside = np.nonzero((coords >= low[axis]) & (coords <= high[axis]))[0]
        slices.append(slice(int(inside[0]), int(inside[-1]) + 1) if inside.size else slice(0, 0))
    return slices[0], slices[1], slices[2]


def ellipsoid_radius(q: tuple[np.ndarray, ...], centre: tuple[float, ...], semi: tuple[float, ...]) -> np.ndarray:
    """Normalised ellipsoid radius (1 on the surface) of template points ``q``."""
    return np.sqrt(sum(((q[i] - centre[i]) / semi[i]) ** 2 for i in range(3)))


def _ellipsoid_depth(q: tuple[np.ndarray, ...], centre: tuple[float, ...], semi: tuple[float, ...]) -> np.ndarray:
    """Signed distance-like depth (mm, positive inside) below the surface of an ellipsoid.

    First-order estimate ``(1 - r) / |grad r|``, accurate near the surface where it matters.
    """
    semi = tuple(float(v) for v in semi)
    u = [(q[i] - centre[i]) / semi[i] for i in range(3)]
    r = np.maximum(np.sqrt(u[0] ** 2 + u[1] ** 2 + u[2] ** 2), 1e-3)
    grad = np.sqrt(sum((u[i] / semi[i]) ** 2 for i in range(3))) / r
    return (1 - r) / np.maximum(grad, 1e-6)


def _cerebrum_depth(q: tuple[np.ndarray, ...]) -> np.ndarray:
    """Depth below the cerebral surface: an egg-shaped ellipsoid, narrower in front, flat below."""
    qx, qy, qz = q
    taper = 1.0 - 0.08 * np.clip(qy / SEMI_AXES[1], -1, 1)  # frontal lobes narrower than parietal
    flat_bottom = np.where(qz < 0, np.float32(0.82), np.float32(1.0))
    return _ellipsoid_depth((qx / taper, qy, qz / flat_bottom), (0.0, 0.0, 0.0), SEMI_AXES)


def brain_depth(q: tuple[np.ndarray, ...]) -> np.ndarray:
    """Depth (mm, positive inside) below the outer surface of cerebrum, cerebellum and brainstem."""
    cerebrum = _cerebrum_depth(q)
    cerebellum = _ellipsoid_depth(q, (0.0, -50.0, -42.0), (50.0, 28.0, 20.0))
    stem_radius = 11.0 - 0.05 * np.clip(q[2] + 30, -40, 0)  # slightly wider pons
    stem = np.where(q[2] < -15, stem_radius - np.sqrt(q[0] ** 2 + ((q[1] + 16) / 1.1) ** 2), np.float32(-1e3))
    return np.maximum(np.maximum(cerebrum, cerebellum), stem).astype(np.float32)


def ventricle_radius(q: tuple[np.ndarray, ...], size: float) -> np.ndarray:
    """Normalised radius (< 1 inside) of the lateral and third ventricles, with a septum at the midline."""
    v = size
    parts: list[Ellipsoid] = []
    for side in (-1.0, 1.0):
        parts += [
            ((side * 9.0, -2.0, 12.0), (5.5 * v, 25.0, 8.0 * v)),  # body
            ((side * 11.0, 20.0, 10.0), (5.5 * v, 11.0, 9.0 * v)),  # frontal horn
            ((side * 18.0, -28.0, 8.0), (6.0 * v, 12.0, 9.0 * v)),  # atrium / occipital horn
            ((side * 27.0, -10.0, -16.0), (3.0 * v, 13.0, 3.5 * v)),  # temporal horn
        ]
    radius = _union(q, parts)
    septum = np.abs(q[0]) < 1.0
    radius = np.where(septum, np.maximum(radius, 1.01), radius)
    third = ellipsoid_radius(q, (0.0, -3.0, -2.0), (1.2 * v, 12.0, 8.0))
    return np.minimum(radius, third)


def deep_grey_radius(q: tuple[np.ndarray, ...]) -> np.ndarray:
    """Normalised radius (< 1 inside) of thalami, caudate heads and lentiform nuclei."""
    parts: list[Ellipsoid] = []
    for side in (-1.0, 1.0):
        parts += [
            ((side * 10.0, -11.0, 1.0), (8.0, 14.0, 8.0)),  # thalamus
            ((side * 14.0, 15.0, 10.0), (5.0, 9.0, 8.0)),  # caudate head
            ((side * 23.0, 4.0, 0.0), (6.0, 15.0, 9.0)),  # lentiform nucleus
        ]
    return _union(q, parts)


def _union(q: tuple[np.ndarray, ...], parts: list[Ellipsoid]) -> np.ndarray:
    """Smallest normalised radius over several ellipsoids (< 1 inside any of them)."""
    radius = ellipsoid_radius(q, *parts[0])
    for centre, semi in parts[1:]:
        np.minimum(radius, ellipsoid_radius(q, centre, semi), out=radius)
    return radius


def _choroid_plexus_radius(q: tuple[np.ndarray, ...], size: float) -> np.ndarray:
    """Normalised radius of the choroid plexus in each atrium: it enhances on T1ce but is not tumour."""
    v = min(size, 1.0)
    left = ellipsoid_radius(q, (-18.0, -28.0, 7.0), (3.0 * v, 6.0, 3.5 * v))
    right = ellipsoid_radius(q, (18.0, -28.0, 7.0), (3.0 * v, 6.0, 3.5 * v))
    return np.minimum(left, right)


def _fissure_distance(q: tuple[np.ndarray, ...], half_width: float) -> np.ndarray:
    """Distance (mm) to the interhemispheric fissure: a midline sheet above the corpus callosum."""
    qx, qy, qz = q
    bottom = 24.0 - 50.0 * ((qy + 5.0) / 70.0) ** 4  # arches over the corpus callosum, deep at the poles
    return np.sqrt(np.maximum(np.abs(qx) - half_width, 0.0) ** 2 + np.maximum(bottom - qz, 0.0) ** 2)


def tissue_map(
    rng: np.random.Generator,
    grid: WorldGrid,
    q: tuple[np.ndarray, ...],
    q_inner: tuple[np.ndarray, ...],
    params: BrainParams,
) -> tuple[np.ndarray, np.ndarray]:
    """Tissue classes of every voxel.

    Args:
        q: template coordinates, used for the outer surface of the brain.
        q_inner: template coordinates after the tumours' mass effect, used for inner structures
            (ventricles, deep grey nuclei, fissure), which lesions push aside.

    Returns:
        ``(tissue, depth)``: ``(X, Y, Z)`` uint8 tissue codes (:data:`CSF`, :data:`GM`, ...; 0 outside
        the skull-stripped brain) and float32 depth in mm below the brain surface (negative outside).
    """
    depth = brain_depth(q) + params.csf_rim
    surface_depth = depth - params.csf_rim
    in_sulcus, to_sulcus = _sulci(rng, grid, surface_depth, params.sulcus_half_width)
    to_csf = np.minimum(surface_depth, to_sulcus)

    # The interhemispheric fissure: a midline slab of the template frame.
    fissure_width = 1.0 + params.sulcus_half_width
    box = world_box(grid, params, (-8.0, -100.0, -80.0), (8.0, 100.0, 80.0), params.warp_mm + 15.0)
    to_fissure = _fissure_distance(tuple(c[box] for c in q_inner), fissure_width)
    np.minimum(to_csf[box], to_fissure, out=to_csf[box])
    in_fissure = np.zeros(grid.shape, dtype=bool)
    in_fissure[box] = to_fissure <= 0

    tissue = np.full(grid.shape, WM, dtype=np.uint8)
    tissue[to_csf < params.cortex_thickness] = GM
    tissue[(surface_depth <= 0) | in_sulcus | in_fissure] = CSF
    tissue[(smooth_field(rng, grid, cell_mm=4.0) > 2.0) & in_sulcus] = VESSEL

    box = world_box(grid, params, *_INNER_BOX, margin=params.warp_mm + 15.0)
    inner = tuple(c[box] for c in q_inner)
    view = tissue[box]
    view[deep_grey_radius(inner) < 1] = DEEP_GM
    view[ventricle_radius(inner, params.ventricle_size) < 1] = CSF
    view[_choroid_plexus_radius(inner, params.ventricle_size) < 1] = VESSEL
    tissue[depth <= 0] = BACKGROUND
    return tissue, depth


def _sulci(
    rng: np.random.Generator, grid: WorldGrid, surface_depth: np.ndarray, half_width: float
) -> tuple[np.ndarray, np.ndarray]:
    """Sulci: sheets along the zero set of a random field, reaching 6-25 mm below the surface.

    Returns:
        ``(in_sulcus, to_sulcus)``: bool mask of sulcal CSF and the distance (mm) to it.
    """
    field, gradient = smooth_field_with_gradient(rng, grid, cell_mm=7.0)
    sulcal_depth = smooth_field(rng, grid, cell_mm=30.0)
    sulcal_depth *= 5.0
    sulcal_depth += 15.0
    np.clip(sulcal_depth, 6.0, 25.0, out=sulcal_depth)
    np.maximum(gradient, np.float32(0.4 * float(np.median(gradient[::4, ::4, ::4]))), out=gradient)
    to_sheet = np.abs(field) / gradient
    below = np.maximum(surface_depth - sulcal_depth, 0.0)
    in_sulcus = (to_sheet < half_width) & (below <= 0)
    to_sheet -= half_width
    np.maximum(to_sheet, 0.0, out=to_sheet)
    return in_sulcus, np.sqrt(to_sheet * to_sheet + below * below)
