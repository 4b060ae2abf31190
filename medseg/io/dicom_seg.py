"""DICOM Segmentation objects (highdicom) that reference the DICOM series a label map was made on."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Literal

import numpy as np

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
