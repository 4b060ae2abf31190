"""NIfTI-1/2 reading and writing with nibabel."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from medseg.errors import MedsegInputError
from medseg.io.atomic import atomic_output, ensure_not_input
from medseg.io.image import Geometry, Image


def read_nifti(path: str | Path, *, dtype: type | None = np.float32) -> Image:
    """Read a 3-D (or 4-D, channels last) NIfTI file.

    Returns an :class:`Image` whose array is ``(X, Y, Z)``, or ``(C, X, Y, Z)`` for a 4-D file, in
    file voxel order, with the file's sform (or qform) affine in RAS mm. ``dtype=None`` keeps the
    stored type (use it for label maps).

    Raises:
        MedsegInputError: the file is missing, not NIfTI, truncated, or not 3-D/4-D.
    """
    path = Path(path)
    if not path.is_file():
        raise MedsegInputError("file not found", path=path)
    try:
        img = nib.load(str(path))
        if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
            raise MedsegInputError(f"not a NIfTI image ({type(img).__name__})", path=path)
        data = np.asanyarray(img.dataobj)
    except MedsegInputError:
        raise
    except Exception as exc:  # nibabel raises many types for corrupt files (EOFError, zlib.error, ...)
        raise MedsegInputError(f"cannot read NIfTI image: {exc}", path=path) from None
    if data.ndim == 4:
        data = np.moveaxis(data, -1, 0)
    elif data.ndim != 3:
        raise MedsegInputError(f"expected a 3-D or 4-D image, got {data.ndim}-D shape {data.shape}", path=path)
    if dtype is not None:
        data = data.astype(dtype, copy=False)
    header = img.header
    meta = {
        "qform_code": int(header["qform_code"]),
        "sform_code": int(header["sform_code"]),
        "qform": header.get_qform(),
        "sform": header.get_sform(),
    }
    return Image(array=data, geometry=Geometry(tuple(data.shape[-3:]), img.affine.copy()), path=path, meta=meta)


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
