"""DICOM image series: find the series in a folder and read one into a volume with its geometry.

What is read: CT, MR and other image series stored as single-frame files (one slice per file) or as
enhanced multi-frame files (Enhanced and Legacy Converted Enhanced CT/MR: every frame's position from the
per-frame functional groups, orientation, pixel spacing and rescale from the per-frame or the shared
ones), in any transfer syntax pydicom decodes with the installed plugins (explicit/implicit VR little
endian, explicit big endian, RLE, JPEG baseline, JPEG Lossless, JPEG-LS, JPEG 2000). A file is taken for
DICOM by its content (the 128-byte preamble followed by ``DICM``), whatever its name: ``.dcm``, GE
``*.MRDC.N``, Siemens ``*.IMA`` or none.

What is skipped as not a volume (:attr:`SeriesInfo.skip_reason`): localizers, single images, and
multi-frame files without per-frame functional groups (RT dose, cine). What is refused when read, with
the reason: Siemens mosaics (several slices tiled in one image), several stacks or a 4-D volume in one
series (several temporal positions or StackIDs, or several frames at one position), and series off the
regular grid below.

Slices are grouped by SeriesInstanceUID and sorted by their position along the slice normal
(``ImagePositionPatient · (row cosines × column cosines)``), never by file name, InstanceNumber or frame
number.

Slice-spacing tolerance (``SLICE_TOLERANCE``): the slice spacing is the distance between the first and
last slice along the normal divided by ``n - 1``. A series is read only when every slice lies within
10 % of that spacing of its place on this regular grid along the normal, every step is within 10 % of
the median step, and no slice drifts in-plane by more than half a pixel (a sheared, gantry-tilted
stack). Otherwise :class:`MedsegInputError` names the folder and the series: a missing slice, uneven
spacing or shear cannot be stored in an affine without moving voxels. Rounding noise in real scanner
positions (≈0.07 mm on 7 mm steps in the project's fixture) is far inside this tolerance.

Headers are read once: finding the series of a folder parses each file's header (without its pixel
data) into a small record, kept in memory by path, size and modification time, so reading a series
afterwards (or the other series of the same folder) parses only its own files' pixel data.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
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

HEADER_CACHE_SIZE = 200_000
"""How many files' header records are kept in memory (a few hundred bytes each)."""

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
_PREAMBLE = 128
_MAGIC = b"DICM"


def is_dicom_file(path: str | Path) -> bool:
    """Whether ``path`` is a DICOM file: the 128-byte preamble followed by ``DICM`` (reads 132 bytes).

    The name does not matter (``.dcm``, GE ``*.MRDC.N``, Siemens ``*.IMA``, none); a missing or unreadable
    path is not DICOM.
    """
    try:
        with open(path, "rb") as fh:
            head = fh.read(_PREAMBLE + len(_MAGIC))
    except OSError:
        return False
    return head[_PREAMBLE:] == _MAGIC


@dataclass(frozen=True)
class SeriesInfo:
    """One DICOM image series found in a folder.

    Attributes:
        series_uid: SeriesInstanceUID.
        description: SeriesDescription ("" when absent).
        modality: Modality (``"CT"``, ``"MR"``, ...).
        num_slices: number of 2-D images in the series (frames of multi-frame files counted one by one).
        files: the image files, in no particular order (the reader sorts the slices by position).
        skip_reason: why the series is not a volume (a localizer, a single image, ...), None for a volume.
    """

    series_uid: str
    description: str
    modality: str
    num_slices: int
    files: tuple[Path, ...]
    skip_reason: str | None = None


@dataclass(frozen=True)
class _Frame:
    """One 2-D image: a single-frame file, or frame ``index`` (0-based) of a multi-frame file.

    ``position`` is ImagePositionPatient (LPS mm), ``orientation`` ImageOrientationPatient (row cosines,
    then column cosines), ``pixel_spacing`` PixelSpacing (between rows, between columns; mm).
    """

    path: Path
    index: int
    position: tuple[float, ...] | None
    orientation: tuple[float, ...] | None
    pixel_spacing: tuple[float, ...] | None
    slope: float
    intercept: float
    temporal_position: int | None
    stack_id: str | None


