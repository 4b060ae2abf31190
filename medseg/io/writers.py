"""Writing label maps and probability maps on an image's grid, in the format the user asks for."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Literal

import numpy as np

from medseg.io.image import Geometry, Image, check_label_map
from medseg.labels import LabelTable

LabelFormat = Literal["nifti", "seg.nrrd", "dicom-seg"]

_SUFFIX_FORMATS: dict[str, LabelFormat] = {
    ".nii": "nifti",
    ".nii.gz": "nifti",
    ".seg.nrrd": "seg.nrrd",
    ".dcm": "dicom-seg",
}


def label_format_for(path: str | Path) -> LabelFormat:
    """The label-map format implied by ``path``'s ending (``.nii[.gz]``, ``.seg.nrrd``, ``.dcm``).

    Raises:
        ValueError: the ending is none of those.
    """
    name = Path(path).name.lower()
    for suffix in sorted(_SUFFIX_FORMATS, key=len, reverse=True):
        if name.endswith(suffix):
            return _SUFFIX_FORMATS[suffix]
    raise ValueError(f"cannot tell the label-map format from {name!r}; use one of {', '.join(_SUFFIX_FORMATS)}")


def _known_ending(path: Path) -> bool:
    return any(path.name.lower().endswith(suffix) for suffix in _SUFFIX_FORMATS)


def input_paths(reference: Image | None) -> list[Path | None]:
    """Paths a writer must never overwrite: the reference's file or folder and its DICOM files."""
    if reference is None:
        return []
    paths: Iterable[Path] = reference.meta.get("dicom_files", [])
    return [reference.path, *paths]


def _checked_labels(labels: np.ndarray, geometry: Geometry, table: LabelTable) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 3 or tuple(labels.shape) != tuple(geometry.shape):
        raise ValueError(f"label array shape {labels.shape} does not match grid {geometry.shape}")
    if not np.issubdtype(labels.dtype, np.integer) and not np.issubdtype(labels.dtype, np.bool_):
        raise ValueError(f"label map must be integer, got {labels.dtype}")
    check_label_map(labels, table, path=None)
    top = int(labels.max()) if labels.size else 0
    return labels.astype(np.uint8 if top <= np.iinfo(np.uint8).max else np.uint16, copy=False)


def write_label_map(
    labels: np.ndarray,
    geometry: Geometry,
    path: Path,
    *,
    table: LabelTable,
    reference: Image | None = None,
    fmt: LabelFormat | None = None,
) -> Path:
    """Write an integer label map on ``geometry``, atomically, as NIfTI, Slicer ``.seg.nrrd`` or DICOM-SEG.

    Args:
        labels: ``(X, Y, Z)`` integer label values, in the voxel order of ``geometry``.
        geometry: the grid (affine in RAS mm) the labels lie on, usually the input image's.
        path: output file; never the input image (or a file of the input DICOM series).
        table: names (and colours) of the label values; every value in ``labels`` must be in it.
        reference: the input image. NIfTI keeps its qform/sform codes; DICOM-SEG needs it (a DICOM
            series read by :func:`~medseg.io.dicom.read_dicom_series`) to reference the source slices.
        fmt: ``"nifti"``, ``"seg.nrrd"`` or ``"dicom-seg"``; inferred from the ending of ``path`` if None.

    Returns:
        ``path``.

    Raises:
        MedsegInputError: ``path`` is an input path, ``labels`` holds values missing from ``table``, or
            a DICOM-SEG's grid is not its reference series' grid.
        ValueError: unknown format, a shape mismatch, or DICOM-SEG without a DICOM reference.
    """
    from medseg.io.atomic import ensure_not_input

    path = Path(path)
    implied = label_format_for(path) if fmt is None or _known_ending(path) else None
    if fmt is not None and implied is not None and implied != fmt:
        raise ValueError(f"format {fmt!r} does not match the file ending of {path.name!r} ({implied})")
    fmt = fmt or implied
    ensure_not_input(path, input_paths(reference))
    labels = _checked_labels(labels, geometry, table)
    if fmt == "nifti":
        from medseg.io.nifti import write_nifti

        return write_nifti(labels, geometry, path, reference=reference)
    if fmt == "seg.nrrd":
        from medseg.io.seg_nrrd import write_seg_nrrd

        return write_seg_nrrd(labels, geometry, path, table=table)
    if fmt == "dicom-seg":
        from medseg.io.dicom_seg import write_dicom_seg

        if reference is None:
            raise ValueError("a DICOM-SEG needs the DICOM series it was made on as reference")
        return write_dicom_seg(labels, geometry, path, table=table, reference=reference)
    raise ValueError(f"unknown label-map format {fmt!r}; use nifti, seg.nrrd or dicom-seg")


def write_probabilities(
    probs: np.ndarray,
    geometry: Geometry,
    path: Path,
    *,
    reference: Image | None = None,
) -> Path:
    """Write per-class probabilities ``(C, X, Y, Z)`` in [0, 1] as a 4-D float32 NIfTI (channels last), atomically
    (:func:`write_channels`).

    Raises:
        MedsegInputError: ``path`` is an input path.
        ValueError: ``probs`` is not 4-D on ``geometry``.
    """
    return write_channels(probs, geometry, path, reference=reference)


def write_channels(
    channels: np.ndarray,
    geometry: Geometry,
    path: Path,
    *,
    reference: Image | None = None,
) -> Path:
    """Write float maps ``(C, X, Y, Z)`` on ``geometry`` (probabilities, uncertainty maps) as a 4-D float32
    NIfTI (channels last), atomically.

    Raises:
        MedsegInputError: ``path`` is an input path.
        ValueError: ``channels`` is not 4-D on ``geometry``.
    """
    from medseg.io.atomic import ensure_not_input
    from medseg.io.nifti import write_nifti

    channels = np.asarray(channels)
    if channels.ndim != 4 or tuple(channels.shape[1:]) != tuple(geometry.shape):
        raise ValueError(f"maps must be (C, X, Y, Z) on grid {geometry.shape}, got {channels.shape}")
    ensure_not_input(path, input_paths(reference))
    return write_nifti(channels.astype(np.float32, copy=False), geometry, path, reference=reference)
