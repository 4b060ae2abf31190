"""Finding the cases to predict under a path, and splitting them into shards.

A *case* is one subject to segment: one image file per model input channel (in the checkpoint's channel
order), one 4-D file holding all channels (MSD), or one DICOM series. :func:`discover_cases` walks a
folder recursively and recognises, per folder:

- a DICOM series folder (files known by content, whatever their names): one case per image series (id: the
  folder name, plus ``_2``, ``_3``... when a folder holds several series); a series that is not a volume
  (a localizer, a single image) is no case, and a note on stderr names it;
- a BraTS case folder (``<case>/<case>_t1.nii.gz`` ... or the 2023 ``-t1n`` naming, in any image format:
  ``<case>_t1.nrrd`` too): one case, the modalities ordered as the checkpoint's channels;
- nnU-Net channel files ``<case>_0000.nii.gz`` ... ``<case>_{C-1:04d}.nii.gz``: one case per ``<case>``
  (a missing channel file stays in the case and fails it, naming the file);
- any other image file (NIfTI, NRRD, MHA/MHD): one case per file. For a multi-channel model the file
  must be 4-D with the channels in the checkpoint's order (the MSD convention);
- an MSD or nnU-Net dataset root (``imagesTs/`` beside ``dataset.json``): only ``imagesTs/`` is searched, and
  the ``dataset.json`` (:mod:`medseg.data.dataset_json`) must name as many channels as the model takes.

An explicit JSON list (``--cases FILE``) replaces the discovery: ``[{"id": "a", "images": [...]}, ...]``
with ``images`` a list in channel order or an object ``{channel name: path}``; relative paths are
relative to the JSON file's folder.

Nothing here imports torch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from medseg.data.brats import detect_release, release_file
from medseg.data.dataset_json import DATASET_JSON, read_dataset_json
from medseg.data.layouts import IMAGE_ENDINGS
from medseg.data.manifest import FORMAT as MANIFEST_FORMAT
from medseg.data.manifest import dataset_root, load_manifest
from medseg.errors import MedsegInputError, file_not_found
from medseg.io.dicom import is_dicom_file
from medseg.io.jsonfile import read_json

_NNUNET_CHANNEL = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})(?P<ending>\.nii\.gz|\.nii|\.nrrd|\.mha|\.mhd)$")
_SHARD = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


@dataclass(frozen=True)
class InputCase:
    """One case to predict.

    Attributes:
        id: the case id; outputs are named after it (``<id>.nii.gz``).
        images: one path per model input channel in the checkpoint's channel order, or a single path
            holding every channel (a 4-D file, or a DICOM series folder).
        series_uid: for a DICOM series case, its SeriesInstanceUID (``images`` is then the folder).
        series_description: for a DICOM series case found in a folder, its SeriesDescription ("" when
            it has none), which tells apart the cases of a folder holding several series.
    """

    id: str
    images: tuple[Path, ...]
    series_uid: str | None = None
    series_description: str | None = None

    @property
    def is_dicom(self) -> bool:
        """Whether the case is a DICOM series (the only input a DICOM-SEG can be written for)."""
        return self.series_uid is not None


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count`` (1-based, ``1 <= index <= count``), as given by ``--shard I/N``."""

    index: int
    count: int

    @classmethod
    def parse(cls, text: str) -> Shard:
        """Parse ``"I/N"``.

        Raises:
            MedsegInputError: not of the form ``I/N`` with ``1 <= I <= N``.
        """
        match = _SHARD.match(text)
        if not match or not 1 <= int(match[1]) <= int(match[2]):
            raise MedsegInputError(f"--shard must be I/N with 1 <= I <= N (e.g. 1/4), got {text!r}")
        return cls(int(match[1]), int(match[2]))

    def contains(self, case_id: str) -> bool:
        """Whether ``case_id`` belongs to this shard.

        The shard of a case depends on its id alone (SHA-256 of the id, modulo ``count``), so every
        process or machine agrees on it even when they list slightly different sets of cases, and
        adding a case never moves another one to a different shard.
        """
        digest = hashlib.sha256(case_id.encode("utf-8")).digest()
        return int.from_bytes(digest[:8], "big") % self.count == self.index - 1

    @property
    def tag(self) -> str:
        """``shard-I-of-N``, used in the shard's summary file name."""
        return f"shard-{self.index}-of-{self.count}"


def select_shard(cases: Iterable[InputCase], shard: Shard | None) -> list[InputCase]:
    """The cases of ``shard`` (all of them when ``shard`` is None), in their original order."""
    return [c for c in cases if shard is None or shard.contains(c.id)]


def _image_stem(path: Path) -> str | None:
    """The file name without its image ending, or None when ``path`` is not an image file."""
    lower = path.name.lower()
    if lower.endswith(".seg.nrrd"):
        return None
    for ending in IMAGE_ENDINGS:
        if lower.endswith(ending):
            return path.name[: -len(ending)]
    return None