@dataclass(frozen=True)
class _FileHeader:
    """What the reader needs of one DICOM image file's header (its pixel data is not read)."""

    path: Path
    series_uid: str
    sop_uid: str
    description: str
    modality: str
    frame_of_reference_uid: str
    image_type: tuple[str, ...]
    rows: int
    columns: int
    bits_stored: int
    signed: bool
    modality_lut: bool
    multi_frame: bool
    mosaic: int | None  # images tiled in a Siemens mosaic (0: ImageType says MOSAIC without a count)
    problem: str | None  # why the file's frames have no usable geometry
    frames: tuple[_Frame, ...]


def _floats(value: Any) -> tuple[float, ...] | None:
    return None if value is None else tuple(float(v) for v in value)


def _item_value(items: Sequence[Any], sequence: str, keyword: str) -> Any:
    """``keyword`` in the first item of ``sequence`` of the first functional-group item that has it."""
    for item in items:
        seq = item.get(sequence)
        if seq and keyword in seq[0]:
            return seq[0][keyword].value
    return None


def _enhanced_frames(ds: Any, path: Path) -> tuple[tuple[_Frame, ...], str | None]:
    """The frames of an enhanced multi-frame file from its per-frame and shared functional groups."""
    shared = list(ds.get("SharedFunctionalGroupsSequence", []))[:1]
    frames = []
    for index, item in enumerate(ds.PerFrameFunctionalGroupsSequence):
        groups = [item, *shared]  # a per-frame value overrides the shared one
        slope = _item_value(groups, "PixelValueTransformationSequence", "RescaleSlope")
        intercept = _item_value(groups, "PixelValueTransformationSequence", "RescaleIntercept")
        temporal = _item_value(groups, "FrameContentSequence", "TemporalPositionIndex")
        stack = _item_value(groups, "FrameContentSequence", "StackID")
        frame = _Frame(
            path=path,
            index=index,
            position=_floats(_item_value(groups, "PlanePositionSequence", "ImagePositionPatient")),
            orientation=_floats(_item_value(groups, "PlaneOrientationSequence", "ImageOrientationPatient")),
            pixel_spacing=_floats(_item_value(groups, "PixelMeasuresSequence", "PixelSpacing")),
            slope=1.0 if slope is None else float(slope),
            intercept=0.0 if intercept is None else float(intercept),
            temporal_position=None if temporal is None else int(temporal),
            stack_id=None if stack is None else str(stack),
        )
        if frame.position is None or frame.orientation is None:
            return (), f"frame {index + 1} has no plane position or orientation in its functional groups"
        frames.append(frame)
    if len(frames) != int(ds.get("NumberOfFrames", 1) or 1):
        return (), f"{len(frames)} per-frame functional groups for NumberOfFrames {ds.get('NumberOfFrames')}"
    return tuple(frames), None


def _mosaic_images(ds: Any, image_type: tuple[str, ...]) -> int | None:
    """Siemens NumberOfImagesInMosaic (0 when only ImageType says MOSAIC), None for no mosaic."""
    try:
        block = ds.private_block(0x0019, "SIEMENS MR HEADER")
        count = int(block[0x0A].value) if 0x0A in block else None
    except (KeyError, TypeError, ValueError):
        count = None
    if count is not None and count > 1:
        return count
    return 0 if "MOSAIC" in image_type else None


