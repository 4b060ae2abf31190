"""BraTS-like synthetic brain MRI with gliomas, written in the exact layout of the BraTS releases.

Real BraTS data cannot be downloaded here, so every model in medseg is trained and tested on these
phantoms. Each case is a skull-stripped brain (white matter, cortical ribbon with sulci, deep grey
nuclei, ventricles, cerebellum) of random size and shape, with one or two irregular lesions made of
necrosis (NCR) inside an enhancing rim (ET) inside oedema (ED), imaged as T1, T1ce, T2 and FLAIR with
per-case contrast, bias field, blur and noise. Release ``"2024"`` cases are post-treatment: a fluid-filled
resection cavity (RC) takes part of the largest lesion. See :mod:`medseg.phantoms._anatomy`,
:mod:`medseg.phantoms._tumour` and :mod:`medseg.phantoms._mri` for the models.

Files follow the release (``medseg.labels.get_brats_release``): 2021 cases are
``BraTS2021_00000/BraTS2021_00000_{t1,t1ce,t2,flair,seg}.nii.gz`` with labels 0/1/2/4, 2023 cases
``BraTS-GLI-00000-000/BraTS-GLI-00000-000-{t1n,t1c,t2w,t2f,seg}.nii.gz`` with labels 0/1/2/3, 2024 cases
named as 2023's with BraTS 2024 GLI's labels 0/1 NETC/2 SNFH/3 ET/4 RC (``brats2024-gli``). Images
are int16, label maps uint8, all on one grid whose affine is ``diag(-s, -s, s)`` plus a translation
that puts the grid centre at world (0, 0, 0): voxel axes run right-to-left, anterior-to-posterior and
inferior-to-superior (LPS voxel order, as in BraTS), so reorienting to RAS is a real flip.

A case's content depends only on ``(seed, index)``, and anatomy is defined in world mm, so the same
case at another ``shape`` or ``spacing`` shows the same brain sampled on another grid.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from medseg.errors import MedsegInputError
from medseg.io import Geometry, write_nifti
from medseg.labels import BratsRelease, get_brats_release
from medseg.parallel import map_in_processes
from medseg.phantoms import _anatomy, _mri, _tumour, refuse_existing
from medseg.phantoms._fields import WorldGrid, block_mean, block_mode, smooth_field, supersampled

Shape = tuple[int, int, int]

# Independent random streams per component, so changing one model does not reshuffle the others.
_STREAM_BRAIN, _STREAM_ANATOMY, _STREAM_TUMOUR, _STREAM_LESION_SHAPE, _STREAM_TEXTURE, _STREAM_CAVITY = 0, 1, 2, 3, 4, 5
_STREAM_MODALITY = 10  # + channel index


@dataclass
class BratsPhantom:
    """One generated case in memory.

    Attributes:
        case_id: e.g. ``"BraTS2021_00003"``.
        images: release file suffix (``"t1"``, ``"t1ce"``, ... or ``"t1n"``, ``"t1c"``, ...) -> ``(X, Y, Z)``
            int16 image, in the release's channel order T1, T1ce, T2, FLAIR; 0 outside the brain.
        seg: ``(X, Y, Z)`` uint8 label map with the release's values (ET = 4 in 2021, 3 since 2023; RC = 4 in 2024).
        tissue: ``(X, Y, Z)`` uint8 tissue codes (:data:`medseg.phantoms._anatomy.TISSUE_NAMES`),
            the ground truth for contrast checks; not written to disk.
        geometry: the shared grid (affine in RAS mm).
        lesion_count: number of lesions placed.
        enhancing: False for a low-grade-like case without ET.
        small: True when the lesions were drawn from the small size class.
    """

    case_id: str
    images: dict[str, np.ndarray]
    seg: np.ndarray
    tissue: np.ndarray
    geometry: Geometry
    lesion_count: int
    enhancing: bool
    small: bool


def brats_geometry(shape: Shape, spacing: float) -> Geometry:
    """BraTS-style grid: affine ``diag(-s, -s, s)`` with the grid centre at world (0, 0, 0) mm."""
    affine = np.diag([-spacing, -spacing, spacing, 1.0])
    affine[:3, 3] = [spacing * (shape[0] - 1) / 2, spacing * (shape[1] - 1) / 2, -spacing * (shape[2] - 1) / 2]
    return Geometry(shape=tuple(int(s) for s in shape), affine=affine)  # type: ignore[arg-type]


def _world_grid(geometry: Geometry) -> WorldGrid:
    """World coordinates of the voxel centres along each axis of an axis-aligned grid."""
    a = geometry.affine
    x, y, z = (a[i, i] * np.arange(geometry.shape[i]) + a[i, 3] for i in range(3))
    return WorldGrid(x.astype(np.float32), y.astype(np.float32), z.astype(np.float32))


def _supersampling(spacing: float) -> int:
    """Sub-voxels per axis used to draw anatomy: 2 for coarse grids so thin sulci and rims get partial volume."""
    return 2 if spacing >= 1.75 else 1


def _drop_specks(labels: np.ndarray, *, min_mm3: float, spacing: float) -> np.ndarray:
    """Remove tumour components smaller than ``min_mm3`` (sampling specks, not lesions), as annotators do."""
    components, count = ndimage.label(labels > 0)
    sizes = np.bincount(components.ravel(), minlength=count + 1) * spacing**3
    small = sizes < min_mm3
    small[0] = False
    return np.where(small[components], 0, labels).astype(np.uint8)


def _value(release: BratsRelease, name: str) -> int | None:
    """The release's value of the label called ``name``, or ``None`` when its table has no such label."""
    return next((v for v, label in release.label_table.labels.items() if label == name), None)


