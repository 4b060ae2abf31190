"""medseg: 3D medical image segmentation on MONAI and PyTorch."""

from __future__ import annotations

__version__ = "0.1.0"