def _parse_header(path: Path) -> _FileHeader | None:
    """The header record of a DICOM image file, or None for non-DICOM files and non-image objects."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    if not is_dicom_file(path):
        return None
    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=True)
        if "SeriesInstanceUID" not in ds or str(ds.get("Modality", "")).upper() == "SEG":
            return None  # DICOMDIR, SR, presentation states; a DICOM-SEG is a label map, not an image
        enhanced = "PerFrameFunctionalGroupsSequence" in ds
        classic = "ImagePositionPatient" in ds and "ImageOrientationPatient" in ds
        if not (enhanced or classic) or "Rows" not in ds:
            return None  # RT structures, reports, secondary captures without geometry, ...
        image_type = tuple(str(v).upper() for v in ds.get("ImageType", []))
        number_of_frames = int(ds.get("NumberOfFrames", 1) or 1)
        problem = None
        if enhanced:
            frames, problem = _enhanced_frames(ds, path)
        else:
            frames = (
                _Frame(
                    path=path,
                    index=0,
                    position=_floats(ds.ImagePositionPatient),
                    orientation=_floats(ds.ImageOrientationPatient),
                    pixel_spacing=_floats(ds.get("PixelSpacing")),
                    slope=float(ds.get("RescaleSlope", 1) or 1),
                    intercept=float(ds.get("RescaleIntercept", 0) or 0),
                    temporal_position=None,
                    stack_id=None,
                ),
            )
        return _FileHeader(
            path=path,
            series_uid=str(ds.SeriesInstanceUID),
            sop_uid=str(ds.get("SOPInstanceUID", "")),
            description=str(ds.get("SeriesDescription", "")),
            modality=str(ds.get("Modality", "")),
            frame_of_reference_uid=str(ds.get("FrameOfReferenceUID", "")),
            image_type=image_type,
            rows=int(ds.Rows),
            columns=int(ds.Columns),
            bits_stored=int(ds.get("BitsStored", ds.get("BitsAllocated", 16)) or 16),
            signed=int(ds.get("PixelRepresentation", 0) or 0) == 1,
            modality_lut="ModalityLUTSequence" in ds,
            multi_frame=enhanced or number_of_frames > 1,
            mosaic=_mosaic_images(ds, image_type),
            problem=problem,
            frames=frames if enhanced or number_of_frames == 1 else (),
        )
    except InvalidDicomError:
        return None
    except Exception as exc:  # truncated or damaged headers raise many types
        raise MedsegInputError(f"cannot read DICOM file: {exc}", path=path) from None


_header_cache: OrderedDict[tuple[str, int, int], _FileHeader | None] = OrderedDict()
_header_cache_lock = threading.Lock()


def _file_header(path: Path, stat: os.stat_result) -> _FileHeader | None:
    """:func:`_parse_header` of ``path``, parsed once while its size and modification time stay the same."""
    key = (os.path.abspath(path), stat.st_size, stat.st_mtime_ns)
    with _header_cache_lock:
        if key in _header_cache:
            _header_cache.move_to_end(key)
            return _header_cache[key]
    header = _parse_header(path)
    with _header_cache_lock:
        _header_cache[key] = header
        while len(_header_cache) > HEADER_CACHE_SIZE:
            _header_cache.popitem(last=False)
    return header


def _skip_reason(headers: list[_FileHeader]) -> str | None:
    """Why a series is not a volume (skipped with a note, not refused), or None when it may be one."""
    first = headers[0]
    if "LOCALIZER" in first.image_type:
        return "localizer series"
    if first.mosaic is not None:
        return None  # refused when read, naming the mosaic
    if all(h.multi_frame and not h.frames and h.problem is None for h in headers):
        return "multi-frame images without per-frame functional groups (no slice positions)"
    if sum(len(h.frames) for h in headers) < 2 and all(h.problem is None for h in headers):
        return "single-image series"
    return None


def _scan(folder: Path, recursive: bool) -> dict[str, list[_FileHeader]]:
    """The DICOM image files under ``folder``, grouped by SeriesInstanceUID (files sorted by path)."""
    if not folder.is_dir():
        raise MedsegInputError("DICOM folder not found", path=folder)
    groups: dict[str, list[_FileHeader]] = {}
    for path in sorted(folder.rglob("*") if recursive else folder.iterdir()):
        try:
            stat = path.stat()
        except OSError:  # a dangling or looping link
            continue
        if not path.is_file():
            continue
        header = _file_header(path, stat)
        if header is not None:
            groups.setdefault(header.series_uid, []).append(header)
    return groups


def _info(uid: str, headers: list[_FileHeader]) -> SeriesInfo:
    first = headers[0]
    return SeriesInfo(
        series_uid=uid,
        description=first.description,
        modality=first.modality,
        num_slices=sum(max(len(h.frames), 1) for h in headers),
        files=tuple(h.path for h in headers),
        skip_reason=_skip_reason(headers),
    )


def list_dicom_series(folder: str | Path, *, recursive: bool = True, include_skipped: bool = False) -> list[SeriesInfo]:
    """The image series in ``folder`` (and its subfolders unless ``recursive=False``), largest first.

    Series that are not volumes (localizers, single images, multi-frame files without slice positions;
    see :attr:`SeriesInfo.skip_reason`) are left out unless ``include_skipped``; non-DICOM files and
    non-image DICOM objects (reports, RT structures, DICOM-SEG) are ignored. Series that
    :func:`read_dicom_series` refuses (mosaics, 4-D, missing slices) are listed: reading them names why.

    Raises:
        MedsegInputError: the folder is missing, or a DICOM file in it is damaged.
    """
    infos = [_info(uid, headers) for uid, headers in _scan(Path(folder), recursive).items()]
    kept = [info for info in infos if include_skipped or info.skip_reason is None]
    return sorted(kept, key=lambda s: (-s.num_slices, s.series_uid))


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def _refuse_non_volumes(headers: list[_FileHeader], fail: Callable[[str], MedsegInputError]) -> None:
    """Raise for a series that holds no single 3-D stack: a mosaic, several stacks, a 4-D volume."""
    mosaics = [h for h in headers if h.mosaic is not None]
    if mosaics:
        count = f"{mosaics[0].mosaic} slices" if mosaics[0].mosaic else "several slices"
        raise fail(
            f"Siemens mosaic ({count} tiled in one image, {len(mosaics)} file(s)): mosaics are not read;"
            " convert the series to NIfTI (e.g. with dcm2niix) first"
        )
    problem = next((h for h in headers if h.problem is not None), None)
    if problem is not None:
        raise fail(f"{problem.path.name}: {problem.problem}")
    frames = [f for h in headers for f in h.frames]
    stacks = {f.stack_id for f in frames if f.stack_id is not None}
    if len(stacks) > 1:
        raise fail(f"holds {len(stacks)} stacks (StackID {', '.join(sorted(stacks))}); medseg reads one 3-D stack")
    times = {f.temporal_position for f in frames if f.temporal_position is not None}
    if len(times) > 1:
        raise fail(f"holds {len(times)} temporal positions (a 4-D volume); medseg reads one 3-D volume")


def _slice_grid(frames: list[_Frame], folder: Path, uid: str, *, multi_frame: bool) -> tuple[list[_Frame], np.ndarray]:
    """Sort the frames along the normal, check they form a regular grid, and return the RAS affine."""

    def fail(reason: str) -> MedsegInputError:
        return MedsegInputError(f"DICOM series {uid}: {reason}", path=folder)

    slices = "frames" if multi_frame else "slices"
    iops = np.array([f.orientation for f in frames])
    if np.abs(iops - iops[0]).max() > 1e-4:
        raise fail(f"{slices} have different ImageOrientationPatient (several stacks in one series?)")
    if any(f.pixel_spacing is None for f in frames):
        raise fail("PixelSpacing is missing")
    spacings = np.array([f.pixel_spacing for f in frames])
    if np.abs(spacings - spacings[0]).max() > 1e-4:
        raise fail(f"{slices} have different PixelSpacing")

    row_cos = _unit(iops[0, :3])  # direction of increasing column index i
    col_cos = _unit(iops[0, 3:])  # direction of increasing row index j
    normal = _unit(np.cross(row_cos, col_cos))
    positions = np.array([f.position for f in frames])
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    frames = [frames[i] for i in order]
    positions, along = positions[order], along[order]

    steps = np.diff(along)
    if steps.min() < 1e-3:
        raise fail(
            f"several {slices} share one position (a 4-D volume: several echoes, phases or acquisitions in one series?)"
        )
    n = len(frames)
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
    return frames, ras


def _value_dtype(headers: list[_FileHeader]) -> np.dtype:
    """The type of the rescaled values: integral when every slope and intercept is an integer (int16,
    uint16 or int32, the smallest that holds the stored range after rescale), else float32."""
    if any(h.modality_lut for h in headers):
        return np.dtype(np.int32)  # a Modality LUT maps to at most 16-bit integers
    lo, hi = np.inf, -np.inf
    for h in headers:
        half = 2 ** (h.bits_stored - 1)
        low, high = (-half, half - 1) if h.signed else (0, 2 * half - 1)
        for f in h.frames:
            if f.slope != round(f.slope) or f.intercept != round(f.intercept):
                return np.dtype(np.float32)
            ends = (low * f.slope + f.intercept, high * f.slope + f.intercept)
            lo, hi = min(lo, *ends), max(hi, *ends)
    for dtype in (np.int16, np.uint16, np.int32):
        info = np.iinfo(dtype)
        if info.min <= lo and hi <= info.max:
            return np.dtype(dtype)
    return np.dtype(np.float32)


def _read_pixels(frames: list[_Frame], headers: dict[Path, _FileHeader], dtype: np.dtype) -> np.ndarray:
    """Decode the frames into one ``(slices, rows, columns)`` array of ``dtype``, rescaled (RescaleSlope
    and RescaleIntercept, or the Modality LUT), filled slice by slice without a second copy of the volume."""
    import pydicom
    from pydicom.pixels import apply_modality_lut, iter_pixels

    first = headers[frames[0].path]
    volume = np.empty((len(frames), first.rows, first.columns), dtype=dtype)
    slot = {(f.path, f.index): k for k, f in enumerate(frames)}
    for path in dict.fromkeys(f.path for f in frames):  # files in slice order
        header = headers[path]
        try:
            if header.modality_lut:
                ds = pydicom.dcmread(str(path))
                decoded: Any = [apply_modality_lut(ds.pixel_array, ds)]
            else:
                decoded = iter_pixels(str(path))
            for index, raw in enumerate(decoded):
                if raw.shape != (header.rows, header.columns):
                    expected = f"{header.rows}x{header.columns}"
                    raise MedsegInputError(f"expected {expected} frames, got shape {raw.shape}", path=path)
                k = slot.get((path, index))
                if k is None:
                    continue
                frame = frames[k]
                if header.modality_lut or (frame.slope == 1 and frame.intercept == 0):
                    volume[k] = raw
                elif dtype.kind == "f":
                    volume[k] = raw * frame.slope + frame.intercept
                else:
                    volume[k] = raw.astype(np.int64) * int(frame.slope) + int(frame.intercept)
        except MedsegInputError:
            raise
        except Exception as exc:  # truncated data, unsupported compression, ...
            raise MedsegInputError(f"cannot decode DICOM pixel data: {exc}", path=path) from None
    return volume


def read_dicom_series(folder: str | Path, *, series_uid: str | None = None, recursive: bool = True) -> Image:
    """Read one DICOM image series from ``folder`` (and its subfolders by default) into a volume.

    Args:
        folder: a folder with the series' files (other series, localizers and non-DICOM files may be there).
        series_uid: SeriesInstanceUID to read; required only when the folder holds several volumes.
        recursive: also search the subfolders.

    Returns:
        An :class:`Image` with array ``(X, Y, Z)``: X along the row direction (column index), Y along the
        column direction (row index), Z along the slice normal (row × column cosines) in increasing
        position. Values have RescaleSlope/Intercept (or the Modality LUT) applied: int16, uint16 or
        int32 (the smallest that holds the stored range after rescale) when every slope and intercept is
        an integer, int32 after a Modality LUT, else float32. The array is a transposed view of a
        ``(Z, Y, X)`` C-ordered buffer (Fortran order in ``(X, Y, Z)``, as nibabel returns NIfTI data),
        filled slice by slice: no second copy of the volume is made. The affine maps (i, j, k) to RAS+ mm (DICOM's LPS
        with x and y negated). ``meta`` holds ``dicom_files`` (the file of each slice, k order; a
        multi-frame file once per frame), ``sop_instance_uids`` (k order), ``dicom_frame_numbers`` (the
        1-based frame number of each slice in its file, k order; only for multi-frame files),
        ``series_uid``, ``modality`` and ``frame_of_reference_uid``.

    Raises:
        MedsegInputError: no volume in the folder, several and no ``series_uid``, an unknown or skipped
            ``series_uid``, a mosaic, several stacks or a 4-D volume, inconsistent slices, missing
            slices or spacing outside the tolerance (see module docstring), or undecodable pixel data.
    """
    folder = Path(folder)
    groups = _scan(folder, recursive)
    infos = [_info(uid, headers) for uid, headers in groups.items()]
    if series_uid is None:
        volumes = [info for info in infos if info.skip_reason is None]
        if not volumes:
            skipped = "; ".join(f"{s.series_uid} ({s.description}): {s.skip_reason}" for s in infos)
            raise MedsegInputError(
                "no readable DICOM image series" + (f"; skipped {skipped}" if skipped else ""), path=folder
            )
        if len(volumes) > 1:
            listing = "; ".join(f"{s.series_uid} ({s.description}, {s.num_slices} slices)" for s in volumes)
            raise MedsegInputError(f"several DICOM series, choose one by series_uid: {listing}", path=folder)
        series_uid = volumes[0].series_uid
    if series_uid not in groups:
        raise MedsegInputError(f"no readable DICOM image series with SeriesInstanceUID {series_uid}", path=folder)
    reason = next(info.skip_reason for info in infos if info.series_uid == series_uid)
    if reason is not None:
        raise MedsegInputError(f"DICOM series {series_uid} is not a volume: {reason}", path=folder)

    headers = groups[series_uid]

    def fail(why: str) -> MedsegInputError:
        return MedsegInputError(f"DICOM series {series_uid}: {why}", path=folder)

    _refuse_non_volumes(headers, fail)
    sizes = {(h.rows, h.columns) for h in headers}
    if len(sizes) > 1:
        raise fail(f"slices have different sizes {sorted(sizes)}")
    multi_frame = any(h.multi_frame for h in headers)
    frames, affine = _slice_grid([f for h in headers for f in h.frames], folder, series_uid, multi_frame=multi_frame)
    by_path = {h.path: h for h in headers}
    volume = _read_pixels(frames, by_path, _value_dtype(headers)).transpose(2, 1, 0)  # (k, j, i) -> (i, j, k)
    first = headers[0]
    meta: dict[str, Any] = {
        "dicom_files": [f.path for f in frames],
        "series_uid": series_uid,
        "sop_instance_uids": [by_path[f.path].sop_uid for f in frames],
        "modality": first.modality,
        "frame_of_reference_uid": first.frame_of_reference_uid,
    }
    if multi_frame:
        meta["dicom_frame_numbers"] = [f.index + 1 for f in frames]
    geometry = Geometry(tuple(int(s) for s in volume.shape), affine)  # type: ignore[arg-type]
    return Image(array=volume, geometry=geometry, path=folder, meta=meta)
