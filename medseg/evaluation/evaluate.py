"""Evaluate a folder of predicted label maps against a reference dataset: per-case and summary metrics.

Predictions are ``<case>`` label maps in one folder in any format medseg reads and writes
(:data:`LABEL_MAP_ENDINGS`: NIfTI, NRRD, Slicer ``.seg.nrrd``, MHA/MHD; and :data:`DICOM_SEG_ENDING`),
as in BraTS challenge submissions and as ``medseg predict`` writes them. References are found by a *layout* function
(see :data:`REFERENCE_LAYOUTS`): BraTS (``<case>/<case>_seg.nii.gz`` in 2021, ``<case>/<case>-seg.nii.gz``
in 2023, or another image ending), MSD (``labelsTs/<case>.nii.gz``, else ``labelsTr/``) or a flat folder of
``<case>`` label maps. Supporting another layout means writing one small function that returns
:class:`References` and adding it to that tuple.

A prediction must lie on its reference's grid; one stored on the same voxels in another axis order or
direction (a LAS label beside an LPS grid) is moved onto it voxel for voxel, with a note
(:func:`~medseg.io.onto_grid`), and a DICOM-SEG without its empty frames is placed on it.

Metrics are Dice, HD95 in mm and NSD at a tolerance in mm (:mod:`medseg.evaluation.metrics`, BraTS empty-mask
rules, with the :class:`~medseg.evaluation.metrics.Scoring` of the table's BraTS year or medseg's ``voxels``),
on the reference's voxel grid and spacing, for each set of :meth:`LabelTable.evaluation_sets`
(WT/TC/ET for BraTS, one per organ for class tables). A region empty in both prediction and reference follows
the table's :data:`EMPTY_BOTH_RULES`: it scores 1 for BraTS (region tables), as the challenge does, and is
not scored for class (organ) tables. Where the prediction folder also holds a case's probabilities
(``<case>_probabilities.nii.gz``, ``medseg predict --save-probabilities``), their expected calibration error
is scored too (:mod:`medseg.evaluation.calibration`).
"""

from __future__ import annotations

import csv
import json
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from medseg.data.brats import release_file
from medseg.data.dataset_json import DATASET_JSON, dataset_json_from_dict
from medseg.errors import MedsegInputError, OutputError
from medseg.evaluation.calibration import ECE_BINS, Bins, calibration_of_case
from medseg.evaluation.files import (
    LESION_METRICS_CSV,
    METRICS_CSV,
    SIZE_COUNTS,
    Metrics,
    write_lesion_metrics_csv,
    write_metrics_csv,
)
from medseg.evaluation.lesion_wise import (
    LESION_RULE_TABLES,
    LesionRules,
    LesionScore,
    check_rules_table,
    get_lesion_rules,
    lesion_wise_label_maps,
)
from medseg.evaluation.metrics import (
    NSD_TOLERANCE_MM,
    RegionScore,
    Scoring,
    check_nsd_tolerance,
    default_scoring,
    get_scoring,
    score_label_maps,
)
from medseg.evaluation.plot import plot_scores
from medseg.io import Image, atomic_output, check_label_map, label_values, onto_grid, read_image, require_same_grid
from medseg.io.jsonfile import read_json
from medseg.labels import (
    LABEL_TABLES,
    LabelTable,
    brats_label_candidates,
    brats_namings,
    choose_label_table,
    get_label_table,
)
from medseg.parallel import map_in_processes
from medseg.protocol import LABELS_JSON, PROBABILITIES_SUFFIX, UNCERTAINTY_SUFFIX

LABEL_MAP_ENDINGS = (".nii.gz", ".nii", ".seg.nrrd", ".nrrd", ".nhdr", ".mha", ".mhd")
"""The file endings of label maps, predictions and references alike."""

DICOM_SEG_ENDING = ".dcm"
"""The file ending of a DICOM-SEG prediction (``medseg predict --format dicom-seg``); not of references,
since a folder of DICOM slices holds no label maps."""

SUMMARY_JSON = "summary.json"
METRICS_PNG = "metrics.png"
CALIBRATION_CSV = "calibration.csv"

EmptyBothRule = Literal["one", "unscored"]

EMPTY_BOTH_RULES: dict[str, EmptyBothRule] = {"regions": "one", "classes": "unscored"}
"""What a region empty in both prediction and reference scores, by :attr:`LabelTable.kind`: ``"one"``
(Dice 1, HD95 0, NSD 1: the BraTS challenges' rule, for its region tables), or ``"unscored"`` (organ
benchmarks: the case is left out of that region's mean and counted in its ``"empty_both"``), so a
wrong table, whose organs are in no map, cannot score 1 for them."""


@dataclass(frozen=True)
class References:
    """Reference label maps found in a dataset folder.

    Attributes:
        layout: which layout matched (``"brats2021"``, ``"brats2023"``, ``"msd"``, ``"flat"``).
        files: case id -> reference label map path, sorted by case id.
        label_table: name of the label table the layout implies, or ``None`` if file names do not tell.
        label_candidates: when they do not, the tables file names and case ids allow (BraTS since 2023:
            :func:`~medseg.labels.brats_label_candidates`); none: every table of the registry.
        dataset_json: the dataset's ``dataset.json`` (MSD/nnU-Net), or the medseg manifest the
            references come from, when there is one; ``labels="auto"`` reads the label table from it.
        not_annotated: case id -> label values not annotated in that case (a partially labelled
            manifest's ``labelled``); those are not scored there.
    """

    layout: str
    files: dict[str, Path]
    label_table: str | None = None
    label_candidates: tuple[str, ...] = ()
    dataset_json: Path | None = None
    not_annotated: dict[str, frozenset[int]] = field(default_factory=dict)


def _listed_file(path: Path) -> bool:
    """Whether ``path`` is a file, or a symbolic link that leads nowhere (dangling, or a loop): such a
    link is read, and fails naming itself, rather than passed over as a case without a file."""
    return path.is_file() or (path.is_symlink() and not path.exists())


