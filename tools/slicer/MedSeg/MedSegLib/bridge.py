"""Access to ``medseg.integrations.slicer`` from inside Slicer, whether or not medseg is installed there.

The module runs inference with whichever Python has medseg and torch (Slicer's own or an external
one), but its own code needs only medseg's standard-library helpers. They are imported from an
installed medseg when there is one (``pip install --no-deps medseg`` is enough), and otherwise loaded
straight from the source checkout this module lives in (``tools/slicer/MedSeg`` inside the repo).
This module imports neither Slicer nor Qt.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

_CHECKOUT_FILE = Path(__file__).resolve().parents[4] / "medseg" / "integrations" / "slicer.py"
_STANDALONE_NAME = "medseg_slicer_bridge"


def load_bridge() -> ModuleType:
    """The ``medseg.integrations.slicer`` module.

    Raises:
        ImportError: medseg is not installed in this Python and this module is not inside a medseg
            source checkout; the message says how to fix it.
    """
    try:
        from medseg.integrations import slicer as module
    except ImportError:
        pass
    else:
        return module
    if _STANDALONE_NAME in sys.modules:
        return sys.modules[_STANDALONE_NAME]
    if not _CHECKOUT_FILE.is_file():
        raise ImportError(
            "medseg is not installed in Slicer's Python; install it with "
            'slicer.util.pip_install("medseg") (or "--no-deps medseg" when inference runs in an external Python)'
        )
    spec = importlib.util.spec_from_file_location(_STANDALONE_NAME, _CHECKOUT_FILE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[_STANDALONE_NAME] = module  # dataclasses resolve their module through sys.modules
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[_STANDALONE_NAME]
        raise
    return module


bridge = load_bridge()
