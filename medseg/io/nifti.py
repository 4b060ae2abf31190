"""NIfTI-1/2 reading and writing with nibabel."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from medseg.errors import MedsegInputError, file_not_found
from medseg.io.atomic import atomic_output, ensure_not_input
from medseg.io.image import Geometry, Image

_MAX_DEFLATE_RATIO = 1032


def check_nifti_header(img: nib.Nifti1Image, path: str | Path) -> None:
    """Refuse, from its header alone, a NIfTI image medseg would read wrongly or cannot read: complex
    voxels (casting would drop the imaginary part), RGB/RGBA voxels (not a scalar image), or a file
    too short for the voxels its header declares (reading would try to allocate them first); for a
    gzip file, too short even at deflate's best ratio.

    Raises:
        MedsegInputError: naming ``path`` and the data type or the sizes.
    """
    dtype = img.header.get_data_dtype()
    if dtype.fields is not None:
        raise MedsegInputError(f"RGB/RGBA NIfTI is not a scalar image (data type {dtype.names})", path=path)
    if dtype.kind == "c":
        raise MedsegInputError(f"complex-valued NIfTI ({dtype.name}) is not supported", path=path)
    voxels = int(np.prod(img.header.get_data_shape(), dtype=object))
    declared = int(img.header.get_data_offset()) + voxels * dtype.itemsize
    path = Path(path)
    name = path.name.lower()
    if not path.is_file() or not name.endswith((".nii", ".nii.gz")):
        return
    size = path.stat().st_size
    compressed = name.endswith(".gz")
    # deflate compresses at most about 1032:1, so a gzip file of ``size`` bytes holds at most this many
    holds = size * _MAX_DEFLATE_RATIO if compressed else size
    if declared > holds:
        gzip_note = f" (gzip: at most {holds} uncompressed)" if compressed else ""
        raise MedsegInputError(
            f"header declares {voxels} voxels of {dtype.itemsize} bytes but the file holds {size} bytes{gzip_note}",
            path=path,
        )


def _open_nifti(path: Path) -> nib.Nifti1Image:
    """The NIfTI image at ``path``, its header read and checked (:func:`check_nifti_header`), its voxels not yet.

    Raises:
        MedsegInputError: the file is missing, not NIfTI, unreadable, or refused by its header.
    """
    if not path.is_file():
        raise file_not_found(path)
    try:
        img = nib.load(str(path))
    except Exception as exc:  # nibabel raises many types for corrupt files (EOFError, zlib.error, ...)
        raise MedsegInputError(f"cannot read NIfTI image: {exc}", path=path) from None
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise MedsegInputError(f"not a NIfTI image ({type(img).__name__})", path=path)
    check_nifti_header(img, path)
    return img


def _nifti_geometry(img: nib.Nifti1Image, path: Path) -> Geometry:
    shape = img.shape
    if len(shape) not in (3, 4):
        raise MedsegInputError(f"expected a 3-D or 4-D image, got {len(shape)}-D shape {shape}", path=path)
    return Geometry(tuple(int(s) for s in shape[:3]), img.affine.copy())  # type: ignore[arg-type]


def read_nifti_geometry(path: str | Path) -> Geometry:
    """The grid :func:`read_nifti` gives the file at ``path``, from its header alone (voxels are not read).

    Raises:
        MedsegInputError: the file is missing, not NIfTI, unreadable, or not 3-D/4-D.
    """
    path = Path(path)
    return _nifti_geometry(_open_nifti(path), path)


def read_nifti(path: str | Path, *, dtype: type | None = np.float32) -> Image:
    """Read a 3-D (or 4-D, channels last) NIfTI file.

    Returns an :class:`Image` whose array is ``(X, Y, Z)``, or ``(C, X, Y, Z)`` for a 4-D file, in
    file voxel order, with the file's sform (or qform) affine in RAS mm. ``dtype=None`` keeps the
    stored type (use it for label maps).

    Raises:
        MedsegInputError: the file is missing, not NIfTI, truncated, or not 3-D/4-D.
    """
    path = Path(path)
    img = _open_nifti(path)
    geometry = _nifti_geometry(img, path)
    try:
        data = np.asanyarray(img.dataobj)
    except MemoryError:
        voxels = int(np.prod(img.header.get_data_shape(), dtype=object))
        raise MedsegInputError(f"header declares {voxels} voxels: more than this machine can hold", path=path) from None
    except Exception as exc:  # nibabel raises many types for corrupt files (EOFError, zlib.error, ...)
        raise MedsegInputError(f"cannot read NIfTI image: {exc}", path=path) from None
    if data.ndim == 4:
        data = np.moveaxis(data, -1, 0)
    if dtype is not None:
        data = data.astype(dtype, copy=False)
    header = img.header
    meta = {
        "qform_code": int(header["qform_code"]),
        "sform_code": int(header["sform_code"]),
        "qform": header.get_qform(),
        "sform": header.get_sform(),
    }
    return Image(array=data, geometry=geometry, path=path, meta=meta)


def write_nifti(
    array: np.ndarray,
    geometry: Geometry,
    path: str | Path,
    *,
    reference: Image | None = None,
) -> Path:
    """Write ``array`` (``(X, Y, Z)`` or ``(C, X, Y, Z)``) on ``geometry`` as NIfTI, atomically.

    The affine is stored in both sform and qform. When ``reference`` is a NIfTI :class:`Image` on the
    same grid, its own qform and sform (matrices and codes) are written instead: readers that choose
    between the two differently (nibabel takes a sheared sform, ITK then falls back to the qform)
    still place the output exactly where they place the input.

    Raises:
        MedsegInputError: ``path`` is the reference's own file.
    """
    if tuple(array.shape[-3:]) != tuple(geometry.shape):
        raise ValueError(f"array shape {array.shape} does not match grid {geometry.shape}")
    data = np.moveaxis(array, 0, -1) if array.ndim == 4 else array
    img = nib.Nifti1Image(np.ascontiguousarray(data), geometry.affine)
    meta = reference.meta if reference is not None else {}
    if "sform" in meta and reference is not None and reference.geometry.same_grid(geometry):
        img.set_sform(meta["sform"], code=meta["sform_code"])
        img.set_qform(meta["qform"], code=meta["qform_code"])
    else:
        img.set_sform(geometry.affine, code=meta.get("sform_code", 1) or 1)
        img.set_qform(geometry.affine, code=meta.get("qform_code", 1) or 1)
    if np.issubdtype(data.dtype, np.integer):
        img.header.set_data_dtype(data.dtype)
    path = Path(path)
    ensure_not_input(path, [reference.path] if reference is not None else [])
    with atomic_output(path) as tmp:
        nib.save(img, str(tmp))
    return path
