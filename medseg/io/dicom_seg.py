"""DICOM Segmentation objects (highdicom): written to reference the DICOM series a label map was made on,
and read back as a label map on the grid of the frames they hold."""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any, Literal

import numpy as np

from medseg.errors import MedsegInputError, first_line
from medseg.io.atomic import atomic_output
from medseg.io.image import Geometry, Image, require_same_grid
from medseg.labels import Code, LabelTable


def _source_datasets(reference: Image) -> list[Any]:
    """The reference series' datasets (headers only): one per slice in the reader's k (slice) order, or the
    one multi-frame file that holds every slice."""
    import pydicom

    files = reference.meta.get("dicom_files")
    if not files:
        raise ValueError("a DICOM-SEG needs the DICOM series it was made on as reference (read_dicom_series)")
    if "dicom_frame_numbers" in reference.meta:
        if len(set(files)) > 1:
            raise ValueError("a DICOM-SEG can reference one multi-frame file, not several")
        return [pydicom.dcmread(str(files[0]), stop_before_pixels=True)]
    return [pydicom.dcmread(str(p), stop_before_pixels=True) for p in files]


SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
"""The SOP Class UID of a DICOM Segmentation."""

_TRACKING_ID = re.compile(r"^label (\d+)$")  # what write_dicom_seg gives each segment
_RAS_FROM_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def is_dicom_seg(path: str | Path) -> bool:
    """Whether the DICOM file ``path`` is a Segmentation (its SOP Class UID; the header alone is read)."""
    import pydicom

    try:
        header = pydicom.dcmread(str(path), stop_before_pixels=True, specific_tags=["SOPClassUID"])
    except Exception:  # not DICOM: the series reader says why
        return False
    return str(header.get("SOPClassUID", "")) == SEGMENTATION_STORAGE


def read_dicom_seg(path: str | Path) -> Image:
    """Read a DICOM Segmentation as a label map on the grid of the frames it holds.

    The segments become label values: the value of a segment medseg wrote (tracking id ``"label N"``), else
    the segment number. A SEG omits empty frames, so the grid spans the slices from the first to the last
    frame it holds (those between filled with 0): a box of the source series' grid, which
    :func:`~medseg.io.image.onto_grid` with ``partial`` places on it.

    Returns:
        An :class:`Image` with array ``(X, Y, Z)`` (X along the rows = column index, Y = row index, Z = slice
        position), an affine in RAS mm, and ``meta["dicom_seg"] = True``.

    Raises:
        MedsegInputError: naming ``path``: no Segmentation highdicom can read, frames that are no regular
            volume, or overlapping segments.
    """
    import highdicom as hd

    try:
        seg = hd.seg.segread(str(path))
        volume = seg.get_volume(combine_segments=True, relabel=False)
    except Exception as exc:  # highdicom raises ValueError, RuntimeError, AttributeError, ...
        raise MedsegInputError(f"cannot read the DICOM-SEG as a label map: {first_line(exc)}", path=path) from None
    numbers = [int(item.SegmentNumber) for item in seg.SegmentSequence]
    tracked = [_TRACKING_ID.match(str(item.get("TrackingID", ""))) for item in seg.SegmentSequence]
    values = [int(m[1]) for m in tracked if m] if all(tracked) else numbers
    lookup = np.zeros(max(numbers, default=0) + 1, dtype=np.uint8 if max(values, default=0) < 256 else np.uint16)
    lookup[numbers] = values
    array = lookup[np.asarray(volume.array)].transpose(2, 1, 0)  # (slice, row, column) -> (X, Y, Z)
    affine = _RAS_FROM_LPS @ np.asarray(volume.affine, dtype=float)[:, [2, 1, 0, 3]]
    return Image(array, Geometry(tuple(array.shape), affine), Path(path), {"dicom_seg": True})  # type: ignore[arg-type]


_REFERENCED_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID", "SOPInstanceUID")


