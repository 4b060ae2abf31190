"""Choose ``inference.min_component_ml`` on validation cases, as nnU-Net chooses its post-processing
on its cross-validation predictions.

The input is a folder of label maps a model predicted for cases it did not train on (its validation
fold) and a reference folder that holds them (it may hold more: only the predicted cases count, so
the whole training dataset can be given). For each region in the table's order (outer regions first, so that a
choice never changes the score of a region already decided), every candidate volume is applied on
top of the choices made so far (:func:`~medseg.postprocessing.components.remove_small_components`), and the region
keeps the candidate with the best mean score over the cases, if it beats removing nothing. The score
is the region's lesion-wise Dice (:mod:`medseg.evaluation.lesion_wise`) when lesion rules are given, else
its Dice; cases the rules give no score (BraTS 2025 MET: no large lesion) are left out, and a region no case
scores keeps every piece.

The predictions should be the model's own, without a ``min_component_ml`` of their own. The
``Predictor`` removes pieces before applying ``min_region_ml``; here they are removed from maps that
``min_region_ml`` has already shaped, which can differ only for a region whose whole volume is near
that rule's minimum.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medseg.errors import MedsegInputError
from medseg.evaluation import pair_cases, read_case
from medseg.evaluation.lesion_matching import MatchedLesionRules
from medseg.evaluation.lesion_wise import check_rules_table, get_lesion_rules, lesion_wise_scores
from medseg.evaluation.metrics import dice
from medseg.io import atomic_output
from medseg.labels import LabelTable
from medseg.parallel import map_in_processes
from medseg.postprocessing.components import Pieces, remove_small_components

CANDIDATES_ML = (0.02, 0.05, 0.1, 0.2, 0.5)
TUNING_CSV = "tuning.csv"
TUNING_JSON = "tuning.json"


@dataclass(frozen=True)
class Trial:
    """One candidate for one region.

    Attributes:
        region: region or label name.
        min_ml: the candidate smallest piece in mL; ``None`` removes nothing.
        score: mean over the cases of the region's lesion-wise Dice (with lesion rules) or Dice.
    """

    region: str
    min_ml: float | None
    score: float


@dataclass(frozen=True)
class _RegionJob:
    """What :func:`_region_scores` needs for one case (it pickles, for worker processes)."""

    ref_path: Path
    pred_path: Path
    table: LabelTable
    region: str
    chosen: dict[str, float]
    options: tuple[float | None, ...]
    lesion_rules: str | None


def _region_scores(job: _RegionJob) -> list[float]:
    """The region's score in one case under each option, on top of the choices already made."""
    maps = read_case(job.ref_path, job.pred_path, job.table)
    pred, ref = maps.pred, maps.ref
    spacing = ref.geometry.spacing
    base = remove_small_components(pred, job.table, spacing=spacing, min_component_ml=job.chosen)
    values = job.table.output_sets()[job.region]
    ref_mask = np.isin(ref.array, values)
    region = np.isin(base, values)
    pieces = Pieces.of(region, spacing)  # once: the options differ only in which pieces go
    scores = []
    for option in job.options:
        # what remove_small_components leaves of the region: its removed pieces take the enclosing
        # region's label, which is never one of this region's values
        mask = region if option is None else region & ~pieces.smaller_than(option)
        if job.lesion_rules is None:
            scores.append(dice(mask, ref_mask))
        else:
            rules = get_lesion_rules(job.lesion_rules)
            scores.append(lesion_wise_scores(mask, ref_mask, spacing=spacing, rules=rules).dice)
    return scores


