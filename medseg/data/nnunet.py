"""The nnU-Net v2 raw dataset layout: ``dataset.json``, ``imagesTr/CASE_XXXX<ending>``, ``labelsTr/CASE<ending>``.

``dataset.json``::

    {"channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1, ...},
     "numTraining": 30, "file_ending": ".nii.gz"}

Note that ``labels`` maps *name -> value*, the reverse of MSD. Each input channel is its own file, with
a four-digit channel suffix (``liver_001_0000.nii.gz``); cases are found by listing ``imagesTr`` and
``labelsTr``. ``imagesTs`` (if present) gives unlabelled cases. Region-based label definitions
(a list of values per name) are not supported yet.
"""

from __future__ import annotations

import re
from pathlib import Path

from medseg.data.dataset_json import read_dataset_json
from medseg.data.layouts import ScannedCase, ScannedDataset, register_layout
from medseg.data.msd import classes_table
from medseg.errors import MedsegInputError

SUPPORTED_ENDINGS = (".nii.gz", ".nii")


def _cases_in(folder: Path, ending: str, channel_suffix: bool) -> set[str]:
    if not folder.is_dir():
        return set()
    pattern = re.compile(rf"^(.+)_\d{{4}}{re.escape(ending)}$" if channel_suffix else rf"^(.+){re.escape(ending)}$")
    ids = set()
    for p in folder.iterdir():
        match = pattern.match(p.name)
        if match and not p.name.startswith("."):
            ids.add(match.group(1))
    return ids


def _case_images(root: Path, folder: str, case_id: str, n_channels: int, ending: str) -> tuple[str, ...]:
    images = tuple(f"{folder}/{case_id}_{c:04d}{ending}" for c in range(n_channels))
    for rel in images:
        if not (root / rel).is_file():
            raise MedsegInputError(f"missing channel file of case {case_id!r}", path=root / rel)
    return images


@register_layout("nnunet")
def scan_nnunet(root: Path) -> ScannedDataset:
    """Scan an nnU-Net v2 raw dataset folder (``nnUNet_raw/DatasetXXX_Name``).

    Label table: ``kind="classes"`` named after ``"name"`` (or the folder), from ``"labels"`` (name ->
    value). Channels: ``"channel_names"`` in key order; a case's images are its ``_0000``, ``_0001``, ...
    files in that order. Case id and patient are the file name without channel suffix and ending.

    Raises:
        MedsegInputError: ``dataset.json`` missing or malformed; an unsupported ``file_ending``; a case
            missing a channel file or its label (naming the expected file); no cases.
    """
    root = Path(root)
    meta = read_dataset_json(root, style="nnunet")
    channels = meta.channels
    ending = str(meta.data.get("file_ending", ".nii.gz"))
    if ending not in SUPPORTED_ENDINGS:
        raise MedsegInputError(
            f"file_ending {ending!r} is not supported (use {' or '.join(SUPPORTED_ENDINGS)})", path=meta.path
        )

    cases: list[ScannedCase] = []
    train_ids = _cases_in(root / "imagesTr", ending, True) | _cases_in(root / "labelsTr", ending, False)
    for case_id in sorted(train_ids):
        images = _case_images(root, "imagesTr", case_id, len(channels), ending)
        label = f"labelsTr/{case_id}{ending}"
        if not (root / label).is_file():
            raise MedsegInputError(f"missing label of training case {case_id!r}", path=root / label)
        cases.append(ScannedCase(id=case_id, images=images, label=label, patient=case_id))
    for case_id in sorted(_cases_in(root / "imagesTs", ending, True)):
        if case_id in train_ids:
            raise MedsegInputError(f"case {case_id!r} is in both imagesTr and imagesTs", path=root / "imagesTs")
        cases.append(
            ScannedCase(
                id=case_id,
                images=_case_images(root, "imagesTs", case_id, len(channels), ending),
                label=None,
                patient=case_id,
            )
        )
    if not cases:
        raise MedsegInputError(f"no cases (imagesTr/<case>_0000{ending}) found", path=root)
    return ScannedDataset("nnunet", classes_table(meta.name, meta.labels), channels, tuple(cases))