def _require_uids(sources: list[Any], reference: Image) -> None:
    """Refuse source images that a DICOM-SEG cannot reference: one whose study, series, frame of reference
    or instance UID is empty or absent (an anonymiser that blanked them).

    Raises:
        MedsegInputError: naming the series folder, its description and the empty UIDs.
    """
    empty = [name for name in _REFERENCED_UIDS if any(not str(ds.get(name, "") or "").strip() for ds in sources)]
    if empty:
        description = str(sources[0].get("SeriesDescription", "") or "") or "no description"
        raise MedsegInputError(
            f"no DICOM-SEG can reference series ({description}): its {', '.join(empty)} is empty (anonymised?),"
            " and a DICOM-SEG names its source images by these UIDs; use --format nifti or seg.nrrd",
            path=reference.path,
        )


def _coded(code: Code) -> Any:
    """``code`` as a highdicom coded concept."""
    import highdicom as hd

    return hd.sr.CodedConcept(value=code.value, scheme_designator=code.scheme, meaning=code.meaning)


def write_dicom_seg(
    labels: np.ndarray,
    geometry: Geometry,
    path: str | Path,
    *,
    table: LabelTable,
    reference: Image,
    segmentation_type: Literal["BINARY", "LABELMAP"] = "BINARY",
) -> Path:
    """Write an ``(X, Y, Z)`` label map as a DICOM Segmentation of the reference series, atomically.

    ``reference`` must come from :func:`~medseg.io.dicom.read_dicom_series` and lie on ``geometry``;
    ``labels`` are those :func:`~medseg.io.writers.write_label_map` checked (shape, values of ``table``).
    Slice ``k`` of the label map becomes the frames of source image ``reference.meta["dicom_files"][k]``
    (rows = Y, columns = X), or of frame ``reference.meta["dicom_frame_numbers"][k]`` of a multi-frame source
    file, so every frame refers to the slice it was segmented on. One segment is
    written per foreground label of ``table`` (segment numbers 1.. in ascending label value), labelled,
    coloured and coded (segmented property category, type and type modifier) as
    :meth:`~medseg.labels.LabelTable.segments` says, made by the automatic algorithm "medseg" of this version.
    Empty frames are omitted.

    Raises:
        ValueError: the reference is not a DICOM series.
        MedsegInputError: ``geometry`` is not the reference series' grid.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    from medseg import __version__

    require_same_grid(geometry, reference.geometry, path=path, reference_path=reference.path)
    sources = _source_datasets(reference)
    _require_uids(sources, reference)
    values = table.foreground_labels
    # Segment numbers must run 1..S: map label value -> segment number (background stays 0).
    lookup = np.zeros(max(values, default=0) + 1, dtype=np.uint8 if len(values) < 256 else np.uint16)
    lookup[list(values)] = np.arange(1, len(values) + 1)
    frames = lookup[np.transpose(labels, (2, 1, 0))]  # (k, j, i) = (source slice, row, column)
    if "dicom_frame_numbers" in reference.meta:  # one multi-frame source: slice k is its frame number n_k
        in_file_order = np.empty_like(frames)
        in_file_order[np.asarray(reference.meta["dicom_frame_numbers"]) - 1] = frames
        frames = in_file_order

    algorithm = hd.AlgorithmIdentificationSequence(
        name="medseg", family=codes.cid7162.ArtificialIntelligence, version=__version__
    )
    descriptions = []
    for number, segment in enumerate(table.segments(), start=1):
        concept = segment.concept
        description = hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=segment.display_name[:64],
            segmented_property_category=_coded(concept.category),
            segmented_property_type=_coded(concept.type),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            tracking_id=f"label {segment.value}",
            tracking_uid=hd.UID(),
            display_color=hd.color.CIELabColor.from_rgb(*segment.color),
        )
        if concept.modifier is not None:  # nested in the type's item (PS3.3 C.8.20-4); highdicom takes no argument
            description.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [
                _coded(concept.modifier)
            ]
        descriptions.append(description)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # highdicom notes on optional attributes
        seg = hd.seg.Segmentation(
            source_images=sources,
            pixel_array=frames,
            segmentation_type=segmentation_type,
            segment_descriptions=descriptions,
            series_instance_uid=hd.UID(),
            series_number=900,
            sop_instance_uid=hd.UID(),
            instance_number=1,
            manufacturer="medseg",
            manufacturer_model_name="medseg",
            software_versions=__version__,
            device_serial_number="0",
            content_label="MEDSEG",
            content_description="medseg automatic segmentation",
            series_description="medseg segmentation",
        )
    path = Path(path)
    with atomic_output(path) as tmp:
        seg.save_as(str(tmp))
    return path
