"""DICOM image series: find the series in a folder and read one into a volume with its geometry.

Slices are grouped by SeriesInstanceUID and sorted by their position along the slice normal
(``ImagePositionPatient · (row cosines × column cosines)``), never by file name or InstanceNumber.

Slice-spacing tolerance (``SLICE_TOLERANCE``): the slice spacing is the distance between the first and
last slice along the normal divided by ``n - 1``. A series is read only when every slice lies within
10 % of that spacing of its place on this regular grid along the normal, every step is within 10 % of
the median step, and no slice drifts in-plane by more than half a pixel (a sheared, gantry-tilted
stack). Otherwise :class:`MedsegInputError` names the folder and the series: a missing slice, uneven
spacing or shear cannot be stored in an affine without moving voxels. Rounding noise in real scanner
positions (≈0.07 mm on 7 mm steps in the project's fixture) is far inside this tolerance.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medseg.errors import MedsegInputError
from medseg.io.image import Geometry, Image

SLICE_TOLERANCE = 0.10
"""Largest allowed deviation of a slice from the regular grid, as a fraction of the slice spacing."""

IN_PLANE_TOLERANCE = 0.5
"""Largest allowed in-plane drift of a slice relative to the first, as a fraction of the pixel spacing."""

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


@dataclass(frozen=True)
class SeriesInfo:
    """One readable DICOM image series found in a folder.

    Attributes:
        series_uid: SeriesInstanceUID.
        description: SeriesDescription ("" when absent).
        modality: Modality (``"CT"``, ``"MR"``, ...).
        num_slices: number of single-frame images in the series.
        files: the image files, in no particular order (the reader sorts them by position).
    """

    series_uid: str
    description: str
    modality: str
    num_slices: int
    files: tuple[Path, ...]


def _read_header(path: Path) -> Any | None:
    """Header of a DICOM image file (no pixel data), or None for non-DICOM and non-image files."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=True)
    except InvalidDicomError:
        return None
    except Exception as exc:  # truncated or damaged headers raise many types
        raise MedsegInputError(f"cannot read DICOM file: {exc}", path=path) from None
    if "SeriesInstanceUID" not in ds or "ImagePositionPatient" not in ds or "ImageOrientationPatient" not in ds:
        return None  # DICOMDIR, SR, RT structures, DICOM-SEG, presentation states, ...
    return ds


def _skip_reason(headers: list[Any]) -> str | None:
    """Why a series is not a readable volume, or None when it is."""
    first = headers[0]
    image_type = [str(v).upper() for v in first.get("ImageType", [])]
    if "LOCALIZER" in image_type:
        return "localizer series"
    if int(first.get("NumberOfFrames", 1) or 1) > 1:
        return "multi-frame (enhanced) DICOM is not supported"
    if len(headers) < 2:
        return "single-slice series"
    return None


def _scan(folder: Path, recursive: bool) -> tuple[list[SeriesInfo], dict[str, list[Any]]]:
    """Group the image files under ``folder`` by series; warn about skipped series."""
    if not folder.is_dir():
        raise MedsegInputError("DICOM folder not found", path=folder)
    groups: dict[str, list[Any]] = {}
    for path in sorted(p for p in (folder.rglob("*") if recursive else folder.iterdir()) if p.is_file()):
        ds = _read_header(path)
        if ds is not None:
            ds.filename = str(path)
            groups.setdefault(str(ds.SeriesInstanceUID), []).append(ds)
    infos: list[SeriesInfo] = []
    kept: dict[str, list[Any]] = {}
    for uid, headers in groups.items():
        first = headers[0]
        reason = _skip_reason(headers)
        if reason is not None:
            message = f"{folder}: skipping DICOM series {uid} ({first.get('SeriesDescription', '')!s}): {reason}"
            warnings.warn(message, stacklevel=3)
            continue
        kept[uid] = headers
        infos.append(
            SeriesInfo(
                series_uid=uid,
                description=str(first.get("SeriesDescription", "")),
                modality=str(first.get("Modality", "")),
                num_slices=len(headers),
                files=tuple(Path(h.filename) for h in headers),
            )
        )
    return infos, kept


