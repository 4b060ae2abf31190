"""medseg's Slicer-free modules, as the MedSeg module imports them inside Slicer.

The module runs inference with whichever Python has medseg and torch (Slicer's own or an external one), but its
own code needs only medseg's standard-library modules: :mod:`medseg.protocol` (the records ``medseg`` prints and
the command lines that run it) and :mod:`medseg.integrations.slicer` (the module's Slicer-free helpers). They come
from the medseg installed in Slicer's Python, where ``pip install --no-deps medseg`` is enough.
This module imports neither Slicer nor Qt.
"""

from __future__ import annotations

try:
    from medseg import protocol
    from medseg.integrations import slicer as bridge
except ImportError as exc:
    raise ImportError(
        "medseg is not installed in Slicer's Python; install it from Slicer's Python console with"
        ' slicer.util.pip_install("--no-deps medseg") (from a source checkout: "--no-deps -e /path/to/medseg")'
    ) from exc

__all__ = ["bridge", "protocol"]
