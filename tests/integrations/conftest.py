"""Fixtures shared by the Slicer module's tests."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

MODULE_DIR = Path(__file__).resolve().parents[2] / "tools" / "slicer" / "MedSeg"


@pytest.fixture
def medseglib(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """``MedSegLib`` importable as Slicer would import it (the module folder on ``sys.path``)."""
    monkeypatch.syspath_prepend(str(MODULE_DIR))
    yield
    for name in [n for n in sys.modules if n == "MedSegLib" or n.startswith("MedSegLib.")]:
        del sys.modules[name]