def _brats_channel_order(channels: Sequence[str], modalities: Sequence[str], names: Sequence[str]) -> list[str]:
    """The release's modality suffixes in the checkpoint's channel order (release order if names differ)."""
    lookup = {n.lower(): m for n, m in zip(names, modalities, strict=True)}
    lookup.update({m.lower(): m for m in modalities})
    if channels and all(c.lower() in lookup for c in channels):
        return [lookup[c.lower()] for c in channels]
    return list(modalities)


def _dicom_cases(folder: Path) -> list[InputCase]:
    """One case per series of the DICOM files in ``folder``; a series that is not a volume (a localizer, a
    single image) is no case, and a note on stderr says so."""
    from medseg.io.dicom import list_dicom_series

    found = list_dicom_series(folder, recursive=False, include_skipped=True)
    for s in found:
        if s.skip_reason is not None:
            note = f"{folder}: skipping DICOM series {s.series_uid} ({s.description}): {s.skip_reason}"
            print(f"medseg: note: {note}", file=sys.stderr)
    series = [s for s in found if s.skip_reason is None]
    if not series and not found:
        return [InputCase(folder.name, (folder,), series_uid="")]  # fails when read, naming the folder
    return [
        InputCase(
            folder.name if n == 0 else f"{folder.name}_{n + 1}",
            (folder,),
            series_uid=s.series_uid,
            series_description=s.description,
        )
        for n, s in enumerate(series)
    ]


def _folder_cases(folder: Path, files: list[Path], channels: Sequence[str]) -> list[InputCase]:
    """The cases made of the files directly in ``folder`` (no recursion)."""
    if any(is_dicom_file(p) for p in files):
        return _dicom_cases(folder)
    try:
        release = detect_release(folder)
    except MedsegInputError:
        release = None
    if release is not None:
        order = _brats_channel_order(channels, release.modalities, release.channel_names)
        return [InputCase(folder.name, tuple(release_file(folder, release, m) for m in order))]
    cases = []
    groups: dict[str, dict[int, Path]] = {}
    endings: dict[str, str] = {}
    for path in files:
        match = _NNUNET_CHANNEL.match(path.name)
        if match and len(channels) > 1:
            groups.setdefault(match["case"], {})[int(match["channel"])] = path
            endings[match["case"]] = match["ending"]
            continue
        if match and match["channel"] == "0000":  # one-channel model: CASE_0000.nii.gz is case CASE
            cases.append(InputCase(match["case"], (path,)))
            continue
        stem = _image_stem(path)
        if stem is not None:
            cases.append(InputCase(stem, (path,)))
    for case_id, found in groups.items():
        images = tuple(found.get(i, folder / f"{case_id}_{i:04d}{endings[case_id]}") for i in range(len(channels)))
        cases.append(InputCase(case_id, images))
    return cases


def _walk(folder: Path, exclude: set[Path], seen: set[Path] | None = None) -> Iterable[tuple[Path, list[Path]]]:
    """``(folder, files)`` for ``folder`` and every sub-folder, sorted, skipping hidden and excluded ones.

    Each real folder is searched once: a symbolic link to a folder already searched (a cycle, or a
    second way to the same folder) is not followed. ``files`` holds the regular files and the symbolic
    links with an image's name that lead nowhere (dangling, or a loop), which become cases that fail
    when read, naming the link, rather than cases lost without a word.

    Raises:
        MedsegInputError: a folder that cannot be listed (no permission), naming it.
    """
    seen = set() if seen is None else seen
    seen.add(Path(os.path.realpath(folder)))
    try:
        entries = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    except OSError as exc:
        raise MedsegInputError(f"cannot list the folder: {exc.strerror or exc}", path=folder) from None
    files = [p for p in entries if p.is_file() or (_image_stem(p) is not None and p.is_symlink() and not p.exists())]
    yield folder, files
    for sub in entries:
        real = Path(os.path.realpath(sub))  # unlike Path.resolve, no error on a symbolic link loop
        if sub.is_dir() and real not in exclude and real not in seen:
            yield from _walk(sub, exclude, seen)


def _unique_ids(cases: list[InputCase], root: Path) -> list[InputCase]:
    """Cases whose ids clash (same name in different folders) get their folder path as id prefix."""
    counts: dict[str, int] = {}
    for case in cases:
        counts[case.id] = counts.get(case.id, 0) + 1
    out = []
    for case in cases:
        if counts[case.id] > 1:
            where = case.images[0] if case.is_dicom else case.images[0].parent
            try:
                rel = where.relative_to(root)
            except ValueError:
                rel = Path(where.name)
            prefix = "__".join(rel.parts[:-1] if case.is_dicom else rel.parts)
            case = dataclasses.replace(case, id=f"{prefix}__{case.id}" if prefix else case.id)
        out.append(case)
    ids = [c.id for c in out]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise MedsegInputError(f"several cases share the id {duplicates[0]!r}; list them with --cases", path=root)
    return out


