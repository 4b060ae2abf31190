"""Reading and writing images with their full geometry."""

from __future__ import annotations

from medseg.io.atomic import atomic_output
from medseg.io.image import Geometry, Image
from medseg.io.nifti import read_nifti, write_nifti

__all__ = ["Geometry", "Image", "atomic_output", "read_nifti", "write_nifti"]