def _label_map_stem(name: str, endings: Sequence[str]) -> str | None:
    """``name`` without its ending among ``endings`` (the longest that fits); ``None`` for another file."""
    lower = name.lower()
    ending = max((e for e in endings if lower.endswith(e)), key=len, default=None)
    return None if ending is None else name[: -len(ending)]


def _label_files(folder: Path, endings: Sequence[str] = LABEL_MAP_ENDINGS) -> dict[str, Path]:
    """Case id -> path for every visible ``<case>`` label map directly in ``folder`` (any of ``endings``;
    not the ``<case>_probabilities.nii.gz`` and ``<case>_uncertainty.nii.gz`` of ``medseg predict``).

    Raises:
        MedsegInputError: two files of one case (``a.nii.gz`` and ``a.seg.nrrd``), naming both.
    """
    found: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        stem = _label_map_stem(p.name, endings)
        beside = (PROBABILITIES_SUFFIX, UNCERTAINTY_SUFFIX)  # what medseg predict writes beside a label map
        if stem is None or p.name.startswith(".") or p.name.endswith(beside) or not _listed_file(p):
            continue
        if stem in found:
            raise MedsegInputError(f"two label maps of case {stem!r}: {found[stem].name} and {p.name}", path=folder)
        found[stem] = p
    return dict(sorted(found.items()))


def _dataset_json(folder: Path) -> Path | None:
    """``folder``'s ``dataset.json``, when it has one."""
    path = folder / DATASET_JSON
    return path if path.is_file() else None


