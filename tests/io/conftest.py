"""Fixtures for the I/O tests: the real data in tests/data and helpers that derive DICOM variants from it."""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

DATA = Path(__file__).resolve().parents[1] / "data"
DICOM_DIR = DATA / "dicom_mr_oblique"
T1_NIFTI = DATA / "itk_kmeans_t1" / "KmeansTest_T1UCharRaw.nii.gz"
KMEANS_NIFTI = DATA / "itk_kmeans_t1" / "KmeansTest_T1KmeansPrelimSegmentation.nii.gz"


def _dicom_files() -> list[Path]:
    return sorted(DICOM_DIR.glob("*.dcm"))


@functools.cache
def _dataset(path: Path) -> Any:
    """A parsed slice, cached: brain_001.dcm carries 2.5 MB of trailing zero padding that is slow to parse."""
    import pydicom

    ds = pydicom.dcmread(str(path))
    for tag in [t for t in ds.keys() if t.group == 0]:  # noqa: SIM118  (the padding parses as a command group)
        del ds[tag]
    return ds


def _copy_series(
    dst: Path,
    *,
    files: list[Path] | None = None,
    modify: Callable[[Any, int], None] | None = None,
    names: Callable[[int], str] | None = None,
) -> list[Path]:
    """Copy DICOM slices into ``dst``, optionally editing each dataset (``modify(ds, index)``) and renaming."""
    dst.mkdir(parents=True, exist_ok=True)
    out = []
    for index, src in enumerate(files if files is not None else _dicom_files()):
        ds = copy.deepcopy(_dataset(src))
        if modify is not None:
            modify(ds, index)
        target = dst / (names(index) if names is not None else src.name)
        ds.save_as(str(target))
        out.append(target)
    return out


def _new_series(uid_seed: str) -> Callable[[Any, int], None]:
    """A ``modify`` that moves slices into a new series (new Series and SOP Instance UIDs)."""
    from pydicom.uid import generate_uid

    series_uid = generate_uid(entropy_srcs=[uid_seed])

    def modify(ds: Any, index: int) -> None:
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = generate_uid(entropy_srcs=[uid_seed, str(index)])
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID

    return modify


@pytest.fixture(scope="session")
def dicom_dir() -> Path:
    """The real oblique MR series (20 slices)."""
    return DICOM_DIR


@pytest.fixture(scope="session")
def dicom_files() -> list[Path]:
    """The 20 slices of the real oblique MR series, in file-name order."""
    return _dicom_files()


@pytest.fixture(scope="session")
def t1_nifti() -> Path:
    """Real T1 NIfTI with a permuted, flipped direction (int16)."""
    return T1_NIFTI


@pytest.fixture(scope="session")
def kmeans_nifti() -> Path:
    """7-class k-means label map (uint8) on the T1's grid."""
    return KMEANS_NIFTI


@pytest.fixture(scope="session")
def copy_series() -> Callable[..., list[Path]]:
    """``copy_series(dst, *, files=None, modify=None, names=None)``: copy DICOM slices, editing/renaming them."""
    return _copy_series


@pytest.fixture(scope="session")
def new_series() -> Callable[[str], Callable[[Any, int], None]]:
    """``new_series(seed)``: a ``modify`` that moves slices into a new series (new Series/SOP Instance UIDs)."""
    return _new_series


@pytest.fixture(scope="session")
def sitk_series() -> Any:
    """The real series read by SimpleITK's ImageSeriesReader (the reference geometry)."""
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(DICOM_DIR)))
    sitk.ProcessObject.SetGlobalWarningDisplay(False)  # ITK warns about the 0.07 mm non-uniformity
    try:
        return reader.Execute()
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(True)


def _ct_slices(
    volume: Any,
    *,
    spacing: tuple[float, float, float] = (0.75, 0.6, 2.5),
    orientation: tuple[float, ...] = (0.8, 0.6, 0.0, -0.6, 0.8, 0.0),
    origin: tuple[float, float, float] = (-30.0, 12.5, 40.0),
    intercept: float = -1024.0,
    seed: str = "ct",
) -> list[Any]:
    """Classic single-frame CT datasets of ``volume`` ``(slices, rows, columns)`` (uint8 or uint16, stored
    as is), slice k at ``origin + k * spacing[2] * normal`` (LPS mm); ``spacing`` is (between rows,
    between columns, between slices) in mm; Explicit VR Little Endian, uncompressed."""
    import numpy as np
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    iop = np.array(orientation, dtype=float)
    normal = np.cross(iop[:3], iop[3:])
    study, series, frame = (generate_uid(entropy_srcs=[seed, part]) for part in ("study", "series", "frame"))
    out = []
    for k, plane in enumerate(volume):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[seed, str(k)])
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Phantom^CT", "ct-1", "19700101", "O"
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20240101"
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
        ds.AccessionNumber, ds.ReferringPhysicianName, ds.StudyID = "1", "", "1"
        ds.Modality, ds.Manufacturer, ds.SeriesNumber, ds.InstanceNumber = "CT", "medseg tests", 1, k + 1
        ds.SeriesDescription = "synthetic CT"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.PositionReferenceIndicator, ds.KVP, ds.AcquisitionNumber = "", 120, 1
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in iop]
        ds.ImagePositionPatient = [f"{v:.4f}" for v in np.array(origin) + k * spacing[2] * normal]
        ds.PixelSpacing = [spacing[0], spacing[1]]
        ds.SliceThickness = spacing[2]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = plane.shape
        bits = plane.dtype.itemsize * 8
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, min(bits, 12), min(bits, 12) - 1, 0
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = intercept, 1, "HU"
        ds.PixelData = np.ascontiguousarray(plane).tobytes()
        out.append(ds)
    return out


@pytest.fixture(scope="session")
def ct_slices() -> Callable[..., list[Any]]:
    """``ct_slices(volume (slices, rows, columns), *, spacing, orientation, origin, intercept, seed)``:
    classic single-frame CT datasets (see :func:`_ct_slices`)."""
    return _ct_slices


@pytest.fixture(scope="session")
def oblique_datasets() -> list[Any]:
    """The 20 parsed slices of the real oblique MR series, in file-name order (shared: do not modify)."""
    return [_dataset(p) for p in _dicom_files()]
