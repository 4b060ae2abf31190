"""Lesion-wise Dice and HD95 (mm), the metrics BraTS has ranked on since 2023.

A whole-image Dice lets one large lesion hide every small one that a model misses or invents. The
lesion-wise scores count each lesion once (the definition of the BraTS evaluation scripts, Saluja et
al., github.com/rachitsaluja/BraTS-2023-Metrics and BraTS-2024-Metrics):

1. **Reference lesions.** The reference mask's 26-connected components, where components that its
   dilation (``dilation`` iterations with the 18-connected 3 x 3 x 3 neighbourhood) joins count as
   one lesion: a satellite a few voxels from a tumour is part of it, not a lesion of its own. Some
   rule sets then join lesions *across tissues* (:attr:`LesionRules.merge_through`): the lesions of
   one tissue that touch (one 18-connected step) the same lesion of another tissue become one lesion;
   a lesion that touches several is joined to the group of the lowest-numbered one (numbering the
   other tissue's lesions in scan order, as the BraTS 2024 scripts do).
2. **Predicted lesions.** The prediction's 26-connected components; some rule sets join them by the
   same dilation as the reference's (:attr:`LesionRules.join_predicted`) and drop those of at most
   :attr:`LesionRules.max_dropped_voxels` voxels.
3. **Matching.** A predicted lesion matches a reference lesion when it touches that lesion's own
   dilation (the same neighbourhood and iterations). A lesion's Dice and HD95 are those of the lesion
   and the union of the predicted lesions that match it; a lesion nothing matches is a false negative
   (Dice 0, HD95 the scoring's one-empty constant: 374 mm for the BraTS 2023 and 2024 scripts).
4. **Small lesions.** Reference lesions of at most ``min_volume_mm3`` are left out of the score (a
   prediction that matches one is not a false positive either).
5. **False positives.** Each predicted lesion that matches no reference lesion scores Dice 0 and the
   one-empty HD95 (unless the rules do not penalise false positives, as BraTS 2024 MEN-RT).
6. **Score.** Lesion-wise Dice is the sum of the kept lesions' Dice over (kept lesions + false
   positives); lesion-wise HD95 likewise. Nothing to score (no kept lesion, no penalised false
   positive) gives Dice 1 and HD95 0.

Each lesion's HD95 follows :func:`medseg.evaluation.metrics.hd95` with the :class:`Scoring` given
(BraTS: surface elements, as the scripts' DeepMind ``surface-distance``). The rule sets of each BraTS
challenge are in :data:`LESION_RULES`; BraTS 2025's, which match lesions one to one on Panoptica, are
:mod:`medseg.evaluation.lesion_matching`'s, registered there too (``brats2025-met``, ``brats2025-gli``, ...), each
with the label table whose regions it scores (:data:`LESION_RULE_TABLES`).

Masks are boolean ``(X, Y, Z)`` arrays on one grid; ``spacing`` is the voxel size along those axes in
mm. Orientation does not matter.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
from scipy import ndimage

from medseg.errors import MedsegInputError
from medseg.evaluation.lesion_matching import (
    BRATS2025_MATCHED_PAIRS,
    BRATS2025_MET,
    MatchedLesionRules,
    MatchedLesionScore,
    matched_lesion_scores,
)
from medseg.evaluation.metrics import SCORINGS, Scoring, check_masks, dice, hd95, mask_box
from medseg.labels import LabelTable

Labels = tuple[int, ...]

_COMPONENTS = np.ones((3, 3, 3), dtype=bool)  # 26-connected components
_DILATION = ndimage.generate_binary_structure(3, 2)  # the 18-connected neighbourhood


@dataclass(frozen=True)
class LesionRules:
    """How lesions are formed and which are scored.

    Attributes:
        dilation: iterations of the 18-connected dilation that joins nearby reference components and
            finds the predicted components that match a lesion (0: neither).
        min_volume_mm3: reference lesions of at most this volume (mm³) are left out of the score.
        region_min_volume_mm3: another smallest volume (mm³) for some scored sets, keyed by their
            label values (BraTS 2024 GLI: 10 mm³ for ET ``(3,)`` and RC ``(4,)``).
        merge_through: for a scored set (by its label values), the tissues (label values), in order,
            through which its reference lesions are joined: those touching one lesion of the tissue
            become one (BraTS 2024 MET: ET through NETC).
        join_predicted: predicted components are joined by the same dilation as the reference's.
        max_dropped_voxels: predicted lesions of at most this many voxels are dropped before matching
            (0: none).
        penalise_false_positives: false positives lower the score (their count is reported anyway).
    """

    dilation: int
    min_volume_mm3: float
    region_min_volume_mm3: Mapping[Labels, float] = field(default_factory=dict)
    merge_through: Mapping[Labels, tuple[Labels, ...]] = field(default_factory=dict)
    join_predicted: bool = False
    max_dropped_voxels: int = 0
    penalise_false_positives: bool = True

    def __post_init__(self) -> None:
        volumes = (self.min_volume_mm3, *self.region_min_volume_mm3.values())
        if self.dilation < 0 or min(volumes) < 0 or self.max_dropped_voxels < 0:
            raise ValueError(f"lesion rules need dilation, volumes and max_dropped_voxels >= 0, got {self}")

    def describe(self) -> str:
        """One line for summaries: the dilation and the smallest scored lesion."""
        return f"dilation {self.dilation}, lesions > {self.min_volume_mm3:g} mm³"

    def min_volume_for(self, labels: Sequence[int]) -> float:
        """The smallest scored lesion volume (mm³) of the set made of ``labels``."""
        return self.region_min_volume_mm3.get(tuple(labels), self.min_volume_mm3)


AnyLesionRules = LesionRules | MatchedLesionRules

LESION_RULES: dict[str, AnyLesionRules] = {
    "GLI": LesionRules(dilation=3, min_volume_mm3=50.0),
    "SSA": LesionRules(dilation=3, min_volume_mm3=50.0),
    "MEN": LesionRules(dilation=1, min_volume_mm3=50.0),
    "PED": LesionRules(dilation=3, min_volume_mm3=50.0),
    "MET": LesionRules(dilation=1, min_volume_mm3=2.0),
    # BraTS 2024 (github.com/rachitsaluja/BraTS-2024-Metrics, metrics_<challenge>.py); label values are
    # the 2024 tables': GLI 1 NETC, 2 SNFH, 3 ET, 4 RC; PED 1 ET, 2 NETC, 3 CC, 4 ED; MET 1 NETC, 2 SNFH, 3 ET
    "brats2024-gli": LesionRules(
        dilation=3,
        min_volume_mm3=20.0,
        # the script lowers its threshold to 10 when it reaches ET, and RC is scored after ET
        region_min_volume_mm3={(3,): 10.0, (4,): 10.0},
        merge_through={(1,): ((3,), (4,)), (2,): ((3,), (4,), (1,)), (3,): ((1,), (4,)), (4,): ((3,), (1,))},
    ),
    "brats2024-ped": LesionRules(dilation=5, min_volume_mm3=10.0, join_predicted=True, max_dropped_voxels=10),
    "brats2024-met": LesionRules(dilation=1, min_volume_mm3=2.0, merge_through={(3,): ((1,),)}),
    "brats2024-men-rt": LesionRules(dilation=1, min_volume_mm3=50.0, penalise_false_positives=False),
    # BraTS 2025 (brats-evaluation 0.0.10 on Panoptica): one-to-one matching, medseg.evaluation.lesion_matching;
    # MET by parse_mets_results, the others by parse_seg_results
    "brats2025-met": BRATS2025_MET,
    "brats2025-gli": BRATS2025_MATCHED_PAIRS,
    "brats2025-ped": BRATS2025_MATCHED_PAIRS,
    "brats2025-men": BRATS2025_MATCHED_PAIRS,
    "brats2025-men-rt": BRATS2025_MATCHED_PAIRS,
    "brats2025-goat": BRATS2025_MATCHED_PAIRS,
}
"""The BraTS challenges' rules: 2023 adult glioma (GLI), sub-Saharan Africa (SSA), meningioma (MEN),
paediatric (PED) and metastases (MET); 2024 keyed by the label tables' names (``brats2024-gli``,
``brats2024-ped``, ``brats2024-met``, ``brats2024-men-rt``); 2025 by ``brats2025-`` and the sub-challenge
(``met``, ``gli``, ``ped``, ``men`` for the pre-operative meningioma, ``men-rt``, ``goat``)."""

LESION_RULE_TABLES: dict[str, str] = {
    "brats2025-met": "brats2025-met",
    "brats2025-gli": "brats2024-gli",
    "brats2025-ped": "brats2024-ped",
    "brats2025-men": "brats2023",
    "brats2025-men-rt": "brats2024-men-rt",
    "brats2025-goat": "brats2023",
}
"""BraTS 2025 rules -> the label table whose evaluation sets are the regions of its ``brats-evaluation`` 0.0.10
configuration (``config_mets``; ``config_gli``: netc, snfh, et, rc, tc, wt; ``config_ped``: et, netc, cc, ed,
tc, wt; ``config_MenPre`` and ``config_GoAT``: et, tc, wt; ``config_MenRT``: gtv)."""


def check_rules_table(rules: str, table: LabelTable) -> None:
    """Refuse to score ``rules`` on a table whose regions are not those its challenge scores
    (:data:`LESION_RULE_TABLES`; rules without a table there score any table's).

    Raises:
        MedsegInputError: ``rules`` score another table's regions, naming both.
    """
    wanted = LESION_RULE_TABLES.get(rules)
    if wanted is not None and table.name != wanted:
        raise MedsegInputError(
            f"lesion rules {rules} score the regions of label table {wanted}, not {table.name}; give --labels {wanted}"
        )


def get_lesion_rules(name: str) -> AnyLesionRules:
    """The rules of one BraTS challenge (a key of :data:`LESION_RULES`).

    Raises:
        MedsegInputError: an unknown name, listing the known ones.
    """
    try:
        return LESION_RULES[name]
    except KeyError:
        raise MedsegInputError(f"unknown lesion rules {name!r}; choose one of {', '.join(LESION_RULES)}") from None


class LesionScore(NamedTuple):
    """Lesion-wise scores of one region of one case.

    Attributes:
        dice: lesion-wise Dice (0..1); NaN where the rules give none (BraTS 2025: no large lesion for MET,
            no lesion at all for the others).
        hd95: lesion-wise HD95 (mm); NaN likewise.
        tp: kept reference lesions that a predicted lesion matches.
        fn: kept reference lesions that nothing matches.
        fp: predicted lesions that match no reference lesion (reported even where not penalised).
        nsd: lesion-wise NSD (0..1) at the smallest voxel side, NaN where Dice is; only the BraTS 2025 rules
            score it (``None`` under the others).
        large_tp: large reference lesions detected (BraTS 2025 MET: at least 20 mm³, matched at Dice >= 0.1);
            ``None`` under rules that do not count them, as ``large_fn``, ``small_tp`` and ``small_fn``.
        large_fn: large reference lesions not detected.
        small_tp: small reference lesions detected.
        small_fn: small reference lesions not detected.
    """

    dice: float
    hd95: float
    tp: int
    fn: int
    fp: int
    nsd: float | None = None
    large_tp: int | None = None
    large_fn: int | None = None
    small_tp: int | None = None
    small_fn: int | None = None

    @property
    def f1(self) -> float:
        """The lesion detection F1, ``2 tp / (2 tp + fp + fn)`` (Panoptica's recognition quality ``rq``); NaN
        without any lesion."""
        counted = 2 * self.tp + self.fp + self.fn
        return 2 * self.tp / counted if counted else math.nan

    @classmethod
    def of_matched(cls, score: MatchedLesionScore, rules: MatchedLesionRules) -> LesionScore:
        """The Dice, HD95, NSD and all-size lesion counts of a one-to-one matching's score, with the large and
        small lesions' detection counts where ``rules`` score by size (BraTS 2025 MET)."""
        by_size = (
            (score.large_tp, score.large_fn, score.small_tp, score.small_fn)
            if rules.scored == "large_and_false_positives"
            else ()
        )
        return cls(score.dice, score.hd95, score.tp, score.fn, score.fp, score.nsd, *by_size)


def _join_by_dilation(mask: np.ndarray, dilation: int) -> tuple[np.ndarray, int]:
    """``mask``'s 26-connected components joined where ``dilation`` iterations of the 18-connected
    dilation join them: an int ``(X, Y, Z)`` array, 0 outside the mask and 1..n on the lesions, and n."""
    if dilation == 0:
        return ndimage.label(mask, structure=_COMPONENTS)
    grown, n = ndimage.label(ndimage.binary_dilation(mask, _DILATION, iterations=dilation), structure=_COMPONENTS)
    return np.where(mask, grown, 0), n


def reference_lesions(ref: np.ndarray, *, dilation: int) -> tuple[np.ndarray, int]:
    """Label the lesions of a reference mask: 26-connected components, joined where ``dilation``
    iterations of the 18-connected dilation join them.

    Args:
        ref: reference mask ``(X, Y, Z)``.
        dilation: iterations of the dilation (0: the components themselves).

    Returns:
        ``(lesions, n)``: an int ``(X, Y, Z)`` array, 0 outside the mask and 1..n on the lesions.
    """
    return _join_by_dilation(np.asarray(ref, dtype=bool), dilation)


def _near(mask: np.ndarray, dilation: int) -> tuple[tuple[slice, ...], np.ndarray]:
    """The box round ``mask`` (non-empty) that holds its ``dilation``, and that dilation within it."""
    box = mask_box(mask, dilation + 1)
    reach = ndimage.binary_dilation(mask[box], _DILATION, iterations=dilation) if dilation else mask[box]
    return box, reach


def merge_through(lesions: np.ndarray, partner: np.ndarray) -> tuple[np.ndarray, int]:
    """Join the lesions that touch one lesion of another tissue (see the module docstring, step 1).

    Args:
        lesions: int ``(X, Y, Z)`` lesion labels of one tissue (0 outside).
        partner: int ``(X, Y, Z)`` lesion labels of the other tissue, numbered in scan order.

    Returns:
        ``(lesions, n)`` relabelled 1..n: each lesion that touches (one 18-connected step) a partner
        lesion is joined to every other lesion whose lowest-numbered touched partner is the same.
    """
    keys: dict[int, tuple[int, int]] = {}
    for lesion_id in np.unique(lesions[lesions > 0]).tolist():
        box, reach = _near(lesions == lesion_id, 1)
        touched = partner[box][reach]
        touched = touched[touched > 0]
        keys[lesion_id] = (0, int(touched.min())) if touched.size else (1, lesion_id)
    groups = {key: i for i, key in enumerate(sorted(set(keys.values())), start=1)}
    lookup = np.zeros(int(lesions.max(initial=0)) + 1, dtype=np.int64)
    for lesion_id, key in keys.items():
        lookup[lesion_id] = groups[key]
    return lookup[lesions], len(groups)


def _predicted_lesions(pred: np.ndarray, rules: LesionRules) -> tuple[np.ndarray, int]:
    """The predicted lesions (module docstring, step 2), labelled 1..n."""
    pieces, n = _join_by_dilation(pred, rules.dilation) if rules.join_predicted else ndimage.label(pred, _COMPONENTS)
    if rules.max_dropped_voxels and n:
        sizes = np.bincount(pieces.ravel(), minlength=n + 1)
        kept = np.flatnonzero(sizes > rules.max_dropped_voxels)
        kept = kept[kept > 0]
        lookup = np.zeros(n + 1, dtype=np.int64)
        lookup[kept] = np.arange(1, kept.size + 1)
        pieces, n = lookup[pieces], int(kept.size)
    return pieces, n


def score_lesions(
    pred: np.ndarray,
    lesions: np.ndarray,
    *,
    spacing: Sequence[float],
    rules: LesionRules,
    scoring: Scoring,
    min_volume_mm3: float,
) -> LesionScore:
    """Lesion-wise Dice and HD95 of a predicted mask against labelled reference lesions (module
    docstring, steps 2-6).

    Args:
        pred: predicted mask ``(X, Y, Z)``.
        lesions: the reference lesions, int ``(X, Y, Z)`` labels (0 outside), e.g. :func:`reference_lesions`.
        spacing: voxel size along X, Y, Z in mm; gives the lesions' volumes and the HD95s.
        rules: matching dilation and the handling of predicted lesions and false positives.
        scoring: the HD95's surfaces and the one-empty constant (missed lesions, false positives).
        min_volume_mm3: reference lesions of at most this volume are left out.
    """
    pred = np.asarray(pred, dtype=bool)
    ref = lesions > 0
    voxel_mm3 = float(np.prod(spacing))
    missed_hd95 = scoring.one_empty_hd95(ref.shape, spacing)
    if pred.any() or ref.any():  # the box that holds both masks and every dilation of them
        box = mask_box(pred | ref, margin=rules.dilation + 1)
        pred, lesions = pred[box], lesions[box]
    components, n_components = _predicted_lesions(pred, rules)
    matched_any: set[int] = set()
    dices: list[float] = []
    hd95s: list[float] = []
    tp = fn = 0
    for lesion_id in np.unique(lesions[lesions > 0]).tolist():
        lesion = lesions == lesion_id
        near, reach = _near(lesion, rules.dilation)
        matched = set(np.unique(components[near][reach]).tolist()) - {0}
        matched_any |= matched
        if lesion.sum() * voxel_mm3 <= min_volume_mm3:
            continue
        if not matched:
            fn += 1
            dices.append(0.0)
            hd95s.append(missed_hd95)
            continue
        tp += 1
        answer = np.isin(components, list(matched))
        both = mask_box(lesion | answer, 1)
        dices.append(dice(answer[both], lesion[both]))
        hd95s.append(hd95(answer[both], lesion[both], spacing=spacing, scoring=scoring))
    fp = n_components - len(matched_any)
    penalised = fp if rules.penalise_false_positives else 0
    scored = len(dices) + penalised
    if scored == 0:
        return LesionScore(dice=1.0, hd95=0.0, tp=tp, fn=fn, fp=fp)
    return LesionScore(
        dice=sum(dices) / scored,
        hd95=(sum(hd95s) + penalised * missed_hd95) / scored,
        tp=tp,
        fn=fn,
        fp=fp,
    )


def lesion_wise_scores(
    pred: np.ndarray,
    ref: np.ndarray,
    *,
    spacing: Sequence[float],
    rules: AnyLesionRules,
    scoring: Scoring = SCORINGS["brats2023"],
) -> LesionScore:
    """Lesion-wise Dice and HD95 of two boolean ``(X, Y, Z)`` masks (see the module docstring; the
    rules' joins across tissues need the label maps: :func:`lesion_wise_label_maps`).

    Args:
        pred: predicted mask ``(X, Y, Z)``, any dtype (nonzero = inside).
        ref: reference mask on the same grid.
        spacing: voxel size along X, Y, Z in mm; gives the lesions' volumes and the HD95s.
        rules: dilation and smallest scored lesion volume, e.g. ``LESION_RULES["GLI"]``, or one-to-one
            matching (``LESION_RULES["brats2025-met"]``:
            :func:`~medseg.evaluation.lesion_matching.matched_lesion_scores`).
        scoring: the HD95's surfaces and the HD95 of a missed lesion and a false positive (by default
            the BraTS 2023 and 2024 scripts': surface elements, 374 mm).

    Returns:
        The case's :class:`LesionScore`.

    Raises:
        ValueError: the masks are not of one 3-D shape, or ``spacing`` is not three values
            (:func:`~medseg.evaluation.metrics.check_masks`).
    """
    if isinstance(rules, MatchedLesionRules):
        score = matched_lesion_scores(pred, ref, spacing=spacing, rules=rules, scoring=scoring)
        return LesionScore.of_matched(score, rules)
    pred, ref = check_masks(pred, ref, spacing)
    lesions, _ = reference_lesions(ref, dilation=rules.dilation)
    return score_lesions(
        pred, lesions, spacing=spacing, rules=rules, scoring=scoring, min_volume_mm3=rules.min_volume_mm3
    )


def lesion_wise_label_maps(
    pred: np.ndarray,
    ref: np.ndarray,
    *,
    table: LabelTable,
    spacing: Sequence[float],
    rules: AnyLesionRules,
    scoring: Scoring = SCORINGS["brats2023"],
) -> dict[str, LesionScore]:
    """Lesion-wise scores of two integer label maps, set by set of ``table.evaluation_sets()`` (BraTS:
    WT, TC, ET, ...; class tables: each label), with the rules' joins across tissues and per-set volumes.

    Args:
        pred: predicted label map ``(X, Y, Z)``.
        ref: reference label map on the same grid.
        table: the label table whose evaluation sets are scored.
        spacing: voxel size along X, Y, Z in mm.
        rules: e.g. ``LESION_RULES["GLI"]``, ``LESION_RULES["brats2024-met"]`` or ``LESION_RULES["brats2025-gli"]``.
        scoring: as for :func:`lesion_wise_scores`.

    Returns:
        Set name -> :class:`LesionScore`, in the table's evaluation order.
    """
    pred, ref = np.asarray(pred), np.asarray(ref)
    scores = {}
    for name, values in table.evaluation_sets().items():
        if isinstance(rules, MatchedLesionRules):
            scores[name] = lesion_wise_scores(
                np.isin(pred, values), np.isin(ref, values), spacing=spacing, rules=rules, scoring=scoring
            )
            continue
        lesions, _ = reference_lesions(np.isin(ref, values), dilation=rules.dilation)
        for tissue in rules.merge_through.get(tuple(values), ()):
            partner, _ = reference_lesions(np.isin(ref, tissue), dilation=rules.dilation)
            lesions, _ = merge_through(lesions, partner)
        scores[name] = score_lesions(
            np.isin(pred, values),
            lesions,
            spacing=spacing,
            rules=rules,
            scoring=scoring,
            min_volume_mm3=rules.min_volume_for(values),
        )
    return scores
