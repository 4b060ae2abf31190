"""Synthetic datasets for training and testing without downloads.

``medseg.phantoms.brats`` writes BraTS-layout brain MRI phantoms with gliomas (2021, 2023 and 2024 releases);
``medseg.phantoms.ct`` abdominal CT organ phantoms in MSD layout. Import the generator modules
directly; this package imports nothing heavy by itself.

A generator never replaces an existing file unless asked to (``overwrite=True``, ``--overwrite``): a
dataset folder may hold real cases under the same names (``BraTS2021_00000``).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from medseg.errors import MedsegInputError


def refuse_existing(targets: Iterable[Path], *, overwrite: bool) -> None:
    """Raise :class:`MedsegInputError` naming the first of ``targets`` (files or case folders) that
    exists, unless ``overwrite``."""
    if overwrite:
        return
    existing = next((t for t in targets if t.exists()), None)
    if existing is not None:
        raise MedsegInputError(
            "already exists; phantoms do not replace files (choose an empty folder, or --overwrite)", path=existing
        )