def find_brats_references(ref_dir: Path) -> References | None:
    """BraTS layout: ``<case>/<case>_seg.nii.gz`` (2021) or ``<case>/<case>-seg.nii.gz`` (since 2023).

    Returns ``None`` when no case folder holds a segmentation. Case folders without one are skipped
    (a prediction for such a case is then reported as having no reference). 2021 names give the table;
    later ones only the tables their case ids' sub-challenges allow (``label_candidates``).

    Raises:
        MedsegInputError: the folder mixes 2021 and 2023 file names.
    """
    namings = brats_namings()
    by_release: dict[str, dict[str, Path]] = {release.name: {} for release in namings}
    for case_dir in sorted(p for p in ref_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for release in namings:
            seg = release_file(case_dir, release, "seg")
            if _listed_file(seg):
                by_release[release.name][case_dir.name] = seg
    present = [name for name, files in by_release.items() if files]
    if not present:
        return None
    if len(present) > 1:
        examples = ", ".join(str(next(iter(by_release[name].values()))) for name in present)
        raise MedsegInputError(f"mixes BraTS releases {' and '.join(present)} (e.g. {examples})", path=ref_dir)
    release = next(r for r in namings if r.name == present[0])
    files = by_release[release.name]
    candidates = tuple(t.name for t in brats_label_candidates(files, release))
    table = candidates[0] if len(candidates) == 1 else None
    return References(f"brats{release.name}", files, table, candidates if table is None else ())


MSD_LABEL_FOLDERS = ("labelsTs", "labelsTr")
"""The label folders of an MSD or nnU-Net dataset root, in the order evaluation looks for references."""


def find_msd_references(ref_dir: Path) -> References | None:
    """Medical Segmentation Decathlon (and nnU-Net) layout: the test labels ``labelsTs/<case>.nii.gz`` when
    there are any, else the training labels ``labelsTr/<case>.nii.gz`` (give ``--ref ROOT/labelsTr`` to
    score out-of-fold predictions of a root that has both)."""
    for folder in MSD_LABEL_FOLDERS:
        labels_dir = ref_dir / folder
        files = _label_files(labels_dir) if labels_dir.is_dir() else {}
        if files:
            return References("msd", files, dataset_json=_dataset_json(ref_dir))
    return None


def find_flat_references(ref_dir: Path) -> References | None:
    """A flat folder of ``<case>`` label maps (the same layout as the predictions); the ``dataset.json``
    beside them, or, for an MSD root's ``labelsTr/`` or ``labelsTs/``, the root's."""
    files = _label_files(ref_dir)
    if not files:
        return None
    described = _dataset_json(ref_dir) or (_dataset_json(ref_dir.parent) if ref_dir.name in MSD_LABEL_FOLDERS else None)
    return References("flat", files, dataset_json=described)


def manifest_references(path: Path) -> References:
    """The labelled cases of a medseg manifest (a file list), under the root it names, with the label
    values each case does not annotate.

    Raises:
        MedsegInputError: not a medseg manifest, no root, or no labelled case.
    """
    from medseg.data.manifest import dataset_root, load_manifest

    manifest = load_manifest(path)
    root = dataset_root(manifest, None)
    labelled = [c for c in manifest.cases if c.label is not None]
    if not labelled:
        raise MedsegInputError("the manifest lists no labelled case", path=path)
    table = manifest.label_table
    files = {c.id: root / c.label for c in sorted(labelled, key=lambda c: c.id)}
    skipped = {c.id: frozenset(table.labels) - c.annotated(table) for c in labelled}
    return References("manifest", files, dataset_json=path, not_annotated={k: v for k, v in skipped.items() if v})


REFERENCE_LAYOUTS: tuple[Callable[[Path], References | None], ...] = (
    find_brats_references,
    find_msd_references,
    find_flat_references,
)
"""Layout finders, tried in order; the first that returns references wins."""


def find_references(ref_dir: Path) -> References:
    """Find the reference label maps in ``ref_dir`` with the first matching :data:`REFERENCE_LAYOUTS` entry.

    Raises:
        MedsegInputError: ``ref_dir`` is not a folder or holds no reference in any known layout.
    """
    ref_dir = Path(ref_dir)
    if ref_dir.is_file() and ref_dir.suffix == ".json":
        return manifest_references(ref_dir)
    if not ref_dir.is_dir():
        raise MedsegInputError("reference folder not found", path=ref_dir)
    for finder in REFERENCE_LAYOUTS:
        refs = finder(ref_dir)
        if refs is not None:
            return refs
    raise MedsegInputError(
        "no reference label maps found (expected BraTS <case>/<case>_seg.nii.gz or <case>/<case>-seg.nii.gz, "
        f"MSD labelsTs/ or labelsTr/<case>.nii.gz, or <case> label maps ({', '.join(LABEL_MAP_ENDINGS)}))",
        path=ref_dir,
    )


def _read_label_map(path: Path) -> Image:
    image = read_image(path)
    if image.array.ndim != 3:
        raise MedsegInputError(f"expected a 3-D label map, got shape {image.array.shape}", path=path)
    return image


_NO_TABLE = "give --labels (a table name, a dataset.json) or --labels-from CKPT (the model that predicted)"


def _detect_label_table(refs: References) -> LabelTable:
    """The table the layout implies, else the one :func:`~medseg.labels.choose_label_table` takes among the
    layout's candidates (every BraTS table for a flat folder) given the label values of the references (the
    predictions are then checked against it)."""
    if refs.label_table is not None:
        return get_label_table(refs.label_table)
    names = refs.label_candidates or tuple(n for n in LABEL_TABLES if n.startswith("brats"))
    candidates = [get_label_table(n) for n in names]
    values: set[int] = set()
    path: Path | None = None
    for path in refs.files.values():
        image = _read_label_map(path)
        values |= set(label_values(image.array, path=image.path))
        if len([t for t in candidates if values <= set(t.labels)]) <= 1:  # no later file can change the answer
            break
    try:
        return choose_label_table(candidates, values=values, path=path)
    except MedsegInputError as exc:
        raise MedsegInputError(f"{exc.reason}; {_NO_TABLE}", path=exc.path) from None


def label_table_from_json(path: Path) -> LabelTable:
    """The label table of a ``dataset.json`` (MSD ``{"0": "background", ...}`` or nnU-Net v2
    ``{"background": 0, ...}``, read by :func:`~medseg.data.dataset_json.read_dataset_json`; a class table
    named after ``"name"``) or of a medseg manifest.

    Raises:
        MedsegInputError: unreadable file, or no usable ``labels`` (naming the file).
    """
    from medseg.data.manifest import FORMAT as MANIFEST_FORMAT
    from medseg.data.manifest import manifest_from_dict
    from medseg.data.msd import classes_table

    path = Path(path)
    data = read_json(path, what="label file")
    if isinstance(data, dict) and data.get("format") == MANIFEST_FORMAT:
        return manifest_from_dict(data, path=path).label_table
    meta = dataset_json_from_dict(data, path=path)
    return classes_table(meta.name, meta.labels)


def predictions_label_table(pred_dir: Path) -> LabelTable | None:
    """The label table ``medseg predict`` wrote beside its predictions (:data:`~medseg.protocol.LABELS_JSON`:
    the table of the checkpoint that made them), or ``None`` when there is none.

    Raises:
        MedsegInputError: the file is there but no label table (naming it).
    """
    path = Path(pred_dir) / LABELS_JSON
    if not path.is_file():
        return None
    try:
        return LabelTable.from_dict(read_json(path, what="label table"))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise MedsegInputError(f"not a medseg label table ({exc!r})", path=path) from None


def _resolve_label_table(labels: str | LabelTable, refs: References, pred_dir: Path) -> LabelTable:
    """``labels`` as a table: a :class:`LabelTable`; ``"auto"`` (the reference's ``dataset.json`` when
    there is one, else the table ``medseg predict`` wrote beside the predictions, else the BraTS table of
    :func:`_detect_label_table`);
    a registered table name; or a path to a ``dataset.json`` or a medseg manifest."""
    if isinstance(labels, LabelTable):
        return labels
    if labels == "auto":
        if refs.dataset_json is not None:
            return label_table_from_json(refs.dataset_json)
        return predictions_label_table(pred_dir) or _detect_label_table(refs)
    if labels in LABEL_TABLES:
        return get_label_table(labels)
    if labels.endswith(".json") or Path(labels).is_file():
        return label_table_from_json(Path(labels))
    raise MedsegInputError(
        f"--labels: unknown label table {labels!r}; use auto, a path to dataset.json or a manifest, "
        f"or one of {', '.join(sorted(LABEL_TABLES))}"
    )


def _stats(values: list[float]) -> dict[str, float]:
    """Mean, population sd and median of ``values``, leaving NaN out (a case the rules give no score,
    BraTS 2025 MET's lesion-wise scores without a large lesion; the challenge's means leave it out too)."""
    arr = np.asarray(values, dtype=float)
    arr = arr[~np.isnan(arr)]
    if not arr.size:  # a label no case annotates
        return {"mean": math.nan, "std": math.nan, "median": math.nan}
    return {"mean": float(arr.mean()), "std": float(arr.std()), "median": float(np.median(arr))}


def summarize(scores: Mapping[str, Mapping[str, RegionScore]], table: LabelTable) -> dict[str, dict[str, Any]]:
    """Per-region statistics over cases.

    Args:
        scores: case -> region -> ``RegionScore(dice, hd95, nsd)``.
        table: gives the region order.

    Returns:
        Region -> ``{"n", "dice": {"mean", "std", "median"}, "hd95": {...}, "nsd": {...}}``; std is the
        population standard deviation (``ddof=0``), HD95 in mm.
    """
    return _per_region(scores, table, stats=("dice", "hd95", "nsd"))


def _per_region(
    scores: Mapping[str, Mapping[str, tuple]], table: LabelTable, *, stats: Sequence[str], sums: Sequence[str] = ()
) -> dict[str, dict[str, Any]]:
    """Region -> ``{"n"}``, :func:`_stats` of each field in ``stats`` and the total of each in ``sums``,
    over the cases of ``scores`` (case -> region -> a named tuple with those fields)."""
    out: dict[str, dict[str, Any]] = {}
    for region in table.evaluation_names:
        per_case = [case_scores[region] for case_scores in scores.values() if region in case_scores]
        out[region] = {
            "n": len(per_case),
            **{field: _stats([getattr(s, field) for s in per_case]) for field in stats},
            **{field: sum(getattr(s, field) for s in per_case) for field in sums},
        }
    return out


def summarize_lesions(
    lesions: Mapping[str, Mapping[str, LesionScore]], table: LabelTable, rules: str
) -> dict[str, Any]:
    """Per-region statistics of lesion-wise scores over cases.

    Args:
        lesions: case -> region -> :class:`~medseg.evaluation.lesion_wise.LesionScore`.
        table: gives the region order.
        rules: the :data:`~medseg.evaluation.lesion_wise.LESION_RULES` key the scores were computed with.

    Returns:
        ``{"rules", "description", ..., "regions"}``: the rules' thresholds (``dilation`` and ``min_volume_mm3``
        for dilation rules; ``matching_dice`` and ``scored`` for one-to-one matching, with ``large_volume_mm3``
        and ``detection_dice`` where ``scored`` is ``"large_and_false_positives"``), and ``regions``, which maps
        each region to ``{"n", "dice": {"mean", "std", "median"}, "hd95": {...}, "f1": {...}, "tp", "fn",
        "fp"}`` (F1 per case, :attr:`~medseg.evaluation.lesion_wise.LesionScore.f1`; lesion counts summed over
        cases; HD95 in mm; cases without a score, NaN, left out of the statistics), with ``"nsd"`` statistics
        under one-to-one matching and the summed ``"large_tp"``, ``"large_fn"``, ``"small_tp"`` and
        ``"small_fn"`` where it scores by size (BraTS 2025 MET).
    """
    r = get_lesion_rules(rules)
    stats, sums = ["dice", "hd95", "f1"], ["tp", "fn", "fp"]
    if isinstance(r, LesionRules):
        thresholds: dict[str, Any] = {"dilation": r.dilation, "min_volume_mm3": r.min_volume_mm3}
    else:
        thresholds = {"matching_dice": r.matching_dice, "scored": r.scored}
        stats.append("nsd")
        if r.scored == "large_and_false_positives":
            thresholds |= {"large_volume_mm3": r.large_volume_mm3, "detection_dice": r.detection_dice}
            sums += SIZE_COUNTS
    regions = _per_region(lesions, table, stats=stats, sums=sums)
    return {"rules": rules, "description": r.describe(), **thresholds, "regions": regions}


@dataclass(frozen=True)
class _CaseJob:
    """What :func:`_score_case` needs to score one case (it pickles, for worker processes)."""

    ref_path: Path
    pred_path: Path | None  # None: no prediction, scored as empty
    table: LabelTable
    nsd_tolerance_mm: float
    lesion_rules: str | None
    scoring: Scoring
    not_annotated: frozenset[int] = frozenset()  # label values not scored in this case
    probabilities: Path | None = None  # the prediction's probabilities, when saved: its ECE is scored
    ece_bins: int = ECE_BINS


@dataclass(frozen=True)
class _CaseResult:
    scores: dict[str, RegionScore]
    lesions: dict[str, LesionScore] | None
    finest_mm: float  # the reference's smallest voxel side
    present: frozenset[str]  # regions in the prediction or the reference
    empty_both: frozenset[str]  # regions in neither, not scored (EMPTY_BOTH_RULES)
    reoriented: bool  # the prediction was moved onto the reference's axis order
    calibration: dict[str, Bins] | None = None


@dataclass(frozen=True)
class CasePairs:
    """Predictions paired with their references by case id (see :func:`pair_cases`).

    Attributes:
        refs: the references found (layout and case id -> path).
        preds: case id -> prediction path, for the cases that have one.
        missing: case ids of references without a prediction.
        table: the label table the maps are scored with.
        probabilities: case id -> the prediction's ``<case>_probabilities.nii.gz``, for the cases that have one.
    """

    refs: References
    preds: dict[str, Path]
    missing: list[str]
    table: LabelTable
    probabilities: dict[str, Path] = field(default_factory=dict)

    def predicted_only(self, doing: str) -> dict[str, Path]:
        """Case id -> reference path, for the cases that have a prediction; when references are left
        out, a note on stderr says so: ``"<doing> the N predicted case(s); M reference(s) ..."``."""
        if self.missing:
            kept, left = len(self.refs.files) - len(self.missing), len(self.missing)
            note = f"{doing} the {kept} predicted case(s); {left} reference(s) without a prediction are left out"
            print(f"medseg: note: {note}", file=sys.stderr)
        return {case: path for case, path in self.refs.files.items() if case in self.preds}


def pair_cases(pred_dir: Path, ref_dir: Path, labels: str | LabelTable = "auto") -> CasePairs:
    """Pair the ``pred_dir/<case>`` label maps (:data:`LABEL_MAP_ENDINGS` or a DICOM-SEG ``.dcm``) with the
    references :func:`find_references` finds in ``ref_dir``, and resolve the label table (``labels`` as in
    :func:`evaluate_folder`).

    Raises:
        MedsegInputError: no prediction folder or predictions, no references, a prediction without a
            reference, or labels that cannot be resolved.
    """
    pred_dir, ref_dir = Path(pred_dir), Path(ref_dir)
    if not pred_dir.is_dir():
        raise MedsegInputError("prediction folder not found", path=pred_dir)
    preds = _label_files(pred_dir, (*LABEL_MAP_ENDINGS, DICOM_SEG_ENDING))
    probabilities = {
        case: pred_dir / f"{case}{PROBABILITIES_SUFFIX}"
        for case in preds
        if (pred_dir / f"{case}{PROBABILITIES_SUFFIX}").is_file()
    }
    if not preds:
        raise MedsegInputError(
            f"no predictions (<case> label maps: {', '.join((*LABEL_MAP_ENDINGS, DICOM_SEG_ENDING))}) found",
            path=pred_dir,
        )
    refs = find_references(ref_dir)
    orphans = [case for case in preds if case not in refs.files]
    if orphans:
        more = f" (and {len(orphans) - 1} more)" if len(orphans) > 1 else ""
        raise MedsegInputError(
            f"prediction has no reference in {ref_dir} ({refs.layout} layout){more}", path=preds[orphans[0]]
        )
    missing = [case for case in refs.files if case not in preds]
    return CasePairs(refs, preds, missing, _resolve_label_table(labels, refs, pred_dir), probabilities)


@dataclass(frozen=True)
class CaseMaps:
    """A reference and its prediction, as :func:`read_case` reads them.

    Attributes:
        pred: the prediction's ``(X, Y, Z)`` label array on the reference's grid (zeros without a prediction).
        ref: the reference image, whose geometry gives the spacing (mm).
        values: the label values in either map.
        reoriented: whether the prediction was stored in another axis order or direction of that grid
            and moved onto it voxel for voxel.
    """

    pred: np.ndarray
    ref: Image
    values: frozenset[int]
    reoriented: bool = False


def read_case(ref_path: Path, pred_path: Path | None, table: LabelTable) -> CaseMaps:
    """Read a reference and its prediction, checked: both hold only ``table``'s values, and the
    prediction lies on the reference's grid, or on its voxels in another axis order or direction (moved
    onto it exactly), or, for a DICOM-SEG, on a box of it (zeros elsewhere: its omitted empty frames).

    Raises:
        MedsegInputError: naming the file: unreadable, values outside the table, another grid.
    """
    ref = _read_label_map(ref_path)
    values = check_label_map(ref.array, table, path=ref.path)
    if pred_path is None:
        return CaseMaps(np.zeros(ref.array.shape, dtype=np.uint8), ref, frozenset(values))
    pred = _read_label_map(pred_path)
    values |= check_label_map(pred.array, table, path=pred.path)
    array, moved = onto_grid(pred, ref.geometry, reference_path=ref.path, partial=bool(pred.meta.get("dicom_seg")))
    return CaseMaps(array, ref, frozenset(values), reoriented=not moved.is_identity)


def empty_both_rule(table: LabelTable) -> EmptyBothRule:
    """The :data:`EMPTY_BOTH_RULES` entry of ``table``'s kind."""
    return EMPTY_BOTH_RULES[table.kind]


def _score_case(job: _CaseJob) -> _CaseResult:
    maps = read_case(job.ref_path, job.pred_path, job.table)
    pred_array, ref = maps.pred, maps.ref
    spacing = ref.geometry.spacing
    scores = score_label_maps(
        pred_array,
        ref.array,
        table=job.table,
        spacing=spacing,
        nsd_tolerance_mm=job.nsd_tolerance_mm,
        scoring=job.scoring,
    )
    sets = job.table.evaluation_sets()
    present = frozenset(name for name, values in sets.items() if maps.values.intersection(values))
    unscored = {name for name, values in sets.items() if set(values) & job.not_annotated}
    empty_both = set()
    if empty_both_rule(job.table) == "unscored":
        empty_both = {name for name in sets if name not in present and name not in unscored}
    scores = {name: score for name, score in scores.items() if name not in unscored | empty_both}
    lesions = None
    if job.lesion_rules is not None:
        rules = get_lesion_rules(job.lesion_rules)
        lesions = lesion_wise_label_maps(
            pred_array, ref.array, table=job.table, spacing=spacing, rules=rules, scoring=job.scoring
        )
        lesions = {name: score for name, score in lesions.items() if name not in unscored | empty_both}
    calibration = None
    if job.probabilities is not None:
        calibration = _calibration_of(job.probabilities, ref, job.table, job.ece_bins)
        calibration = {name: bins for name, bins in calibration.items() if name not in unscored}
    return _CaseResult(
        scores, lesions, float(min(spacing)), present, frozenset(empty_both), maps.reoriented, calibration
    )


def _calibration_of(path: Path, ref: Image, table: LabelTable, bins: int) -> dict[str, Bins]:
    """The calibration bins of the probabilities in ``path`` against reference ``ref``.

    Raises:
        MedsegInputError: naming the file: unreadable, another grid, or another number of channels.
    """
    probabilities = read_image(path)
    require_same_grid(probabilities.geometry, ref.geometry, path=probabilities.path, reference_path=ref.path)
    if probabilities.array.ndim != 4 or probabilities.array.shape[0] != table.num_outputs:
        raise MedsegInputError(
            f"expected {table.num_outputs} probability channels ({', '.join(table.output_names)}),"
            f" got shape {probabilities.array.shape}",
            path=path,
        )
    return calibration_of_case(probabilities.array, ref.array, table=table, bins=bins)


def evaluate_folder(
    *,
    pred_dir: Path,
    ref_dir: Path,
    out_dir: Path,
    labels: str | LabelTable = "auto",
    nsd_tolerance_mm: float = NSD_TOLERANCE_MM,
    lesion_rules: str | None = None,
    scoring: str = "auto",
    workers: int = 1,
    only_predicted: bool = False,
    ece_bins: int = ECE_BINS,
) -> dict:
    """Score every prediction in ``pred_dir`` against its reference and write ``metrics.csv``, ``summary.json``
    and ``metrics.png`` (:func:`~medseg.evaluation.plot.plot_scores`: Dice, HD95 and NSD per region over cases).

    Cases are paired by id: the ``pred_dir/<case>`` label map (any of :data:`LABEL_MAP_ENDINGS`, or a
    DICOM-SEG ``.dcm``) with the reference that :func:`find_references` finds for ``<case>`` in ``ref_dir``.
    Each prediction must lie on its reference's grid (same shape and affine), or on its voxels in another
    axis order or direction: it is then moved onto it exactly (no interpolation) and a note names the
    cases. Dice, HD95 and NSD (mm, with the reference's voxel spacing) are computed per region of the
    label table by :func:`medseg.evaluation.metrics.score_label_maps`. A region empty in both prediction
    and reference follows :data:`EMPTY_BOTH_RULES` (class tables: not scored, counted in the region's
    ``"empty_both"``); when most regions of the table are in no map at all, a warning says the table
    may be the wrong one.

    A reference without a prediction is scored as an **empty prediction** (Dice 0, HD95 = the scoring's
    one-empty constant, NSD 0 for every region the reference contains), as the BraTS challenge does, so a missing case
    cannot improve the mean; a warning line listing such cases goes to stderr and the summary lists
    them under ``"missing_predictions"``. With ``only_predicted``, they are left out instead (e.g. the
    out-of-fold predictions of some folds, scored against the whole training set): a note says how
    many, and the summary lists them under ``"left_out"``. A prediction without a reference is an error.

    Args:
        pred_dir: folder of ``<case>`` integer label maps (``medseg predict``'s output folder).
        ref_dir: reference dataset folder (BraTS 2021/2023 layout, MSD ``labelsTs`` or ``labelsTr``, or flat).
        out_dir: where ``metrics.csv`` (one row per case and region:
            ``case,region,dice,hd95,nsd,nsd_tolerance_mm``), ``summary.json`` and ``metrics.png`` are
            written, atomically, and only after every case was scored.
        labels: ``"auto"`` (the reference folder's ``dataset.json`` labels when it has one, e.g. MSD;
            else the table ``medseg predict`` wrote beside the predictions (:func:`predictions_label_table`);
            else the BraTS table the reference file names, case ids and label values leave, never one
            of several that give a value different meanings: :func:`~medseg.labels.choose_label_table`
            raises instead), a label table name such as ``"brats2021"``
            or ``"btcv"``, a path to a ``dataset.json`` or medseg manifest, or a :class:`LabelTable`.
            Class tables are scored per label (e.g. per organ), region tables per region.
        nsd_tolerance_mm: the tolerance of the normalised surface Dice, in mm.
        lesion_rules: also score lesion-wise Dice and HD95 (:mod:`medseg.evaluation.lesion_wise`) with these
            BraTS rules (2023: ``"GLI"``, ``"SSA"``, ``"MEN"``, ``"PED"``, ``"MET"``; 2024: ``"brats2024-gli"``,
            ``"brats2024-ped"``, ``"brats2024-met"``, ``"brats2024-men-rt"``; 2025: ``"brats2025-met"``,
            ``"brats2025-gli"``, ``"brats2025-ped"``, ``"brats2025-men"``, ``"brats2025-men-rt"``,
            ``"brats2025-goat"``, each only with the label table of
            :data:`~medseg.evaluation.lesion_wise.LESION_RULE_TABLES`), into
            ``lesion_metrics.csv`` (:data:`~medseg.evaluation.files.LESION_METRICS_COLUMNS`) and the summary's
            ``"lesion_wise"`` (see :func:`summarize_lesions`); ``None``: not scored, and a
            ``lesion_metrics.csv`` an earlier evaluation left in ``out_dir`` is removed.
        scoring: how HD95 and NSD measure surfaces and the HD95 of an empty mask, for the whole-image and
            the lesion-wise scores alike: a key of :data:`~medseg.evaluation.metrics.SCORINGS`
            (``voxels``, ``elements``, ``brats2023``, ``brats2025``), or ``"auto"``: ``brats2025`` with BraTS
            2025 lesion rules (its sub-challenges keep the 2023 and 2024 tables), else the label table's
            (:func:`~medseg.evaluation.metrics.default_scoring`: its BraTS year's, else ``voxels``).
        workers: cases scored at once, each in its own process (1: in this process).
        only_predicted: leave references without a prediction out, rather than score them as empty.
        ece_bins: the equal-width bins of the expected calibration error, scored for the cases whose
            probabilities lie beside their prediction (``<case>_probabilities.nii.gz``) into
            ``calibration.csv`` (``case,region,ece,bins``) and the summary's ``"calibration"``: per region the
            ECE of all their voxels pooled and the per-case mean (see :mod:`medseg.evaluation.calibration`).

    Returns:
        The summary that is written to ``summary.json``: ``label_table``, ``layout``, ``cases``,
        ``missing_predictions``, ``left_out``, ``hd95_unit``, ``nsd_tolerance_mm``, ``scoring``, ``surface``,
        ``one_empty_hd95_mm`` (``null``: the grid's diagonal), ``regions`` (see :func:`summarize`; each also
        with ``empty_both``, the cases not scored for being empty in both maps), ``empty_both`` (the table's
        rule), with ``lesion_rules`` ``lesion_wise``, and where probabilities were saved ``calibration``.

    Raises:
        MedsegInputError: naming the file: no predictions or references found, a prediction without a
            reference, a prediction on a different grid (shape or affine), label values outside the
            table, an unreadable file; or a negative or non-finite NSD tolerance, unknown lesion rules (or
            BraTS 2025 rules with another label table), or an unknown scoring.
            Nothing is written then.
        OutputError: an output file cannot be written (a full disk): naming it and the reason, once every
            other output file was tried (those written are kept, and named).
    """
    try:
        nsd_tolerance_mm = check_nsd_tolerance(nsd_tolerance_mm)
    except ValueError as exc:
        raise MedsegInputError(str(exc)) from None
    if lesion_rules is not None:
        get_lesion_rules(lesion_rules)  # unknown rules fail before any case is read
    if scoring != "auto":
        get_scoring(scoring)
    if ece_bins < 1:
        raise MedsegInputError(f"the expected calibration error needs at least one bin, got {ece_bins}")
    pred_dir, out_dir = Path(pred_dir), Path(out_dir)
    pairs = pair_cases(pred_dir, ref_dir, labels)
    refs, preds, table = pairs.refs, pairs.preds, pairs.table
    if lesion_rules is not None:
        check_rules_table(lesion_rules, table)
    # BraTS 2025's rules are scored as 2025 (brats2025) on the 2023 and 2024 tables its sub-challenges keep
    year = lesion_rules if lesion_rules in LESION_RULE_TABLES else table.name
    chosen = default_scoring(year) if scoring == "auto" else get_scoring(scoring)
    if only_predicted:
        files, missing, left_out = pairs.predicted_only("scoring"), [], pairs.missing
    else:
        files, missing, left_out = refs.files, pairs.missing, []

    skip = refs.not_annotated
    jobs = [
        _CaseJob(
            path,
            preds.get(case),
            table,
            nsd_tolerance_mm,
            lesion_rules,
            chosen,
            skip.get(case, frozenset()),
            pairs.probabilities.get(case),
            ece_bins,
        )
        for case, path in files.items()
    ]
    results = dict(zip(files, map_in_processes(_score_case, jobs, workers=workers, what="scoring"), strict=True))
    _note_reoriented([case for case, r in results.items() if r.reoriented])
    _warn_absent_regions(table, [r.present for r in results.values()])
    scores = {case: r.scores for case, r in results.items()}
    lesions = {case: r.lesions for case, r in results.items() if r.lesions is not None}
    # cases whose smallest voxel side (mm) exceeds the NSD tolerance
    coarse = {case: r.finest_mm for case, r in results.items() if r.finest_mm > nsd_tolerance_mm}

    if missing:
        print(
            f"medseg: warning: {len(missing)} case(s) without prediction scored as empty masks: {', '.join(missing)}",
            file=sys.stderr,
        )
    if coarse:
        print(
            f"medseg: warning: NSD tolerance {nsd_tolerance_mm:g} mm is below the voxel size of {len(coarse)}"
            f" case(s) (smallest voxel side {min(coarse.values()):.3g} mm): only surface voxels that coincide"
            " count as agreeing; consider an --nsd-tolerance of at least the voxel size",
            file=sys.stderr,
        )
    summary: dict[str, Any] = {
        "label_table": table.name,
        "layout": refs.layout,
        "cases": list(scores),
        "missing_predictions": missing,
        "left_out": left_out,
        "hd95_unit": "mm",
        "nsd_tolerance_mm": nsd_tolerance_mm,
        "scoring": chosen.name,
        "surface": chosen.surface,
        "one_empty_hd95_mm": chosen.one_empty_hd95_mm,
        "regions": summarize(scores, table),
        "empty_both": empty_both_rule(table),
    }
    for region, stats in summary["regions"].items():
        stats["empty_both"] = sum(region in r.empty_both for r in results.values())
    writers: dict[str, Callable[[Path], object]] = {
        METRICS_CSV: lambda path: write_metrics_csv(path, Metrics(scores, nsd_tolerance_mm)),
    }
    if lesion_rules is not None:
        summary["lesion_wise"] = summarize_lesions(lesions, table, lesion_rules)
        writers[LESION_METRICS_CSV] = lambda path: write_lesion_metrics_csv(path, lesions, lesion_rules)
    else:
        (out_dir / LESION_METRICS_CSV).unlink(missing_ok=True)
    calibration = {case: r.calibration for case, r in results.items() if r.calibration is not None}
    if calibration:
        summary["calibration"] = summarize_calibration(calibration, table, ece_bins)
        writers[CALIBRATION_CSV] = lambda path: _write_calibration_csv(path, calibration, ece_bins)
    else:
        (out_dir / CALIBRATION_CSV).unlink(missing_ok=True)
    writers[METRICS_PNG] = lambda path: plot_scores({pred_dir.name: scores}, path, nsd_tolerance_mm=nsd_tolerance_mm)
    writers[SUMMARY_JSON] = lambda path: _write_json(path, summary)
    _write_each(out_dir, writers)
    return summary


def _note_reoriented(cases: Sequence[str]) -> None:
    """One note line naming the cases whose prediction was moved onto the reference's axis order."""
    if cases:
        shown = ", ".join(cases[:5]) + (", ..." if len(cases) > 5 else "")
        print(
            f"medseg: note: {len(cases)} prediction(s) stored in another axis order or direction of their reference's"
            f" grid, moved onto it voxel for voxel (no interpolation): {shown}",
            file=sys.stderr,
        )


def _warn_absent_regions(table: LabelTable, present: Sequence[frozenset[str]]) -> None:
    """One warning line when most regions of ``table`` are in no prediction and no reference: a sign
    of the wrong table (another dataset's labels)."""
    names = table.evaluation_names
    absent = [name for name in names if not any(name in p for p in present)]
    if present and len(absent) * 2 > len(names):
        shown = ", ".join(absent[:5]) + (", ..." if len(absent) > 5 else "")
        print(
            f"medseg: warning: {len(absent)} of the {len(names)} labels of table {table.name} are in no prediction"
            f" and no reference ({shown}): is it the table of these maps? (--labels, --labels-from)",
            file=sys.stderr,
        )


def summarize_calibration(
    calibration: Mapping[str, Mapping[str, Bins]], table: LabelTable, bins: int
) -> dict[str, Any]:
    """Per-region expected calibration error over cases (case -> region -> :class:`Bins`).

    Returns:
        ``{"bins", "binning", "regions"}``, where ``regions`` maps each region to ``{"n", "ece", "ece_per_case"}``:
        the ECE of every voxel of the ``n`` cases pooled, and the :func:`summarize`-style statistics of the
        cases' own ECEs.
    """
    regions: dict[str, Any] = {}
    for region in table.evaluation_names:
        per_case = [case_bins[region] for case_bins in calibration.values() if region in case_bins]
        pooled = sum(per_case[1:], per_case[0]).ece if per_case else math.nan
        regions[region] = {"n": len(per_case), "ece": pooled, "ece_per_case": _stats([b.ece for b in per_case])}
    return {"bins": bins, "binning": "equal-width on [0, 1], one label or region against the rest", "regions": regions}


def _write_calibration_csv(path: Path, calibration: Mapping[str, Mapping[str, Bins]], bins: int) -> None:
    with atomic_output(path) as tmp, tmp.open("w", newline="", encoding="utf-8", errors="backslashreplace") as f:
        writer = csv.writer(f)
        writer.writerow(("case", "region", "ece", "bins"))
        for case, case_bins in calibration.items():
            for region, b in case_bins.items():
                writer.writerow([case, region, f"{b.ece:.6f}", bins])


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")


def _write_each(out_dir: Path, writers: Mapping[str, Callable[[Path], object]]) -> None:
    """Write each file ``out_dir / name`` with its writer; one that cannot be written (a full disk, no
    permission) does not keep the others from being tried, so every file that can be is kept.

    Raises:
        OutputError: naming the first file that could not be written and why, the others that could
            not, and those that were written.
    """
    failed: list[OutputError] = []
    written: list[str] = []
    for name, write in writers.items():
        try:
            write(out_dir / name)
        except OutputError as exc:
            failed.append(exc)
        else:
            written.append(name)
    if failed:
        others = [str(exc.path.name if exc.path else exc) for exc in failed[1:]]
        reason = failed[0].reason + (f"; nor {', '.join(others)}" if others else "")
        reason += f"; written: {', '.join(written)}" if written else "; nothing written"
        raise OutputError(reason, path=failed[0].path)


def _aligned(rows: Sequence[Sequence[str]]) -> list[str]:
    """Rows of cells as lines: the first column left-aligned, the others right-aligned."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join([row[0].ljust(widths[0])] + [cell.rjust(w) for cell, w in zip(row[1:], widths[1:], strict=True)])
        for row in rows
    ]


def format_mean_sd(stats: Mapping[str, float], digits: int) -> str:
    """``"mean ± sd"`` of a :func:`summarize` statistic, with ``digits`` decimals."""
    return f"{stats['mean']:.{digits}f} ± {stats['std']:.{digits}f}"


def format_lesion_f1(stats: Mapping[str, Any]) -> str:
    """A region's lesion F1 ``"mean ± sd"`` (:func:`summarize_lesions`), or ``"-"`` in summaries written before
    medseg reported it."""
    return format_mean_sd(stats["f1"], 4) if "f1" in stats else "-"


def format_summary(summary: Mapping[str, Any]) -> str:
    """Small aligned text tables of a summary: per region Dice, HD95 (mm) and NSD mean ± sd and n; and,
    when it holds lesion-wise scores, their Dice, HD95 (and NSD where scored) and lesion F1 mean ± sd and lesion
    counts (by size where counted)."""
    rows = [("region", "Dice mean ± sd", "HD95 mm mean ± sd", f"NSD {summary['nsd_tolerance_mm']:g} mm mean ± sd", "n")]
    for region, stats in summary["regions"].items():
        cells = (format_mean_sd(stats["dice"], 4), format_mean_sd(stats["hd95"], 2), format_mean_sd(stats["nsd"], 4))
        rows.append((region, *cells, str(stats["n"])))
    lines = [f"labels {summary['label_table']}, {len(summary['cases'])} case(s)"]
    missing = summary.get("missing_predictions") or []
    if missing:
        lines[0] += f", {len(missing)} without prediction (scored as empty)"
    left_out = summary.get("left_out") or []
    if left_out:
        lines[0] += f"; {len(left_out)} reference(s) without prediction left out"
    if "scoring" in summary:  # summaries written before scorings existed have none
        lines[0] += f"; surfaces scored as {summary['scoring']}"
    lines += _aligned(rows)
    lesion_wise = summary.get("lesion_wise")
    if lesion_wise:
        # summaries written before descriptions existed hold dilation rules' thresholds
        description = lesion_wise.get("description") or (
            f"dilation {lesion_wise['dilation']}, lesions > {lesion_wise['min_volume_mm3']:g} mm³"
        )
        lines.append(f"lesion-wise, BraTS {lesion_wise['rules']} rules ({description})")
        regions = lesion_wise["regions"]
        has_nsd = all("nsd" in stats for stats in regions.values())
        by_size = [c for c in SIZE_COUNTS if all(c in stats for stats in regions.values())]
        header = ("Dice mean ± sd", "HD95 mm mean ± sd", *(("NSD mean ± sd",) if has_nsd else ()), "F1 mean ± sd")
        rows = [("region", *header, "TP", "FN", "FP", *(f"{c[:-3]} {c[-2:].upper()}" for c in by_size))]
        for region, stats in regions.items():
            counts = [str(stats[c]) for c in ("tp", "fn", "fp", *by_size)]
            means = [format_mean_sd(stats["dice"], 4), format_mean_sd(stats["hd95"], 2)]
            means += [format_mean_sd(stats["nsd"], 4)] if has_nsd else []
            rows.append((region, *means, format_lesion_f1(stats), *counts))
        lines += _aligned(rows)
    calibration = summary.get("calibration")
    if calibration:
        lines.append(f"expected calibration error, {calibration['bins']} equal-width bins (one against the rest)")
        rows = [("region", "ECE, voxels pooled", "ECE per case mean ± sd", "n")]
        for region, stats in calibration["regions"].items():
            rows.append((region, f"{stats['ece']:.4f}", format_mean_sd(stats["ece_per_case"], 4), str(stats["n"])))
        lines += _aligned(rows)
    return "\n".join(lines)
