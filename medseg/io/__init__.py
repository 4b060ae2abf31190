"""Reading and writing images with their full geometry.

``read_image`` reads NIfTI, NRRD, Slicer ``.seg.nrrd``, MHA/MHD and DICOM series folders into an
:class:`Image` (array ``(X, Y, Z)``, affine in RAS mm). ``write_label_map`` writes a label map as NIfTI,
``.seg.nrrd`` or DICOM-SEG; every writer is atomic and refuses to overwrite its input.
"""

from __future__ import annotations

from medseg.io.atomic import atomic_output, ensure_not_input
from medseg.io.dicom import SeriesInfo, list_dicom_series, read_dicom_series
from medseg.io.image import (
    Geometry,
    Image,
    VoxelMap,
    check_label_map,
    grid_difference,
    label_values,
    onto_grid,
    require_finite,
    require_invertible,
    require_same_grid,
    stack_channels,
    voxel_map,
)
from medseg.io.nifti import read_nifti, write_nifti
from medseg.io.readers import ImageReader, read_geometry, read_image, reader_for, register_reader
from medseg.io.writers import write_channels, write_label_map, write_probabilities

__all__ = [
    "Geometry",
    "Image",
    "ImageReader",
    "SeriesInfo",
    "VoxelMap",
    "atomic_output",
    "check_label_map",
    "ensure_not_input",
    "grid_difference",
    "label_values",
    "list_dicom_series",
    "onto_grid",
    "read_dicom_series",
    "read_geometry",
    "read_image",
    "read_nifti",
    "reader_for",
    "register_reader",
    "require_finite",
    "require_invertible",
    "require_same_grid",
    "stack_channels",
    "voxel_map",
    "write_channels",
    "write_label_map",
    "write_nifti",
    "write_probabilities",
]