def make_brats_phantom(
    index: int, *, seed: int, release: str = "2021", shape: Shape = (240, 240, 155), spacing: float = 1.0
) -> BratsPhantom:
    """Generate case ``index`` of the dataset drawn with ``seed``, in memory.

    Args:
        index: case number (part of the case id and of the random stream).
        seed: dataset seed; the content depends only on ``(seed, index)``.
        release: ``"2021"``, ``"2023"`` or ``"2024"`` (file suffixes, the ET label value, and for 2024 a
            resection cavity).
        shape: voxel grid ``(X, Y, Z)`` as stored in the file.
        spacing: isotropic voxel size in mm.
    """
    rel = get_brats_release(release)
    geometry = brats_geometry(shape, spacing)
    grid = _world_grid(geometry)
    factor = _supersampling(spacing)
    fine = supersampled(grid, factor)

    def stream(k: int) -> np.random.Generator:
        return np.random.default_rng([seed, index, k])

    brain = _anatomy.sample_brain_params(stream(_STREAM_BRAIN))
    tumour = _tumour.sample_tumour_params(stream(_STREAM_TUMOUR), brain.ventricle_size)
    anatomy_rng = stream(_STREAM_ANATOMY)
    q = _anatomy.template_coordinates(anatomy_rng, fine, brain)
    tissue, _ = _anatomy.tissue_map(anatomy_rng, fine, q, _tumour.mass_effect(q, tumour, fine, brain), brain)
    labels, strength = _tumour.tumour_labels(stream(_STREAM_LESION_SHAPE), fine, q, tissue, tumour, brain)
    if _value(rel, "RC") is not None:
        labels[_tumour.resection_cavity(stream(_STREAM_CAVITY), fine, q, tissue, tumour, brain)] = _tumour.RC
    del q
    texture_rng = stream(_STREAM_TEXTURE)
    tissue_texture = smooth_field(texture_rng, fine, cell_mm=3.0)
    tumour_texture = smooth_field(texture_rng, fine, cell_mm=4.0)

    tissue_out = block_mode(tissue, factor)
    mask = tissue_out > 0
    images = {}
    for channel, (suffix, modality) in enumerate(zip(rel.modalities, _mri.MODALITIES, strict=True)):
        rng = stream(_STREAM_MODALITY + channel)
        signal = _mri.mean_signal(
            rng,
            modality,
            tissue=tissue,
            labels=labels,
            oedema_strength=strength,
            tissue_texture=tissue_texture,
            tumour_texture=tumour_texture,
            enhancing=tumour.enhancing,
        )
        images[suffix] = _mri.acquire(rng, grid, block_mean(signal, factor), mask, spacing)
    labels = _drop_specks(np.where(mask, block_mode(labels, factor), 0), min_mm3=30.0, spacing=spacing)
    seg = np.where(labels == _tumour.ET, _value(rel, "ET"), labels).astype(np.uint8)
    return BratsPhantom(
        case_id=rel.case_id(index),
        images=images,
        seg=seg,
        tissue=tissue_out,
        geometry=geometry,
        lesion_count=len(tumour.lesions),
        enhancing=tumour.enhancing,
        small=tumour.small,
    )


