"""Synthetic abdominal CT with six labelled organs, written in the Medical Segmentation Decathlon layout.

Each case is a body cross-section (skin line, subcutaneous fat, muscle wall) around an abdominal cavity
of visceral fat, bowel and some gas, with lung bases above the diaphragm, a lumbar spine (vertebral
bodies with cortex and discs, canal, posterior elements), paraspinal and psoas muscles, the inferior
vena cava and the gallbladder (all unlabelled), and six labelled organs (:data:`LABELS`):

====  ==============  ======================================================================
 1    liver           patient's right, upper abdomen, large (about 1-2 L)
 2    spleen          patient's left, posterior-lateral
 3    kidney_right    patient's right, posterior, lower than the left; cortex and medulla
 4    kidney_left     patient's left, posterior
 5    aorta           tube anterior to the spine, just left of the midline
 6    pancreas        tapered curved tube from the head (right, by the IVC) to the tail (left)
====  ==============  ======================================================================

**Coordinates.** Anatomy is defined in world coordinates, NIfTI RAS+ in mm: ``+x`` points to the
patient's Right, ``+y`` Anterior, ``+z`` Superior. So the liver (patient's right) has *larger* world x
than the spleen; in DICOM/ITK LPS coordinates it is the other way round. Because anatomy lives in world
mm, the voxel grid can be stored in any orientation and the organs stay where they belong: about 70 % of
cases use the usual CT storage, affine ``diag(-sx, -sy, sz)`` (ITK identity direction: voxel axes run
towards patient Left, Posterior, Superior), and about 30 % another one (:data:`ORIENTATIONS`): RAS
voxel order, slices stored head to feet, in-plane axes swapped, or an oblique grid tilted 5-15 degrees.

**Grid.** Per case, the in-plane field of view is 320-350 mm and the scan covers 190-220 mm along z.
The default grid is 128 x 128 in-plane (2.5-2.7 mm voxels: coarser than clinical 0.8 mm, so that a demo
trains on a CPU in minutes) with slices 3.2-5.0 mm thick, giving 40-67 slices. An explicit ``shape``
keeps the per-case field of view and sets the spacing to fit it.

**Intensities** are HU: air -1000, fat about -100, muscle about 50, bone 300-750; organs follow a
per-case contrast phase (:data:`PHASES`: native or portal venous), plus smooth texture, a slight blur
and correlated Gaussian noise (sigma 10-20 HU). Images are int16, label maps uint8 with mutually
exclusive values.

A case depends only on ``(seed, index)``.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from medseg import __version__
from medseg.data.dataset_json import read_dataset_json
from medseg.errors import MedsegInputError
from medseg.io import Geometry, atomic_output, write_nifti
from medseg.parallel import map_in_processes
from medseg.phantoms import refuse_existing
from medseg.phantoms._ct_shapes import SmoothNoise, bezier, ellipsoid_level, rotation_matrix, tube_distance

Shape = tuple[int, int, int]

LABELS: dict[int, str] = {
    0: "background",
    1: "liver",
    2: "spleen",
    3: "kidney_right",
    4: "kidney_left",
    5: "aorta",
    6: "pancreas",
}
LIVER, SPLEEN, KIDNEY_RIGHT, KIDNEY_LEFT, AORTA, PANCREAS = 1, 2, 3, 4, 5, 6

DATASET_NAME = "ct_organ_phantom"

# Direction cosines (RAS, one column per voxel axis) of the storage orientations; "oblique" is "lps"
# rotated per case.
ORIENTATIONS: dict[str, np.ndarray] = {
    "lps": np.diag([-1.0, -1.0, 1.0]),
    "ras": np.eye(3),
    "head_first": np.diag([-1.0, -1.0, -1.0]),
    "swapped": np.array([[0.0, -1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]),
    "oblique": np.diag([-1.0, -1.0, 1.0]),
}
_NON_DEFAULT = ("ras", "head_first", "swapped", "oblique")
NON_DEFAULT_FRACTION = 0.3

_DEFAULT_IN_PLANE = 128
_SLICE_MM = (3.2, 5.0)
_FOV_MM = (320.0, 350.0)
_COVERAGE_MM = (190.0, 220.0)

# Mean HU of each tissue per contrast phase.
PHASES: dict[str, dict[str, float]] = {
    "native": {
        "fat": -95, "muscle": 50, "bowel": 25, "lung": -860, "mediastinum": 38, "fluid": 8, "disc": 85,
        "cancellous": 330, "cortical": 720, "liver": 58, "spleen": 47, "kidney_cortex": 36,
        "kidney_medulla": 30, "aorta": 42, "ivc": 40, "pancreas": 42,
    },
    "portal": {
        "fat": -95, "muscle": 58, "bowel": 55, "lung": -860, "mediastinum": 60, "fluid": 8, "disc": 85,
        "cancellous": 330, "cortical": 720, "liver": 108, "spleen": 118, "kidney_cortex": 175,
        "kidney_medulla": 125, "aorta": 165, "ivc": 140, "pancreas": 98,
    },
}  # fmt: skip
_PORTAL_FRACTION = 0.65


@dataclass
class CtPhantom:
    """One generated case in memory.

    Attributes:
        case_id: e.g. ``"ct_003"``.
        image: ``(X, Y, Z)`` int16 HU, in stored voxel order.
        label: ``(X, Y, Z)`` uint8, values of :data:`LABELS`.
        geometry: the grid; its affine maps voxel indices to RAS mm.
        orientation: key of :data:`ORIENTATIONS`.
        phase: key of :data:`PHASES`.
    """

    case_id: str
    image: np.ndarray
    label: np.ndarray
    geometry: Geometry
    orientation: str
    phase: str


def case_id(index: int) -> str:
    """File stem of the ``index``-th case: ``ct_000``, ``ct_001``, ..."""
    return f"ct_{index:03d}"


def ct_geometry(rng: np.random.Generator, shape: Shape | None = None) -> tuple[Geometry, str]:
    """Draw one case's grid: field of view, spacing, storage orientation and table offset.

    Args:
        rng: random source.
        shape: ``(X, Y, Z)`` voxels; ``None`` for 128 x 128 in-plane and 3.2-5.0 mm slices.

    Returns:
        ``(geometry, orientation)``; the affine maps voxel indices to RAS mm, with the body centre near
        world (0, 0, 0).
    """
    fov = rng.uniform(*_FOV_MM)
    coverage = rng.uniform(*_COVERAGE_MM)
    slice_mm = rng.uniform(*_SLICE_MM)  # drawn even when unused, so the case does not depend on `shape`
    if shape is None:
        shape = (_DEFAULT_IN_PLANE, _DEFAULT_IN_PLANE, round(coverage / slice_mm))
    shape = tuple(int(s) for s in shape)  # type: ignore[assignment]
    if len(shape) != 3 or min(shape) < 2:
        raise MedsegInputError(f"CT phantom shape must be three sizes >= 2, got {shape}")
    spacing = np.array([fov / shape[0], fov / shape[1], coverage / shape[2]])

    orientation = "lps"
    if rng.random() < NON_DEFAULT_FRACTION:
        orientation = _NON_DEFAULT[int(rng.integers(len(_NON_DEFAULT)))]
    direction = ORIENTATIONS[orientation]
    tilt = rotation_matrix(np.deg2rad(rng.uniform(5, 15)) * rng.choice([-1, 1]), 0.0, np.deg2rad(rng.uniform(-5, 5)))
    if orientation == "oblique":
        direction = tilt @ direction
    centre = np.array([rng.uniform(-10, 10), rng.uniform(-12, 8), rng.uniform(-8, 8)])  # grid centre, world mm

    affine = np.eye(4)
    affine[:3, :3] = direction @ np.diag(spacing)
    affine[:3, 3] = centre - affine[:3, :3] @ ((np.asarray(shape) - 1) / 2)
    return Geometry(shape=shape, affine=affine), orientation  # type: ignore[arg-type]


def world_points(geometry: Geometry) -> np.ndarray:
    """RAS mm of every voxel centre: ``(3, X, Y, Z)`` float32."""
    m, t = geometry.affine[:3, :3], geometry.affine[:3, 3]
    idx = [np.arange(n, dtype=np.float32) for n in geometry.shape]
    i, j, k = idx[0][:, None, None], idx[1][None, :, None], idx[2][None, None, :]
    return np.stack([(m[r, 0] * i + m[r, 1] * j + m[r, 2] * k + t[r]).astype(np.float32) for r in range(3)])


def _superellipse(x: np.ndarray, y: np.ndarray, a: np.ndarray | float, b: np.ndarray | float) -> np.ndarray:
    """Body-like cross-section level (< 1 inside): an ellipse in front, a flatter back (exponent 3)."""
    n = np.where(y < 0, 3.0, 2.0)
    return (np.abs(x / a) ** n + np.abs(y / b) ** n) ** (1 / n)


def render_ct_case(*, seed: int, index: int, shape: Shape | None = None) -> CtPhantom:
    """Generate one case in memory (see the module docstring for the model).

    Args:
        seed: dataset seed; index: case number. The case depends only on ``(seed, index)``.
        shape: ``(X, Y, Z)`` voxels, or ``None`` for the default grid.
    """
    rng = np.random.default_rng([int(seed), int(index)])
    geometry, orientation = ct_geometry(rng, shape)
    phase = "portal" if rng.random() < _PORTAL_FRACTION else "native"
    hu_of = {k: v + rng.normal(0, 4) for k, v in PHASES[phase].items()}

    pts = world_points(geometry)
    # Patient size and a smooth warp: template coordinates q of every voxel.
    size = np.array([rng.uniform(0.88, 1.12), 0.0, rng.uniform(0.92, 1.08)])
    size[1] = size[0] * rng.uniform(0.9, 1.1)
    warp_mm = rng.uniform(3.0, 7.0)
    warp = [SmoothNoise(rng, cell_mm=45.0) for _ in range(3)]
    q = np.stack([pts[a] / size[a] + warp_mm * warp[a](pts) for a in range(3)])
    x, y, z = q
    texture = SmoothNoise(rng, cell_mm=12.0)(q)
    lobulation = SmoothNoise(rng, cell_mm=20.0)(q)

    # Body wall: skin line, subcutaneous fat, muscle, cavity.
    a_mid = 150.0 * rng.uniform(0.93, 1.07)
    a_body = a_mid * (1 + 0.04 * z / 100)
    b_body = 108.0 * rng.uniform(0.92, 1.08)
    fat_mm, muscle_mm = rng.uniform(8, 30), rng.uniform(7, 13)
    # Organs keep their place relative to the abdominal cavity (semi-axes about 120 x 78 mm at z = 0).
    fit = np.array([(a_mid - fat_mm - muscle_mm) / 120.0, (b_body - fat_mm - muscle_mm) / 78.0, 1.0])
    wobble = 0.025 * SmoothNoise(rng, cell_mm=40.0)(q)
    body = _superellipse(x, y, a_body, b_body) + wobble < 1
    inner = _superellipse(x, y, a_body - fat_mm, b_body - fat_mm) + wobble < 1
    cavity = _superellipse(x, y, a_body - fat_mm - muscle_mm, b_body - fat_mm - muscle_mm) + wobble < 1

    hu = np.full(geometry.shape, -1000.0, dtype=np.float32)
    hu[body] = hu_of["fat"]
    hu[inner] = hu_of["muscle"]
    visceral = SmoothNoise(rng, cell_mm=18.0)(q)
    fat_share = rng.uniform(-0.3, 0.4)
    hu[cavity] = np.where(visceral[cavity] < fat_share, hu_of["fat"], hu_of["bowel"])
    gas = cavity & (SmoothNoise(rng, cell_mm=14.0)(q) > 1.3) & (y > -10)
    hu[gas] = -950.0

    # Lung bases above the diaphragm (lower at the back), mediastinum in front of the spine.
    dome = 92.0 - 30.0 * np.clip(-y / 80.0, 0, 1) + rng.uniform(-8, 8)
    chest = cavity & (z > dome)
    hu[chest] = hu_of["lung"]
    hu[chest & (np.abs(x + 10) < 45) & (y > -40)] = hu_of["mediastinum"]

    # Spine: vertebral body (cortex, cancellous bone, discs), canal, posterior elements, muscles.
    y_v = -36.0 * fit[1] + rng.uniform(-5, 5)
    vertebra = ellipsoid_level(q, (0, y_v, 0), (22, 17, 1e6))
    disc = ((z - rng.uniform(0, 32)) % 32.0) < 6.5
    canal = ellipsoid_level(q, (0, y_v - 28, 0), (9, 8, 1e6)) < 1
    arch = (ellipsoid_level(q, (0, y_v - 28, 0), (16, 14, 1e6)) < 1) & ~canal
    spinous = (np.abs(x) < 5) & (y < y_v - 38) & (y > y_v - 62) & body
    solid = (vertebra < 1.15) | arch | spinous | canal
    for cx in (-34.0, 34.0):
        paraspinal = (ellipsoid_level(q, (cx, y_v - 44, 0), (26, 22, 1e6)) < 1) & inner
        psoas_r = 1 + np.clip(-z / 120, 0, 0.8)
        psoas = (((x - cx * 0.95) / (12 * psoas_r)) ** 2 + ((y - y_v - 2) / (14 * psoas_r)) ** 2 < 1) & cavity
        hu[paraspinal | psoas] = hu_of["muscle"]
        solid |= paraspinal | psoas
    hu[vertebra < 1] = np.where(vertebra[vertebra < 1] > 0.82, hu_of["cortical"], hu_of["cancellous"])
    hu[(vertebra < 1) & disc] = hu_of["disc"]
    hu[(arch | spinous) & ~disc] = hu_of["cortical"] * 0.8
    hu[canal] = hu_of["fluid"]

    label = np.zeros(geometry.shape, dtype=np.uint8)

    def jitter(c: tuple[float, float, float], s: float = 8.0) -> np.ndarray:
        return np.asarray(c) * fit + rng.normal(0, s / 2, 3).clip(-s, s)

    def scaled(semi: tuple[float, float, float]) -> np.ndarray:
        return np.asarray(semi) * rng.uniform(0.88, 1.12, 3)

    def yaw(deg: float, spread: float = 10.0) -> np.ndarray:
        return rotation_matrix(0.0, 0.0, np.deg2rad(deg + rng.uniform(-spread, spread)))

    organ_room = _superellipse(x, y, a_body - fat_mm - muscle_mm, b_body - fat_mm - muscle_mm) + wobble < 0.97
    organ_room &= ~solid

    # Liver: right lobe plus a left lobe reaching across the midline in front; gallbladder below it.
    right_lobe = ellipsoid_level(q, jitter((60, 3, 42)), scaled((68, 72, 70)), yaw(0))
    left_lobe = ellipsoid_level(q, jitter((0, 38, 58)), scaled((55, 28, 34)), yaw(-20))
    liver = (np.minimum(right_lobe, left_lobe) + 0.06 * lobulation < 1) & organ_room
    label[liver] = LIVER
    hu[liver] = hu_of["liver"]
    gallbladder = ellipsoid_level(q, jitter((42, 38, 0)), scaled((14, 14, 28)), yaw(-30)) < 1
    gallbladder &= organ_room
    hu[gallbladder] = hu_of["fluid"]
    label[gallbladder] = 0

    # Spleen, left posterior-lateral, long axis along the ribs.
    spleen_level = ellipsoid_level(q, jitter((-88, -35, 45)), scaled((22, 48, 52)), yaw(35))
    spleen = (spleen_level + 0.05 * lobulation < 1) & organ_room
    label[spleen] = SPLEEN
    hu[spleen] = hu_of["spleen"]

    # Kidneys: upper poles medial and posterior, hilum facing anteromedially; renal sinus fat unlabelled.
    for value, side, zc in ((KIDNEY_RIGHT, 1.0, -18.0), (KIDNEY_LEFT, -1.0, -5.0)):
        centre = jitter((70 * side, -45, zc))
        tilt = rotation_matrix(0.0, np.deg2rad(-12 * side), np.deg2rad(30 * side + rng.uniform(-8, 8)))
        level = ellipsoid_level(q, centre, scaled((26, 22, 54)), tilt)
        kidney = (level + 0.03 * lobulation < 1) & organ_room
        sinus = ellipsoid_level(q, centre + np.array([-14 * side, 4, 0]), (11, 9, 24), tilt) < 1
        label[kidney & ~sinus] = value
        hu[kidney] = np.where(level[kidney] > 0.75, hu_of["kidney_cortex"], hu_of["kidney_medulla"])
        hu[kidney & sinus] = hu_of["fat"]
        label[kidney & sinus] = 0

    # Pancreas: head by the duodenum (right), neck in front of the aorta, tail at the splenic hilum (left).
    control = np.array([(30, 8, -20), (10, 32, -8), (-30, 22, 4), (-70, -18, 16)], dtype=float) * fit
    control += rng.normal(0, 3, control.shape).clip(-6, 6)
    dist, t = tube_distance(q, bezier(control))
    radius = (13.0 - 5.0 * t) * rng.uniform(0.85, 1.15) * (1 + 0.15 * lobulation)
    pancreas = (dist < radius) & organ_room
    label[pancreas] = PANCREAS
    hu[pancreas] = hu_of["pancreas"]

    # Aorta (labelled) and IVC (not) along z, in front of the spine; the IVC runs through the liver.
    aorta_r = rng.uniform(9.5, 13.0)
    aorta_x = -12.0 * fit[0] + 3.0 * np.sin(z / 80.0)
    aorta = ((x - aorta_x) ** 2 + (y - (y_v + 17 + aorta_r + 3)) ** 2 < aorta_r**2) & cavity
    ivc_r = rng.uniform(9.0, 13.0)
    ivc = ((x - 24 * fit[0]) ** 2 / ivc_r**2 + (y - (y_v + 17 + ivc_r + 2)) ** 2 / (0.8 * ivc_r) ** 2 < 1) & cavity
    hu[ivc] = hu_of["ivc"]
    label[ivc] = 0
    hu[aorta] = hu_of["aorta"]
    label[aorta] = AORTA

    # Texture, partial-volume blur and correlated noise.
    hu += np.where(label > 0, 5.0, 10.0) * texture * body
    spacing = np.asarray(geometry.spacing)
    hu = ndimage.gaussian_filter(hu, sigma=np.clip(0.9 / spacing, 0.25, 0.6))
    noise = ndimage.gaussian_filter(rng.standard_normal(geometry.shape).astype(np.float32), 0.6)
    hu += noise * (rng.uniform(10, 20) / max(float(noise.std()), 1e-6))
    image = np.clip(np.rint(hu), -1024, 3071).astype(np.int16)
    return CtPhantom(case_id(index), image, label, geometry, orientation, phase)


def _write_case(index: int, *, out: Path, seed: int, shape: Shape | None) -> tuple[Path, Path]:
    case = render_ct_case(seed=seed, index=index, shape=shape)
    image = write_nifti(case.image, case.geometry, out / "imagesTr" / f"{case.case_id}.nii.gz")
    label = write_nifti(case.label, case.geometry, out / "labelsTr" / f"{case.case_id}.nii.gz")
    return image, label


def dataset_json(case_ids: list[str]) -> dict:
    """The MSD ``dataset.json`` listing ``case_ids`` as training cases (paths ``./imagesTr/<id>.nii.gz``)."""
    return {
        "name": DATASET_NAME,
        "description": "Synthetic abdominal CT organ phantoms (no patient data), generated by medseg",
        "reference": "medseg.phantoms.ct",
        "release": __version__,
        "tensorImageSize": "3D",
        "modality": {"0": "CT"},
        "labels": {str(k): v for k, v in LABELS.items()},
        "numTraining": len(case_ids),
        "numTest": 0,
        "training": [{"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"} for c in case_ids],
        "test": [],
    }


def generate_ct_dataset(
    out: str | Path,
    *,
    cases: int,
    seed: int,
    workers: int | None = None,
    shape: Shape | None = None,
    start_index: int = 0,
    overwrite: bool = False,
) -> list[Path]:
    """Write ``cases`` CT phantoms in MSD layout: ``out/imagesTr``, ``out/labelsTr``, ``out/dataset.json``.

    Args:
        out: dataset folder (created).
        cases: number of cases, numbered ``start_index``, ``start_index + 1``, ... (``ct_000.nii.gz``...).
        seed: dataset seed; a case depends only on ``(seed, index)``, not on ``workers`` or ``cases``.
        workers: parallel processes (default: all cores); 1 runs in this process.
        shape: ``(X, Y, Z)`` voxels for every case; default 128 x 128 x (40-67) with per-case spacing.
        start_index: first case index. With ``start_index > 0`` the cases already listed in an existing
            ``dataset.json`` are kept, so a dataset can be grown in batches; with 0 it is rewritten.
        overwrite: replace images, label maps and a ``dataset.json`` (``start_index`` 0) that already
            exist (else they are an error).

    Returns:
        The written image paths, in case order.

    Raises:
        MedsegInputError: ``cases`` < 1, or a file to write exists and not ``overwrite``.
    """
    out = Path(out)
    if cases < 1:
        raise MedsegInputError(f"number of cases must be >= 1, got {cases}", path=out)
    indices = list(range(start_index, start_index + cases))
    targets = [out / folder / f"{case_id(i)}.nii.gz" for i in indices for folder in ("imagesTr", "labelsTr")]
    refuse_existing([*targets, *([out / "dataset.json"] if start_index == 0 else [])], overwrite=overwrite)
    out.mkdir(parents=True, exist_ok=True)
    make = functools.partial(_write_case, out=out, seed=int(seed), shape=tuple(shape) if shape is not None else None)
    written = map_in_processes(make, indices, workers=workers, what="CT phantoms")

    ids = [case_id(i) for i in indices]
    meta_path = out / "dataset.json"
    if start_index > 0 and meta_path.is_file():
        try:
            listed = read_dataset_json(meta_path, style="msd").cases("training")
            previous = [Path(e["image"]).name.removesuffix(".nii.gz") for e in listed]
        except (KeyError, TypeError) as exc:
            raise MedsegInputError(f"cannot extend existing dataset.json: {exc}", path=meta_path) from None
        ids = sorted(set(previous) | set(ids))
    with atomic_output(meta_path) as tmp:
        tmp.write_text(json.dumps(dataset_json(ids), indent=2) + "\n")
    return [image for image, _ in written]
