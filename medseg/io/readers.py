"""One entry point for reading images: a small registry that picks a reader by file ending.

Every reader returns an :class:`~medseg.io.image.Image` whose array is ``(X, Y, Z)`` (or ``(C, X, Y, Z)``)
in voxel index order (i, j, k) and whose geometry affine maps (i, j, k) to RAS+ world mm. Readers import
their heavy libraries (SimpleITK, pydicom, pynrrd) only when they read.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

from medseg.errors import MedsegInputError, file_not_found
from medseg.io.image import Geometry, Image, require_invertible


class ImageReader(ABC):
    """Base of every reader: the file endings it handles and how to read one path.

    Attributes:
        name: registry key, lower_snake (``"nifti"``, ``"itk"``, ...).
        suffixes: lower-case file endings including the dot (``".nii.gz"``); empty for folder readers.
    """

    name: str = ""
    suffixes: tuple[str, ...] = ()

    def matches(self, path: Path) -> int:
        """How well this reader fits ``path``: the length of the matching ending, 0 when it does not fit."""
        lower = path.name.lower()
        return max((len(s) for s in self.suffixes if lower.endswith(s)), default=0)

    @abstractmethod
    def read(self, path: Path) -> Image:
        """Read ``path`` into an :class:`Image` with RAS geometry; raise :class:`MedsegInputError` if unreadable."""

    def read_geometry(self, path: Path) -> Geometry:
        """The grid of ``path`` as :meth:`read` gives it; a reader that can take it from the header alone
        overrides this, so that checking a dataset's grids does not read its voxels."""
        return self.read(path).geometry


class NiftiReader(ImageReader):
    """NIfTI-1/2 (``.nii``, ``.nii.gz``) through nibabel; keeps the stored data type."""

    name = "nifti"
    suffixes = (".nii", ".nii.gz")

    def read(self, path: Path) -> Image:
        from medseg.io.nifti import read_nifti

        return read_nifti(path, dtype=None)

    def read_geometry(self, path: Path) -> Geometry:
        from medseg.io.nifti import read_nifti_geometry

        return read_nifti_geometry(path)


class ItkReader(ImageReader):
    """NRRD and MetaImage (``.nrrd``, ``.nhdr``, ``.mha``, ``.mhd``) through SimpleITK."""

    name = "itk"
    suffixes = (".nrrd", ".nhdr", ".mha", ".mhd")

    def read(self, path: Path) -> Image:
        from medseg.io.itk import read_itk

        return read_itk(path)


class SegNrrdReader(ImageReader):
    """3D Slicer segmentation files (``.seg.nrrd``) through pynrrd: a label map plus its segment table."""

    name = "seg_nrrd"
    suffixes = (".seg.nrrd",)

    def read(self, path: Path) -> Image:
        from medseg.io.seg_nrrd import read_seg_nrrd

        return read_seg_nrrd(path)


class DicomSeriesReader(ImageReader):
    """A folder holding one DICOM image series (other series in it must be chosen with ``read_dicom_series``)."""

    name = "dicom"

    def matches(self, path: Path) -> int:
        return 1 if path.is_dir() else 0

    def read(self, path: Path) -> Image:
        from medseg.io.dicom import read_dicom_series

        return read_dicom_series(path)


class DicomFileReader(ImageReader):
    """One file of a DICOM series, known by its content (the ``DICM`` preamble) whatever its name (``.dcm``,
    GE ``*.MRDC.N``, Siemens ``*.IMA``, none): reads the whole series it belongs to from the same folder; or a
    DICOM Segmentation file, read as a label map."""

    name = "dicom_file"
    suffixes = (".dcm",)

    def matches(self, path: Path) -> int:
        """The ``.dcm`` ending's length; 1 for another file that starts like DICOM (132 bytes read)."""
        from medseg.io.dicom import is_dicom_file

        return super().matches(path) or (1 if path.is_file() and is_dicom_file(path) else 0)

    def read(self, path: Path) -> Image:
        """The series ``path`` belongs to; a DICOM-SEG file alone, as a label map
        (:func:`~medseg.io.dicom_seg.read_dicom_seg`)."""
        from medseg.io.dicom import read_dicom_series
        from medseg.io.dicom_seg import is_dicom_seg, read_dicom_seg

        if is_dicom_seg(path):
            return read_dicom_seg(path)
        return read_dicom_series(path.parent, series_uid=dicom_series_uid(path), recursive=False)


def dicom_series_uid(path: Path) -> str:
    """The SeriesInstanceUID of the DICOM file ``path`` (its header alone is read).

    Raises:
        MedsegInputError: not a readable DICOM file, or one without a SeriesInstanceUID (naming it).
    """
    import pydicom

    try:
        header = pydicom.dcmread(str(path), stop_before_pixels=True, specific_tags=["SeriesInstanceUID"])
        return str(header.SeriesInstanceUID)
    except Exception as exc:
        raise MedsegInputError(f"cannot read DICOM file: {exc}", path=path) from None


READERS: dict[str, ImageReader] = {
    r.name: r for r in (NiftiReader(), ItkReader(), SegNrrdReader(), DicomSeriesReader(), DicomFileReader())
}


def register_reader(reader: ImageReader) -> None:
    """Add (or replace, by name) a reader in the registry."""
    READERS[reader.name] = reader


def reader_for(path: str | Path) -> ImageReader:
    """The registered reader with the longest matching file ending (a folder goes to the DICOM series reader,
    another file that starts like DICOM to the DICOM file reader).

    Raises:
        MedsegInputError: no reader handles this file ending.
    """
    path = Path(path)
    score, reader = max(((r.matches(path), r) for r in READERS.values()), key=lambda t: t[0])
    if score == 0:
        endings = sorted({s for r in READERS.values() for s in r.suffixes})
        raise MedsegInputError(
            f"unknown image format; expected a DICOM folder or one of {', '.join(endings)}", path=path
        )
    return reader


def _existing(path: str | Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise file_not_found(path)
    return path


def read_image(path: str | Path) -> Image:
    """Read any supported image: NIfTI, NRRD, ``.seg.nrrd``, MHA/MHD, a folder with one DICOM series, or one
    file of a DICOM series (its series).

    Returns:
        An :class:`Image` with array ``(X, Y, Z)`` (``(C, X, Y, Z)`` for multi-channel files) in voxel
        index order, stored data type kept (DICOM: after RescaleSlope/Intercept), and a geometry whose
        affine maps voxel indices to RAS+ world mm.

    Raises:
        MedsegInputError: the path is missing, of unknown type, corrupt, not a 3-D image, or its
            affine is degenerate.
    """
    path = _existing(path)
    image = reader_for(path).read(path)
    require_invertible(image.geometry.affine, path=path)
    return image


def read_geometry(path: str | Path) -> Geometry:
    """The grid :func:`read_image` gives ``path``, read from the header alone where the format allows (NIfTI).

    Raises:
        MedsegInputError: as :func:`read_image`.
    """
    path = _existing(path)
    geometry = reader_for(path).read_geometry(path)
    require_invertible(geometry.affine, path=path)
    return geometry