def tune_min_component_ml(
    *,
    pred_dir: Path,
    ref_dir: Path,
    out_dir: Path,
    labels: str | LabelTable = "auto",
    lesion_rules: str | None = None,
    candidates: Sequence[float] = CANDIDATES_ML,
    workers: int = 1,
) -> tuple[dict[str, float], list[Trial]]:
    """Choose a smallest connected piece (mL) per region from ``candidates`` (see the module docstring).

    Args:
        pred_dir: folder of ``<case>.nii.gz`` label maps predicted for validation cases.
        ref_dir: a reference dataset folder that holds them (any layout
            :func:`~medseg.evaluation.find_references` knows); its other cases are left out.
        out_dir: where ``tuning.csv`` (every trial: ``region,min_component_ml,score,criterion,cases``)
            and ``tuning.json`` (the choice, ready for ``inference.min_component_ml``) are written.
        labels: as for :func:`~medseg.evaluation.evaluate_folder`.
        lesion_rules: score by lesion-wise Dice under these BraTS rules (``"GLI"``, ...); ``None``:
            by Dice.
        candidates: volumes in mL to try, each > 0.
        workers: cases scored at once, each in its own process.

    Returns:
        ``(chosen, trials)``: region -> chosen volume in mL (regions where removing nothing scored
        best are absent), and every trial in the order tried.

    Raises:
        MedsegInputError: as :func:`~medseg.evaluation.pair_cases` and
            :func:`~medseg.evaluation.read_case`; no candidates or one that is not > 0, unknown lesion
            rules, rules that score only matched pairs (BraTS 2025 but MET), rules given with a label table
            they do not score (:func:`~medseg.evaluation.lesion_wise.check_rules_table`), or ``workers`` < 1.
    """
    options: tuple[float | None, ...] = (None, *sorted({float(c) for c in candidates}))
    if len(options) == 1 or not all(c > 0 and np.isfinite(c) for c in options[1:]):
        raise MedsegInputError(f"candidates must be volumes in mL > 0, got {list(candidates)}")
    if lesion_rules is not None:
        _check_tunable(lesion_rules)  # before any case is read
    pairs = pair_cases(Path(pred_dir), Path(ref_dir), labels)
    if lesion_rules is not None:
        check_rules_table(lesion_rules, pairs.table)
    cases = pairs.predicted_only("tuning on")
    chosen: dict[str, float] = {}
    trials: list[Trial] = []
    for region in pairs.table.output_sets():
        jobs = [
            _RegionJob(path, pairs.preds[case], pairs.table, region, dict(chosen), options, lesion_rules)
            for case, path in cases.items()
        ]
        per_case = np.array(map_in_processes(_region_scores, jobs, workers=workers, what=f"tuning {region}"))
        per_case = per_case[~np.isnan(per_case).any(axis=1)]  # no score: BraTS 2025 MET without a large lesion
        if not len(per_case):
            continue
        means = per_case.mean(axis=0)
        trials += [Trial(region, option, float(m)) for option, m in zip(options, means, strict=True)]
        best = int(np.argmax(means))  # the first best: removing nothing, or the smallest volume, wins ties
        if best > 0:
            chosen[region] = float(options[best])
    _write(Path(out_dir), chosen, trials, criterion_name(lesion_rules), cases=len(cases))
    return chosen, trials


def _check_tunable(lesion_rules: str) -> None:
    """Refuse unknown rules and those whose score cannot choose what to remove: means over the matched pairs
    alone (BraTS 2025 GLI, PED, MEN, MEN-RT, GoAT) ignore false positives, and rise when a poorly matched
    true lesion is removed."""
    rules = get_lesion_rules(lesion_rules)
    if isinstance(rules, MatchedLesionRules) and rules.scored == "matched_pairs":
        raise MedsegInputError(
            f"lesion rules {lesion_rules} average over matched pairs only and ignore false positives, so they"
            " cannot choose which pieces to remove; tune by Dice, or by the 2024 rules of the same sub-challenge"
        )


def _write(out_dir: Path, chosen: dict[str, float], trials: list[Trial], criterion: str, *, cases: int) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_output(out_dir / TUNING_CSV) as tmp, tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["region", "min_component_ml", "score", "criterion", "cases"])
        for t in trials:
            writer.writerow([t.region, "" if t.min_ml is None else f"{t.min_ml:g}", f"{t.score:.6f}", criterion, cases])
    with atomic_output(out_dir / TUNING_JSON) as tmp:
        record = {"min_component_ml": chosen, "criterion": criterion, "cases": cases}
        tmp.write_text(json.dumps(record, indent=2) + "\n")


def criterion_name(lesion_rules: str | None) -> str:
    """What the trials score: ``"lesion-wise Dice (GLI)"`` with lesion rules, else ``"Dice"``."""
    return f"lesion-wise Dice ({lesion_rules})" if lesion_rules else "Dice"


def set_argument(chosen: dict[str, float]) -> str:
    """The ``medseg predict --set`` argument that applies ``chosen``, e.g.
    ``inference.min_component_ml={WT: 0.1, ET: 0.05}``."""
    return "inference.min_component_ml={" + ", ".join(f"{k}: {v:g}" for k, v in chosen.items()) + "}"


def format_trials(trials: Sequence[Trial], chosen: dict[str, float], criterion: str) -> str:
    """A line per region: its mean score under each candidate, the chosen one starred."""
    lines = [f"mean {criterion} per smallest kept piece (mL); * chosen"]
    for region in dict.fromkeys(t.region for t in trials):
        cells = []
        for t in (t for t in trials if t.region == region):
            star = "*" if chosen.get(region) == t.min_ml else ""  # None: removing nothing was chosen
            cells.append(f"{'none' if t.min_ml is None else f'{t.min_ml:g}'} {t.score:.4f}{star}")
        lines.append(f"{region}: " + "  ".join(cells))
    return "\n".join(lines)
