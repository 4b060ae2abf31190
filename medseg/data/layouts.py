"""Dataset layout scanners: a folder on disk -> the cases it holds, with their label table.

Each scanner returns a :class:`ScannedDataset`; :data:`SCANNERS` maps a layout name to its scanner.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from medseg.labels import LabelTable

IMAGE_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
"""File endings read as images, in the order a case's file is looked for (``.seg.nrrd`` label maps are
not images)."""


@dataclass(frozen=True)
class ScannedCase:
    """One case as found on disk. Paths are relative to the dataset root.

    Attributes:
        id: case identifier (e.g. ``BraTS2021_00000``).
        images: one file per input channel, in the model's channel order.
        label: the reference label map, or ``None`` for unlabelled (test) cases.
        patient: the patient the case belongs to; folds never split a patient.
        labelled: for a partially labelled case, the label values annotated in it (background always
            counts as annotated); ``None``: every value of the table.
    """

    id: str
    images: tuple[str, ...]
    label: str | None
    patient: str
    labelled: frozenset[int] | None = field(default=None, kw_only=True)

    def annotated(self, table: LabelTable) -> frozenset[int]:
        """The values of ``table`` annotated in this case: all of them unless ``labelled`` says otherwise."""
        if self.labelled is None:
            return frozenset(table.labels)
        return frozenset(v for v in table.labels if v == 0 or v in self.labelled)


@dataclass(frozen=True)
class ScannedDataset:
    """What a scanner found: the label table, channel names, cases, and layout details.

    ``label_table`` is ``None`` when the layout cannot tell which of ``label_candidates`` (table names)
    labels the cases, and those give label values different meanings (BraTS PED cases are labelled as in
    2023 or as in 2024): the table must then be named (:func:`~medseg.data.manifest.build_manifest`).
    """

    layout: str
    label_table: LabelTable | None
    channels: tuple[str, ...]
    cases: tuple[ScannedCase, ...]
    label_candidates: tuple[str, ...] = ()


Scanner = Callable[[Path], ScannedDataset]
SCANNERS: dict[str, Scanner] = {}


def register_layout(name: str) -> Callable[[Scanner], Scanner]:
    """Decorator registering a scanner for ``medseg manifest build --layout NAME``."""

    def wrap(scanner: Scanner) -> Scanner:
        SCANNERS[name] = scanner
        return scanner

    return wrap
