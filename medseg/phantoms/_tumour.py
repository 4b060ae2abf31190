"""Glioma-like lesions: a necrotic core inside an enhancing rim inside an irregular oedema.

Each lesion is a randomly oriented ellipsoid in the brain's template frame (mm) whose surface is
roughened by smooth random fields, so no lesion is a sphere. The enhancing rim is the outer
``et_thickness`` mm of the core (thickness itself varies along the rim); the oedema is a larger,
more irregular envelope that spreads through white matter and deep grey matter but spares CSF and
mostly spares the cortex, as vasogenic oedema does. A post-treatment case (BraTS 2024 GLI) also has a
resection cavity (:func:`resection_cavity`): a fluid-filled hole where part of the largest lesion's core was
removed, with residual tumour and oedema around it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from scipy import ndimage

from medseg.phantoms._anatomy import DEEP_GM, GM, SEMI_AXES, WM, BrainParams, _rotation, ventricle_radius, world_box
from medseg.phantoms._fields import WorldGrid, smooth_field

# Internal label codes; the writer maps ET to the release's value (4 in 2021, 3 since 2023). RC, the resection
# cavity, is BraTS 2024 GLI's value.
NCR, ED, ET, RC = 1, 2, 3, 4


@dataclass(frozen=True)
class Lesion:
    """One lesion in template mm."""

    centre: np.ndarray  # (3,)
    rotation: np.ndarray  # 3x3
    core_axes: np.ndarray  # (3,) semi-axes of the tumour core (NCR + ET)
    oedema_margin: np.ndarray  # (3,) added to the core axes for the oedema envelope
    et_thickness: float  # mm; 0 for a non-enhancing lesion
    roughness: float  # amplitude of the core surface noise (fraction of the radius)
    mass_effect: float  # 0..0.6: how far surrounding anatomy is pushed away

    @property
    def core_radius(self) -> float:
        """Mean semi-axis of the core in mm."""
        return float(np.mean(self.core_axes))

    @property
    def outer_radius(self) -> float:
        """Mean semi-axis of the oedema envelope in mm."""
        return float(np.mean(self.core_axes + self.oedema_margin))


@dataclass(frozen=True)
class TumourParams:
    """The lesions of one case and its category flags (used for dataset variety)."""

    lesions: tuple[Lesion, ...]
    enhancing: bool
    small: bool


def sample_tumour_params(rng: np.random.Generator, ventricle_size: float) -> TumourParams:
    """Draw lesion count (two in ~20%), size class (small in ~20%) and grade (no ET in ~10%)."""
    enhancing = rng.random() >= 0.1
    small = rng.random() < 0.2
    count = 2 if rng.random() < 0.2 else 1
    lesions: list[Lesion] = []
    for _ in range(count):
        lesion = _sample_lesion(rng, enhancing=enhancing, small=small or bool(lesions))
        placed = _place(rng, lesion, lesions, ventricle_size)
        if placed is not None:
            lesions.append(placed)
    return TumourParams(lesions=tuple(lesions), enhancing=enhancing, small=small)


def _sample_lesion(rng: np.random.Generator, *, enhancing: bool, small: bool) -> Lesion:
    radius = rng.uniform(3.0, 8.0) if small else rng.uniform(10.0, 24.0)
    core_axes = radius * rng.uniform(0.7, 1.3, size=3)
    margin_scale = rng.uniform(2.0, 8.0) if small else rng.uniform(5.0, 20.0)
    et = float(np.clip(rng.uniform(2.0, 6.0), 2.0, 0.45 * radius + 1.0)) if enhancing else 0.0
    return Lesion(
        centre=np.zeros(3),
        rotation=_rotation(*rng.uniform(-np.pi, np.pi, size=3)),
        core_axes=core_axes,
        oedema_margin=margin_scale * rng.uniform(0.6, 1.4, size=3),
        et_thickness=et,
        roughness=rng.uniform(0.12, 0.3),
        mass_effect=0.0 if small else rng.uniform(0.15, 0.4),
    )


def _place(rng: np.random.Generator, lesion: Lesion, others: list[Lesion], ventricle_size: float) -> Lesion | None:
    """Pick a centre inside the cerebrum, mostly in white matter, away from ventricles and other lesions."""
    semi = np.array(SEMI_AXES)
    for _ in range(200):
        direction = rng.standard_normal(3)
        point = semi * 0.72 * rng.random() ** (1 / 3) * direction / np.linalg.norm(direction)
        if abs(point[0]) < 10 or point[2] < -25:
            continue
        if ventricle_radius(tuple(np.array([v]) for v in point), ventricle_size)[0] < 1.6:
            continue
        if any(np.linalg.norm(point - o.centre) < lesion.outer_radius + o.outer_radius + 10 for o in others):
            continue
        return replace(lesion, centre=point)
    return None


def mass_effect(q: tuple[np.ndarray, ...], tumour: TumourParams, grid: WorldGrid, brain: BrainParams) -> tuple:
    """Template coordinates at which to look up anatomy so that tissue appears pushed away from lesions.

    Returns:
        ``(qx, qy, qz)`` like ``q`` (new arrays; ``q`` is not modified).
    """
    out = [c.copy() for c in q]
    for lesion in tumour.lesions:
        if lesion.mass_effect <= 0:
            continue
        sigma = 1.2 * lesion.core_radius
        centre = lesion.centre.tolist()
        box = world_box(grid, brain, tuple(lesion.centre - 4 * sigma), tuple(lesion.centre + 4 * sigma), 10.0)
        rel = [out[i][box] - np.float32(centre[i]) for i in range(3)]
        shrink = 1.0 - lesion.mass_effect * np.exp(-(rel[0] ** 2 + rel[1] ** 2 + rel[2] ** 2) / (2 * sigma**2))
        for i in range(3):
            out[i][box] = centre[i] + rel[i] * shrink
    return tuple(out)


def _lesion_radius(q: tuple[np.ndarray, ...], lesion: Lesion, axes: np.ndarray) -> np.ndarray:
    """Normalised radius (1 on the surface) of points in the lesion's own rotated frame."""
    centre = lesion.centre.tolist()
    rel = [q[i] - np.float32(centre[i]) for i in range(3)]
    rot = (lesion.rotation.T / np.asarray(axes)[:, None]).tolist()
    return np.sqrt(sum((rot[k][0] * rel[0] + rot[k][1] * rel[1] + rot[k][2] * rel[2]) ** 2 for k in range(3)))


