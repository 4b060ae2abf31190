"""Manifests: a JSON file listing a dataset's cases, its label table and a patient-level k-fold split.

File format (``format: medseg-manifest``, ``version: 1``)::

    {"layout": "brats", "labels": {...LabelTable...}, "channels": ["T1", "T1ce", "T2", "FLAIR"],
     "num_folds": 5, "seed": 0,
     "cases": [{"id": "BraTS2021_00000", "patient": "BraTS2021_00000", "fold": 3,
                "images": ["BraTS2021_00000/BraTS2021_00000_t1.nii.gz", ...],
                "label": "BraTS2021_00000/BraTS2021_00000_seg.nii.gz"}, ...]}

Paths are relative to the dataset root, which is given when the manifest is used, or which the
manifest names itself (``"root"``, relative to the manifest's own folder).

A hand-written manifest is a *file list*: any folder's files used as they lie, without renaming.
Only ``format``, ``labels``, ``channels`` and per case ``id`` and ``images`` are required; ``layout``
defaults to ``"files"``, ``patient`` to the case id, ``label`` to none (unlabelled). Cases without a
``fold`` are dealt into ``num_folds`` patient-level folds with ``seed`` (from the file, else from the
caller). A case may say which label values were annotated in it (``"labelled": [0, 1, 2, 4]``,
background included or not): a class missing from that list was not annotated there (e.g. an organ not
contoured), so training does not teach it as background and evaluation does not score it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medseg.data import brats as _brats  # noqa: F401  (registers the layout)
from medseg.data import nnunet as _nnunet  # noqa: F401  (registers "nnunet", and "msd" which it imports)
from medseg.data import openkbp as _openkbp  # noqa: F401  (registers the layout)
from medseg.data.layouts import SCANNERS, ScannedCase
from medseg.errors import MedsegInputError
from medseg.io.atomic import atomic_output
from medseg.io.image import Geometry, check_label_map, require_same_grid
from medseg.io.jsonfile import read_json
from medseg.io.readers import read_geometry, read_image
from medseg.labels import LabelTable, choose_label_table, get_label_table, require_known_values

FORMAT = "medseg-manifest"
VERSION = 1


@dataclass(frozen=True)
class ManifestCase(ScannedCase):
    """One case of a manifest: a scanned case plus its cross-validation fold."""

    fold: int


@dataclass(frozen=True)
class Manifest:
    """A dataset description; see the module docstring for the file format."""

    layout: str
    label_table: LabelTable
    channels: tuple[str, ...]
    cases: tuple[ManifestCase, ...]
    num_folds: int
    seed: int
    root: Path | None = None

    def split(self, fold: int) -> tuple[list[ManifestCase], list[ManifestCase]]:
        """(training, validation) labelled cases for ``fold``: validation is that fold's cases."""
        if not 0 <= fold < self.num_folds:
            raise MedsegInputError(f"fold {fold} is out of range 0..{self.num_folds - 1}")
        labelled = [c for c in self.cases if c.label is not None]
        return [c for c in labelled if c.fold != fold], [c for c in labelled if c.fold == fold]

    def to_dict(self) -> dict[str, Any]:
        """The JSON representation."""

        def case(c: ManifestCase) -> dict[str, Any]:
            entry = {"id": c.id, "patient": c.patient, "fold": c.fold, "images": list(c.images), "label": c.label}
            return entry if c.labelled is None else {**entry, "labelled": sorted(c.labelled)}

        data: dict[str, Any] = {
            "format": FORMAT,
            "version": VERSION,
            "layout": self.layout,
            "labels": self.label_table.to_dict(),
            "channels": list(self.channels),
            "num_folds": self.num_folds,
            "seed": self.seed,
        }
        if self.root is not None:
            data["root"] = str(self.root)
        return {**data, "cases": [case(c) for c in self.cases]}