def generate_brats_case(index: int, out: Path, *, seed: int, release: str, shape: Shape, spacing: float) -> Path:
    """Generate one case and write it as ``out/<case_id>/<case_id>{sep}{suffix}.nii.gz``.

    Args:
        index: case number; see :func:`make_brats_phantom` for the other arguments.
        out: dataset root folder (created if needed).

    Returns:
        The case folder.
    """
    rel = get_brats_release(release)
    phantom = make_brats_phantom(index, seed=seed, release=release, shape=shape, spacing=spacing)
    case_dir = Path(out) / phantom.case_id
    case_dir.mkdir(parents=True, exist_ok=True)
    for suffix, image in phantom.images.items():
        write_nifti(image, phantom.geometry, case_dir / rel.file_name(phantom.case_id, suffix))
    write_nifti(phantom.seg, phantom.geometry, case_dir / rel.file_name(phantom.case_id, "seg"))
    return case_dir


def _check_arguments(out: Path, cases: int, release: str, shape: tuple, spacing: float) -> None:
    try:
        get_brats_release(release)
    except KeyError as exc:
        raise MedsegInputError(str(exc.args[0]), path=out) from None
    if cases < 1:
        raise MedsegInputError(f"number of cases must be >= 1, got {cases}", path=out)
    if len(shape) != 3 or any(int(s) < 8 for s in shape):
        raise MedsegInputError(f"shape must be three sizes >= 8 voxels, got {tuple(shape)}", path=out)
    if not spacing > 0:
        raise MedsegInputError(f"spacing must be > 0 mm, got {spacing}", path=out)


def generate_brats_dataset(
    out: str | Path,
    *,
    cases: int,
    seed: int,
    release: str = "2021",
    shape: Shape = (240, 240, 155),
    spacing: float = 1.0,
    workers: int | None = None,
    start_index: int = 0,
    overwrite: bool = False,
) -> list[Path]:
    """Generate a BraTS-layout phantom dataset of ``cases`` cases under ``out``.

    Cases ``start_index .. start_index + cases - 1`` are generated in parallel processes; because each
    case depends only on ``(seed, index)``, the files are identical whatever ``workers`` is.

    Args:
        out: dataset root; one folder per case is created inside it.
        cases: number of cases.
        seed: dataset seed.
        release: ``"2021"`` (labels 0/1/2/4), ``"2023"`` (labels 0/1/2/3) or ``"2024"`` (labels 0-4, with a
            resection cavity) layout.
        shape: voxel grid ``(X, Y, Z)``; the real releases use ``(240, 240, 155)``.
        spacing: isotropic voxel size in mm (1.0 in the real releases).
        workers: processes to use (default: all cores); 1 runs in this process.
        start_index: index of the first case.
        overwrite: replace case folders that already exist (else they are an error).

    Returns:
        The case folders, sorted.

    Raises:
        MedsegInputError: an argument is invalid, or a case folder exists and not ``overwrite``.
    """
    out = Path(out)
    _check_arguments(out, cases, release, shape, spacing)
    shape = tuple(int(s) for s in shape)  # type: ignore[assignment]
    spacing = float(spacing)
    indices = list(range(start_index, start_index + cases))
    rel = get_brats_release(release)
    refuse_existing((out / rel.case_id(i) for i in indices), overwrite=overwrite)
    out.mkdir(parents=True, exist_ok=True)
    make = functools.partial(
        generate_brats_case, out=out, seed=seed, release=str(release), shape=shape, spacing=spacing
    )
    return sorted(map_in_processes(make, indices, workers=workers, what=f"BraTS {release} phantoms"))