def tumour_labels(
    rng: np.random.Generator,
    grid: WorldGrid,
    q: tuple[np.ndarray, ...],
    tissue: np.ndarray,
    tumour: TumourParams,
    brain: BrainParams,
) -> tuple[np.ndarray, np.ndarray]:
    """Label map (internal codes :data:`NCR`, :data:`ED`, :data:`ET`) and oedema strength.

    Args:
        q: template coordinates of every voxel (before the mass effect).
        tissue: tissue codes, used to keep oedema out of CSF and mostly out of the cortex.
        brain: the brain's pose, to find where each lesion lies on the grid.

    Returns:
        ``(labels, strength)``: ``(X, Y, Z)`` uint8 labels and float32 oedema strength in [0, 1]
        (1 next to the core, fading towards the oedema border).
    """
    core_noise = smooth_field(rng, grid, cell_mm=6.0)
    rim_noise = smooth_field(rng, grid, cell_mm=5.0)
    oedema_noise = smooth_field(rng, grid, cell_mm=11.0)
    labels = np.zeros(grid.shape, dtype=np.uint8)
    strength = np.zeros(grid.shape, dtype=np.float32)
    for lesion in tumour.lesions:
        reach = float(np.max(lesion.core_axes + lesion.oedema_margin)) * 1.5 + 5.0
        lo, hi = tuple(lesion.centre - reach), tuple(lesion.centre + reach)
        box = world_box(grid, brain, lo, hi, margin=brain.warp_mm + 2.0)
        noise = (core_noise[box], rim_noise[box], oedema_noise[box])
        _draw_lesion(lesion, tuple(c[box] for c in q), tissue[box], noise, labels[box], strength[box])
    return labels, strength


def _draw_lesion(
    lesion: Lesion,
    q: tuple[np.ndarray, ...],
    tissue: np.ndarray,
    noise: tuple[np.ndarray, np.ndarray, np.ndarray],
    labels: np.ndarray,
    strength: np.ndarray,
) -> None:
    """Paint one lesion into ``labels`` and ``strength`` (views of the lesion's box), in place."""
    core_noise, rim_noise, oedema_noise = noise
    rho_core = _lesion_radius(q, lesion, lesion.core_axes) + lesion.roughness * core_noise
    rho_oedema = _lesion_radius(q, lesion, lesion.core_axes + lesion.oedema_margin) + 0.3 * oedema_noise
    spreads = (tissue == WM) | (tissue == DEEP_GM) | ((tissue == GM) & (rho_oedema < 0.75))
    core = (rho_core < 1) & (tissue > 0)
    oedema = _connected_to(((rho_oedema < 1) & spreads) | core, core) & ~core
    labels[oedema & (labels == 0)] = ED
    np.maximum(strength, np.where(oedema, np.sqrt(np.clip(1.0 - rho_oedema, 0, 1)), 0), out=strength)
    if lesion.et_thickness > 0:
        depth = (1.0 - rho_core) * lesion.core_radius
        thickness = lesion.et_thickness * np.clip(1.0 + 0.35 * rim_noise, 0.5, 1.6)
        labels[core] = ET
        labels[core & (depth > thickness)] = NCR
    else:
        labels[core] = NCR


def _connected_to(mask: np.ndarray, seed: np.ndarray) -> np.ndarray:
    """The parts of ``mask`` connected to ``seed``: oedema islands cut off by cortex or CSF are dropped."""
    components, _ = ndimage.label(mask)
    keep = np.unique(components[seed & mask])
    return np.isin(components, keep[keep > 0])


def resection_cavity(
    rng: np.random.Generator,
    grid: WorldGrid,
    q: tuple[np.ndarray, ...],
    tissue: np.ndarray,
    tumour: TumourParams,
    brain: BrainParams,
) -> np.ndarray:
    """Boolean ``(X, Y, Z)`` mask of a resection cavity in the brain: an ellipsoid of 0.55-0.8 times the first
    lesion's core semi-axes (at least 4 mm), centred half a core radius from the core's centre in a random
    direction, so that it takes part of the core and leaves tumour on one side of it.

    Args:
        q: template coordinates of every voxel (before the mass effect), as for :func:`tumour_labels`.
        tissue: tissue codes; the cavity stays inside the brain (``tissue > 0``).
    """
    cavity = np.zeros(grid.shape, dtype=bool)
    if not tumour.lesions:
        return cavity
    lesion = tumour.lesions[0]
    direction = rng.standard_normal(3)
    centre = lesion.centre + 0.5 * lesion.core_radius * direction / np.linalg.norm(direction)
    axes = np.maximum(lesion.core_axes * rng.uniform(0.55, 0.8, size=3), 4.0)
    reach = float(axes.max()) + 5.0
    box = world_box(grid, brain, tuple(centre - reach), tuple(centre + reach), margin=brain.warp_mm + 2.0)
    rho = _lesion_radius(tuple(c[box] for c in q), replace(lesion, centre=centre), axes)
    cavity[box] = (rho < 1) & (tissue[box] > 0)
    return cavity
