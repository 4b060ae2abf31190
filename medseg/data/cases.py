"""Finding the cases to predict in a path: BraTS case folders, nnU-Net channel files, or single files."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from medseg.data.brats import case_files, detect_release, find_case_dirs
from medseg.errors import MedsegInputError

_NNUNET_CHANNEL = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})\.nii(\.gz)?$")
_NIFTI = re.compile(r"\.nii(\.gz)?$")


@dataclass(frozen=True)
class InputCase:
    """One case to predict: its id and one file per model input channel, in channel order."""

    id: str
    images: tuple[Path, ...]


def _nnunet_cases(folder: Path, num_channels: int) -> list[InputCase]:
    groups: dict[str, dict[int, Path]] = {}
    for path in sorted(folder.iterdir()):
        match = _NNUNET_CHANNEL.match(path.name)
        if match and path.is_file():
            groups.setdefault(match["case"], {})[int(match["channel"])] = path
    cases = []
    for case_id, channels in sorted(groups.items()):
        missing = [i for i in range(num_channels) if i not in channels]
        if missing:
            raise MedsegInputError(f"missing channel file {case_id}_{missing[0]:04d}.nii.gz", path=folder)
        cases.append(InputCase(case_id, tuple(channels[i] for i in range(num_channels))))
    return cases


def discover_cases(path: str | Path, *, num_channels: int, layout: str) -> list[InputCase]:
    """The cases under ``path``, sorted by id.

    Accepted, in this order:

    - a single NIfTI file (one-channel models): the case id is the file name without extension;
    - a folder of nnU-Net-style channel files ``CASE_0000.nii.gz`` ... ``CASE_{C-1:04d}.nii.gz``;
    - for BraTS models, one BraTS case folder or a folder of them (four modalities each).

    Raises:
        MedsegInputError: the path does not exist or holds no case in any accepted form.
    """
    path = Path(path)
    if path.is_file():
        if num_channels != 1:
            raise MedsegInputError(f"the model needs {num_channels} input channels, got one file", path=path)
        return [InputCase(_NIFTI.sub("", path.name), (path,))]
    if not path.is_dir():
        raise MedsegInputError("input not found", path=path)
    cases = _nnunet_cases(path, num_channels)
    if cases:
        return cases
    if layout == "brats":
        found = []
        for case_dir in find_case_dirs(path):
            images, _ = case_files(case_dir, detect_release(case_dir))
            found.append(InputCase(case_dir.name, tuple(images)))
        return found
    if num_channels == 1:
        files = sorted(p for p in path.iterdir() if p.is_file() and _NIFTI.search(p.name))
        if files:
            return [InputCase(_NIFTI.sub("", p.name), (p,)) for p in files]
    raise MedsegInputError("no cases found (expected CASE_0000.nii.gz channel files or case folders)", path=path)
