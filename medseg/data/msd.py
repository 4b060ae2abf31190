"""The Medical Segmentation Decathlon layout: ``dataset.json`` plus ``imagesTr/``, ``labelsTr/``, ``imagesTs/``.

``dataset.json`` in the MSD style (:mod:`medseg.data.dataset_json`) lists the cases under ``"training"``
(image and label) and ``"test"`` (image).

Multi-modal MSD tasks (Task01 BrainTumour, Task05 Prostate) store all channels of a case in one 4-D
NIfTI file, channels last: such a case has ONE image path whose header holds as many channels as
``modality`` names. Test cases become unlabelled manifest cases.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any

import nibabel as nib

from medseg.data.dataset_json import read_dataset_json
from medseg.data.layouts import ScannedCase, ScannedDataset, register_layout
from medseg.errors import MedsegInputError
from medseg.labels import PALETTE, LabelTable


def classes_table(name: str, labels: dict[int, str]) -> LabelTable:
    """A ``kind="classes"`` table for ``labels`` (value -> name), coloured from :data:`PALETTE`."""
    colors = {v: PALETTE[(v - 1) % len(PALETTE)] for v in labels if v != 0}
    return LabelTable(name=name, labels=dict(sorted(labels.items())), kind="classes", colors=colors)


def _resolve(root: Path, entry: Any, json_path: Path, what: str) -> str:
    """``"./imagesTr/x.nii.gz"`` -> ``"imagesTr/x.nii.gz"``, checked to exist inside ``root``."""
    if not isinstance(entry, str) or not entry:
        raise MedsegInputError(f"dataset.json {what} entry {entry!r} is not a file path", path=json_path)
    rel = PurePosixPath(entry)
    if rel.is_absolute() or ".." in rel.parts:
        raise MedsegInputError(
            f"dataset.json {what} path {entry!r} must stay inside the dataset folder", path=json_path
        )
    rel_str = str(rel)  # PurePosixPath drops the leading "./"
    if not (root / rel_str).is_file():
        raise MedsegInputError(f"listed in dataset.json ({what}) but not found", path=root / rel_str)
    return rel_str


def image_channels(path: Path) -> int:
    """Channel count from a NIfTI header: 1 for a 3-D image, N for a 4-D ``(X, Y, Z, N)`` image.

    Raises:
        MedsegInputError: unreadable header, or not 3-D/4-D.
    """
    try:
        shape = nib.load(str(path)).shape
    except Exception as exc:
        raise MedsegInputError(f"cannot read image header: {exc}", path=path) from None
    if len(shape) == 3:
        return 1
    if len(shape) == 4:
        return int(shape[3])
    raise MedsegInputError(f"expected a 3-D or 4-D image, got shape {shape}", path=path)


def _case_id(rel: str) -> str:
    name = PurePosixPath(rel).name
    for ending in (".nii.gz", ".nii"):
        if name.endswith(ending):
            return name[: -len(ending)]
    return name.split(".")[0]


@register_layout("msd")
def scan_msd(root: Path) -> ScannedDataset:
    """Scan a Medical Segmentation Decathlon folder through its ``dataset.json``.

    Label table: ``kind="classes"``, named after ``"name"``, values and names from ``"labels"``. Channels:
    ``"modality"`` names in key order. Each training entry is a labelled case, each ``"test"`` entry an
    unlabelled one; the case id (and patient) is the image file name without ``.nii.gz``.

    Raises:
        MedsegInputError: ``dataset.json`` missing or malformed; a listed file missing (naming it); an
            image whose channel count (1 for 3-D, N for 4-D) differs from the number of modalities.
    """
    root = Path(root)
    meta = read_dataset_json(root, style="msd")
    json_path = meta.path
    channels = meta.channels
    training, test = meta.cases("training"), meta.cases("test")
    if not training and not test:
        raise MedsegInputError('dataset.json lists no cases in "training" or "test"', path=json_path)

    cases: list[ScannedCase] = []
    entries: list[tuple[str, str | None]] = []
    for entry in training:
        if not isinstance(entry, dict) or "image" not in entry or "label" not in entry:
            raise MedsegInputError(f'training entry {entry!r} needs "image" and "label"', path=json_path)
        entries.append(
            (_resolve(root, entry["image"], json_path, "image"), _resolve(root, entry["label"], json_path, "label"))
        )
    for entry in test:
        image = entry.get("image") if isinstance(entry, dict) else entry  # some converters write {"image": ...}
        entries.append((_resolve(root, image, json_path, "test image"), None))

    seen: set[str] = set()
    for image, label in entries:
        case_id = _case_id(image)
        if case_id in seen:
            raise MedsegInputError(f"case {case_id!r} is listed twice in dataset.json", path=root / image)
        seen.add(case_id)
        count = image_channels(root / image)
        if count != len(channels):
            raise MedsegInputError(
                f"image has {count} channel(s) but dataset.json modality lists {len(channels)} ({', '.join(channels)})",
                path=root / image,
            )
        cases.append(ScannedCase(id=case_id, images=(image,), label=label, patient=case_id))
    return ScannedDataset("msd", classes_table(meta.name, meta.labels), channels, tuple(cases))
