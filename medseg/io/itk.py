"""NRRD and MetaImage (MHA/MHD) reading through SimpleITK, with LPS geometry converted to RAS."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from medseg.errors import MedsegInputError, file_not_found
from medseg.io.image import Geometry, Image


def image_from_sitk(sitk_image: Any, *, path: Path | None = None) -> Image:
    """Convert a 3-D SimpleITK image (LPS) to an :class:`Image` (RAS affine).

    SimpleITK's array is ``(Z, Y, X)`` (``(Z, Y, X, C)`` for vector pixels); it is transposed to
    ``(X, Y, Z)`` (``(C, X, Y, Z)``) so that axis ``n`` is voxel index ``n`` of the affine.

    Raises:
        MedsegInputError: the image is not 3-D.
    """
    import SimpleITK as sitk

    if sitk_image.GetDimension() != 3:
        raise MedsegInputError(f"expected a 3-D image, got {sitk_image.GetDimension()}-D", path=path)
    array = sitk.GetArrayFromImage(sitk_image)
    if sitk_image.GetNumberOfComponentsPerPixel() > 1:
        array = np.transpose(array, (3, 2, 1, 0))
    else:
        array = np.transpose(array, (2, 1, 0))
    geometry = Geometry.from_itk(
        shape=tuple(sitk_image.GetSize()),
        spacing=sitk_image.GetSpacing(),
        origin=sitk_image.GetOrigin(),
        direction=sitk_image.GetDirection(),
    )
    return Image(array=np.ascontiguousarray(array), geometry=geometry, path=path)


def sitk_from_image(array: np.ndarray, geometry: Geometry) -> Any:
    """Build a SimpleITK image (LPS spacing/origin/direction) from an ``(X, Y, Z)`` array on ``geometry``."""
    import SimpleITK as sitk

    if tuple(array.shape) != tuple(geometry.shape):
        raise ValueError(f"array shape {array.shape} does not match grid {geometry.shape}")
    out = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(array, (2, 1, 0))))
    out.SetSpacing([float(s) for s in geometry.spacing])
    out.SetOrigin([float(o) for o in geometry.origin])
    out.SetDirection([float(d) for d in geometry.direction.ravel()])
    return out


def read_itk(path: str | Path) -> Image:
    """Read a 3-D NRRD (``.nrrd``, ``.nhdr``) or MetaImage (``.mha``, ``.mhd``) file with SimpleITK.

    Returns:
        An :class:`Image` with array ``(X, Y, Z)`` (``(C, X, Y, Z)`` for vector pixels) in the stored
        data type and a RAS affine converted from the file's LPS spacing, origin and direction.

    Raises:
        MedsegInputError: the file is missing, unreadable, truncated, or not 3-D.
    """
    import SimpleITK as sitk

    path = Path(path)
    if not path.is_file():
        raise file_not_found(path)
    try:
        sitk_image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        reason = str(exc).strip().splitlines()
        detail = next((line for line in reversed(reason) if line.strip()), "unknown error")
        raise MedsegInputError(f"cannot read image: {detail.strip()}", path=path) from None
    return image_from_sitk(sitk_image, path=path)