def assign_folds(cases: tuple[ScannedCase, ...], *, num_folds: int, seed: int) -> list[ManifestCase]:
    """Deal shuffled patients round-robin into ``num_folds`` folds; all of a patient's cases share a fold."""
    if num_folds < 2:
        raise MedsegInputError(f"need at least 2 folds, got {num_folds}")
    patients = sorted({c.patient for c in cases})
    random.Random(seed).shuffle(patients)
    fold_of = {p: i % num_folds for i, p in enumerate(patients)}
    return [ManifestCase(c.id, c.images, c.label, c.patient, fold_of[c.patient], labelled=c.labelled) for c in cases]


def build_manifest(
    root: str | Path,
    *,
    layout: str = "brats",
    num_folds: int = 5,
    seed: int = 0,
    labels: LabelTable | None = None,
) -> Manifest:
    """Scan ``root`` with the ``layout`` scanner and assign patient-level folds (the manifest does not name
    ``root``: ``dataclasses.replace(manifest, root=...)`` before saving to make it self-contained).

    ``labels`` is the dataset's label table when named (``data.labels``, ``--labels``); it must hold every
    value of the table the layout implies, if it implies one. Without it the layout's table is taken, and
    a layout that cannot tell (BraTS PED cases: 2023's labels or 2024's) is an error listing the candidates.

    Raises:
        MedsegInputError: an unknown layout, a scan that fails, a named table lacking values of the
            layout's, or no table to take.
    """
    try:
        scanner = SCANNERS[layout]
    except KeyError:
        raise MedsegInputError(f"unknown layout {layout!r}; known: {', '.join(sorted(SCANNERS))}") from None
    root = Path(root)
    scanned = scanner(root)
    table = labels if labels is not None else scanned.label_table
    if table is None:  # raises, listing the candidates
        table = choose_label_table([get_label_table(n) for n in scanned.label_candidates], path=root)
    if labels is not None and scanned.label_table is not None:
        layout_values = scanned.label_table.labels
        require_known_values(layout_values, labels, path=root, what=f"the {layout} layout's label values")
    cases = assign_folds(scanned.cases, num_folds=num_folds, seed=seed)
    return Manifest(scanned.layout, table, scanned.channels, tuple(cases), num_folds, seed)


def save_manifest(manifest: Manifest, path: str | Path) -> Path:
    """Write the manifest as indented JSON, atomically; its root relative to the file's folder."""
    path = Path(path)
    if manifest.root is not None:
        relative = Path(os.path.relpath(manifest.root.absolute(), path.absolute().parent))
        manifest = dataclasses.replace(manifest, root=relative)
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(manifest.to_dict(), indent=1) + "\n")
    return path


def load_manifest(path: str | Path, *, num_folds: int = 5, seed: int = 0) -> Manifest:
    """Read a manifest file; ``num_folds`` and ``seed`` split a file list whose cases have no folds
    and that names neither (see the module docstring). A ``root`` it names is resolved against the
    manifest's folder.

    Raises:
        MedsegInputError: missing file, invalid JSON, or not a medseg manifest.
    """
    path = Path(path)
    manifest = manifest_from_dict(read_json(path, what="manifest file"), path=path, num_folds=num_folds, seed=seed)
    if manifest.root is not None and not manifest.root.is_absolute():
        manifest = dataclasses.replace(manifest, root=path.parent / manifest.root)
    return manifest


def _labelled(value: Any) -> frozenset[int] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise TypeError(f"labelled {value!r} (a list of label values)")
    return frozenset(value)