def list_dicom_series(folder: str | Path, *, recursive: bool = True) -> list[SeriesInfo]:
    """The readable image series in ``folder`` (and its subfolders unless ``recursive=False``), largest first.

    Localizers, single-slice and multi-frame series are skipped with a warning; non-DICOM files and
    non-image DICOM objects are ignored.

    Raises:
        MedsegInputError: the folder is missing, or a DICOM file in it is damaged.
    """
    infos, _ = _scan(Path(folder), recursive)
    return sorted(infos, key=lambda s: (-s.num_slices, s.series_uid))


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def _slice_grid(headers: list[Any], folder: Path, uid: str) -> tuple[list[Any], np.ndarray]:
    """Sort the slices along the normal, check they form a regular grid, and return the RAS affine."""

    def fail(reason: str) -> MedsegInputError:
        return MedsegInputError(f"DICOM series {uid}: {reason}", path=folder)

    iops = np.array([[float(v) for v in h.ImageOrientationPatient] for h in headers])
    if np.abs(iops - iops[0]).max() > 1e-4:
        raise fail("slices have different ImageOrientationPatient")
    sizes = {(int(h.Rows), int(h.Columns)) for h in headers}
    if len(sizes) > 1:
        raise fail(f"slices have different sizes {sorted(sizes)}")
    if "PixelSpacing" not in headers[0]:
        raise fail("PixelSpacing is missing")
    spacings = np.array([[float(v) for v in h.PixelSpacing] for h in headers])
    if np.abs(spacings - spacings[0]).max() > 1e-4:
        raise fail("slices have different PixelSpacing")

    row_cos = _unit(iops[0, :3])  # direction of increasing column index i
    col_cos = _unit(iops[0, 3:])  # direction of increasing row index j
    normal = _unit(np.cross(row_cos, col_cos))
    positions = np.array([[float(v) for v in h.ImagePositionPatient] for h in headers])
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    headers = [headers[i] for i in order]
    positions, along = positions[order], along[order]

    steps = np.diff(along)
    if steps.min() < 1e-3:
        raise fail("several slices share one position (several echoes, phases or acquisitions in one series?)")
    n = len(headers)
    spacing = (along[-1] - along[0]) / (n - 1)
    median = float(np.median(steps))
    off_grid = np.abs(along - (along[0] + spacing * np.arange(n))).max()
    if off_grid > SLICE_TOLERANCE * spacing or np.abs(steps - median).max() > SLICE_TOLERANCE * median:
        raise fail(
            f"uneven slice spacing: steps from {steps.min():.3f} to {steps.max():.3f} mm (median {median:.3f} mm), "
            f"tolerance {SLICE_TOLERANCE:.0%} of the step; a slice may be missing"
        )
    drift = positions - positions[0] - np.outer(along - along[0], normal)
    row_spacing, col_spacing = spacings[0]  # PixelSpacing = (between rows, between columns)
    if np.linalg.norm(drift, axis=1).max() > IN_PLANE_TOLERANCE * min(row_spacing, col_spacing):
        raise fail("slices are shifted in-plane along the stack (sheared or gantry-tilted series is not supported)")

    lps = np.eye(4)
    lps[:3, 0] = row_cos * col_spacing
    lps[:3, 1] = col_cos * row_spacing
    lps[:3, 2] = normal * spacing
    lps[:3, 3] = positions[0]
    ras = np.eye(4)
    ras[:3, :] = _LPS_TO_RAS @ lps[:3, :]
    return headers, ras