def _require_channel_count(described: Sequence[str], channels: Sequence[str], *, what: str, path: Path) -> None:
    """Refuse cases whose description (``path``) names another number of channels than the model takes."""
    if len(described) != len(channels):
        raise MedsegInputError(
            f"{what} cases have {len(described)} channel(s) {list(described)}; the model takes {len(channels)}"
            f" {list(channels)}",
            path=path,
        )


def read_cases_file(path: str | Path, *, channels: Sequence[str]) -> list[InputCase]:
    """Cases from a JSON list ``[{"id": ..., "images": [...] or {channel: path}}, ...]``, sorted by id;
    or from a medseg manifest (a file list, :mod:`medseg.data.manifest`): every case, its images under
    the root the manifest names.

    Raises:
        MedsegInputError: unreadable JSON, a malformed entry, a duplicate id, or an ``images`` object
            whose keys are not the checkpoint's channel names; a manifest naming no root, or whose
            channel count differs from the checkpoint's.
    """
    path = Path(path)
    data = read_json(path, what="cases file")
    if isinstance(data, dict) and data.get("format") == MANIFEST_FORMAT:
        manifest = load_manifest(path)
        root = dataset_root(manifest, None)
        _require_channel_count(manifest.channels, channels, what="the manifest's", path=path)
        return [InputCase(c.id, tuple(root / p for p in c.images)) for c in sorted(manifest.cases, key=lambda c: c.id)]
    if not isinstance(data, list):
        raise MedsegInputError('expected a JSON list of {"id": ..., "images": [...]} objects', path=path)
    cases: dict[str, InputCase] = {}
    for n, entry in enumerate(data):
        where = f"entry {n}"
        if not isinstance(entry, dict) or not isinstance(entry.get("id"), str) or not entry["id"].strip():
            raise MedsegInputError(f'{where}: needs a non-empty string "id"', path=path)
        case_id, images = entry["id"], entry.get("images")
        if isinstance(images, dict):
            if set(images) != set(channels):
                raise MedsegInputError(
                    f"{where} ({case_id}): image keys {sorted(images)} are not the model's channels {list(channels)}",
                    path=path,
                )
            images = [images[c] for c in channels]
        if not isinstance(images, list) or not images or not all(isinstance(p, str) for p in images):
            raise MedsegInputError(f'{where} ({case_id}): "images" must be a non-empty list of paths', path=path)
        if case_id in cases:
            raise MedsegInputError(f"{where}: duplicate case id {case_id!r}", path=path)
        cases[case_id] = InputCase(case_id, tuple((path.parent / p) for p in images))
    return [cases[k] for k in sorted(cases)]


def discover_cases(
    path: str | Path,
    *,
    channels: Sequence[str],
    exclude: Iterable[str | Path] = (),
) -> list[InputCase]:
    """The cases under ``path`` (a file, a DICOM series folder, or a folder searched recursively), sorted by id.

    Args:
        path: an image file, a DICOM file (its series; known by content, any name), a DICOM folder, or a folder
            of cases in any of the layouts of the module docstring.
        channels: the checkpoint's input channel names, in order.
        exclude: folders not to search (the output folder, when it lies inside ``path``).

    Raises:
        MedsegInputError: the path does not exist, holds no case, or two cases share an id; a dataset root's
            ``dataset.json`` is malformed or names another number of channels than ``channels``.
    """
    path = Path(path)
    if path.is_file():
        if is_dicom_file(path):
            return _dicom_file_case(path)
        stem = _image_stem(path)
        if stem is None:
            raise MedsegInputError(f"not an image file; expected one of {', '.join(IMAGE_ENDINGS)}", path=path)
        match = _NNUNET_CHANNEL.match(path.name)
        return [InputCase(match["case"] if match and len(channels) == 1 else stem, (path,))]
    if path.is_symlink() and not path.exists():
        raise file_not_found(path)  # saying where the link fails
    if not path.is_dir():
        raise MedsegInputError("input not found", path=path)
    root = path
    if (path / "imagesTs").is_dir() and (path / DATASET_JSON).is_file():
        _require_channel_count(
            read_dataset_json(path).channels, channels, what="the dataset's", path=path / DATASET_JSON
        )
        root = path / "imagesTs"
    excluded = {Path(os.path.realpath(p)) for p in exclude}
    cases: list[InputCase] = []
    for folder, files in _walk(root, excluded):
        cases.extend(_folder_cases(folder, files, channels))
    if not cases:
        raise MedsegInputError(
            "no cases found (expected image files, CASE_0000.nii.gz channel files, BraTS case folders or DICOM series)",
            path=path,
        )
    return sorted(_unique_ids(cases, root), key=lambda c: c.id)


def _dicom_file_case(path: Path) -> list[InputCase]:
    """The case of the DICOM series that the file ``path`` belongs to."""
    from medseg.io.dicom import list_dicom_series
    from medseg.io.readers import dicom_series_uid

    uid = dicom_series_uid(path)
    found = [s for s in list_dicom_series(path.parent, recursive=False, include_skipped=True) if s.series_uid == uid]
    description = found[0].description if found else None
    return [InputCase(path.parent.name, (path.parent,), series_uid=uid, series_description=description)]