def manifest_from_dict(data: Any, *, path: str | Path, num_folds: int = 5, seed: int = 0) -> Manifest:
    """A manifest from its JSON (:meth:`Manifest.to_dict`, or a hand-written file list), read from
    ``path`` (named in errors).

    Raises:
        MedsegInputError: not a medseg manifest, or a malformed one (a duplicate case id, a
            ``labelled`` value outside the label table).
    """
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise MedsegInputError(f'not a medseg manifest (no "format": "{FORMAT}")', path=path)
    try:
        table = LabelTable.from_dict(data["labels"])
        channels = data["channels"]
        if not isinstance(channels, list) or not channels or not all(isinstance(c, str) and c for c in channels):
            raise ValueError("'channels' (a list of channel names)")
        num_folds, seed = int(data.get("num_folds", num_folds)), int(data.get("seed", seed))
        scanned = [
            ManifestCase(
                str(c["id"]),
                tuple(str(p) for p in c["images"]),
                c.get("label"),
                str(c.get("patient", c["id"])),
                int(c.get("fold", -1)),
                labelled=_labelled(c.get("labelled")),
            )
            for c in data["cases"]
        ]
    except (KeyError, TypeError, ValueError) as exc:
        raise MedsegInputError(f"malformed manifest: missing or invalid {exc}", path=path) from None
    ids = [c.id for c in scanned]
    if len(set(ids)) != len(ids):
        raise MedsegInputError(f"case {next(i for i in ids if ids.count(i) > 1)!r} is listed twice", path=path)
    for case in scanned:
        if len(case.images) != len(channels):
            raise MedsegInputError(
                f"case {case.id!r} lists {len(case.images)} images for the {len(channels)} channels"
                f" ({', '.join(channels)})",
                path=path,
            )
        require_known_values(case.labelled or (), table, path=path, what=f"case {case.id!r}: labelled values")
    if any(c.fold < 0 for c in scanned):
        scanned = assign_folds(tuple(scanned), num_folds=num_folds, seed=seed)
    root = data.get("root")
    return Manifest(
        str(data.get("layout", "files")),
        table,
        tuple(channels),
        tuple(scanned),
        num_folds,
        seed,
        None if root is None else Path(str(root)),
    )


def dataset_root(manifest: Manifest, root: str | Path | None) -> Path:
    """Where ``manifest``'s relative paths start: ``root`` when given, else the root the manifest names.

    Raises:
        MedsegInputError: neither is given.
    """
    if root is not None:
        return Path(root)
    if manifest.root is None:
        raise MedsegInputError('the manifest names no "root": give the dataset folder (data.root, --root)')
    return manifest.root


def check_case(case: ManifestCase, *, root: Path, table: LabelTable) -> list[str]:
    """Problems with one case, one line each naming the file: missing or unreadable files (any format of
    :func:`~medseg.io.read_image`), degenerate affines, images and label off the first image's grid
    (:func:`~medseg.io.require_same_grid`), label values outside ``table``."""
    problems: list[str] = []
    grids: list[tuple[Path, Geometry]] = []
    for path in [root / p for p in case.images] + ([root / case.label] if case.label else []):
        try:
            geometry = read_geometry(path)
            if grids:
                require_same_grid(geometry, grids[0][1], path=path, reference_path=grids[0][0])
        except MedsegInputError as exc:
            problems.append(str(exc))
            continue
        grids.append((path, geometry))
    if case.label is not None and not problems:
        try:
            check_label_map(read_image(root / case.label).array, table, path=root / case.label)
        except MedsegInputError as exc:
            problems.append(str(exc))
    return problems


def check_manifest(manifest: Manifest, *, root: str | Path) -> list[str]:
    """All problems of all cases (empty when the dataset is consistent)."""
    root = Path(root)
    problems: list[str] = []
    for case in manifest.cases:
        problems.extend(check_case(case, root=root, table=manifest.label_table))
    return problems


def require_consistent(manifest: Manifest, *, root: str | Path) -> None:
    """Raise :class:`MedsegInputError` with the first problem :func:`check_manifest` finds (and how many
    more there are); return when the dataset is consistent."""
    problems = check_manifest(manifest, root=root)
    if problems:
        more = f" (and {len(problems) - 1} more problem(s); run `medseg manifest check`)" if len(problems) > 1 else ""
        raise MedsegInputError(problems[0] + more)