def _pixels(header: Any) -> np.ndarray:
    """Modality-rescaled (RescaleSlope/Intercept or Modality LUT) pixels of one slice, ``(rows, columns)``.

    Only the pixel data is read from the file; the rescale comes from the already-read ``header``.
    """
    from pydicom.pixels import apply_modality_lut, pixel_array

    path = Path(header.filename)
    try:
        raw = pixel_array(str(path))
    except Exception as exc:  # truncated data, unsupported compression, ...
        raise MedsegInputError(f"cannot decode DICOM pixel data: {exc}", path=path) from None
    if raw.shape != (int(header.Rows), int(header.Columns)):
        raise MedsegInputError(f"expected one {header.Rows}x{header.Columns} frame, got {raw.shape}", path=path)
    return apply_modality_lut(raw, header)


def _compact(volume: np.ndarray) -> np.ndarray:
    """Store integral values as the smallest signed/unsigned 16- or 32-bit type, others as float32."""
    if np.issubdtype(volume.dtype, np.integer):
        values = volume
    elif np.all(np.isfinite(volume)) and np.array_equal(volume, np.round(volume)):
        values = volume.astype(np.int64)
    else:
        return volume.astype(np.float32)
    lo, hi = (int(values.min()), int(values.max())) if values.size else (0, 0)
    for dtype in (np.int16, np.uint16, np.int32):
        info = np.iinfo(dtype)
        if info.min <= lo and hi <= info.max:
            return values.astype(dtype)
    return volume.astype(np.float32)


def read_dicom_series(folder: str | Path, *, series_uid: str | None = None, recursive: bool = True) -> Image:
    """Read one DICOM image series from ``folder`` (and its subfolders by default) into a volume.

    Args:
        folder: a folder with the series' files (other series, localizers and non-DICOM files may be there).
        series_uid: SeriesInstanceUID to read; required only when the folder holds several volumes.
        recursive: also search the subfolders.

    Returns:
        An :class:`Image` with array ``(X, Y, Z)``: X along the row direction (column index), Y along the
        column direction (row index), Z along the slice normal (row × column cosines) in increasing
        position. Values have RescaleSlope/Intercept applied (int16/uint16/int32 when integral, else
        float32). The affine maps (i, j, k) to RAS+ mm (DICOM's LPS with x and y negated). ``meta`` holds
        ``dicom_files`` (paths in k order), ``series_uid``, ``sop_instance_uids`` (k order), ``modality``
        and ``frame_of_reference_uid``.

    Raises:
        MedsegInputError: no volume in the folder, several and no ``series_uid``, an unknown
            ``series_uid``, inconsistent slices, missing slices or spacing outside the tolerance
            (see module docstring), or undecodable pixel data.
    """
    folder = Path(folder)
    infos, headers_by_uid = _scan(folder, recursive)
    if series_uid is None:
        if not infos:
            raise MedsegInputError("no readable DICOM image series (need at least 2 slices)", path=folder)
        if len(infos) > 1:
            listing = "; ".join(f"{s.series_uid} ({s.description}, {s.num_slices} slices)" for s in infos)
            raise MedsegInputError(f"several DICOM series, choose one by series_uid: {listing}", path=folder)
        series_uid = infos[0].series_uid
    if series_uid not in headers_by_uid:
        raise MedsegInputError(f"no readable DICOM image series with SeriesInstanceUID {series_uid}", path=folder)

    headers, affine = _slice_grid(headers_by_uid[series_uid], folder, series_uid)
    files = [Path(h.filename) for h in headers]
    slices = [_pixels(h) for h in headers]
    volume = np.stack(slices, axis=-1)  # (rows, columns, slices) = (j, i, k)
    volume = np.ascontiguousarray(np.transpose(volume, (1, 0, 2)))  # (i, j, k) = (X, Y, Z)
    volume = _compact(volume)
    first = headers[0]
    meta = {
        "dicom_files": files,
        "series_uid": series_uid,
        "sop_instance_uids": [str(h.SOPInstanceUID) for h in headers],
        "modality": str(first.get("Modality", "")),
        "frame_of_reference_uid": str(first.get("FrameOfReferenceUID", "")),
    }
    geometry = Geometry(tuple(int(s) for s in volume.shape), affine)  # type: ignore[arg-type]
    return Image(array=volume, geometry=geometry, path=folder, meta=meta)
