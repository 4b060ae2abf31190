"""Lesion-wise scores by one-to-one lesion matching: BraTS 2025, as its ``brats-evaluation`` package scores them
on Panoptica (``brats-evaluation`` 0.0.10, Panoptica 2.1.7): metastases (MET) by ``config_mets`` and
``parse_mets_results``; adult glioma (GLI), paediatric tumours (PED), pre-operative meningioma (MEN),
meningioma radiotherapy (MEN-RT) and GoAT by ``config_gli``, ``config_ped``, ``config_MenPre``, ``config_MenRT``
and ``config_GoAT`` with ``parse_seg_results``. The configurations differ only in their regions (the label
tables'); the two parsers form the lesion-wise means differently (:attr:`MatchedLesionRules.scored`).

Unlike the BraTS 2023 and 2024 rules (:mod:`medseg.evaluation.lesion_wise`: dilation, every touching
prediction joined to a lesion), each reference lesion here is paired with at most one predicted lesion:

1. **Lesions.** The reference's and the prediction's 26-connected components, without dilation or joins.
2. **Matching.** Every overlapping (reference, predicted) pair whose Dice is at least
   :attr:`MatchedLesionRules.matching_dice` (1e-6: any overlap) is a candidate; the pairs kept are those of
   the one-to-one assignment that maximises the sum of their Dice (``scipy.optimize.linear_sum_assignment``
   on ``1 - Dice``, as Panoptica's ``MaxBipartiteMatching``). A predicted lesion that overlaps a reference
   lesion but loses it to another prediction is a false positive.
3. **Per lesion.** A matched lesion's Dice, HD95 and NSD are those of the lesion and its one predicted
   lesion, with the :class:`~medseg.evaluation.metrics.Scoring` given (BraTS 2025: Panoptica's surface
   voxels) and an NSD tolerance of the smallest voxel side (Panoptica's default). Its volume is its voxel
   count times the voxel volume (mm³).
4. **Large and small lesions.** Lesions of at least :attr:`MatchedLesionRules.large_volume_mm3` (20 mm³)
   are *large*, smaller ones *small*; a lesion is *detected* when matched with a Dice of at least
   :attr:`MatchedLesionRules.detection_dice` (0.1). Counted for every rule set; only MET scores by them.
5. **Score.** With ``scored="large_and_false_positives"`` (MET): lesion-wise Dice, HD95 and NSD are the means
   over the large lesions and the false positives, a missed large lesion and each false positive scoring
   Dice 0, NSD 0 and the scoring's one-empty HD95 (373 mm); small lesions are only counted. A case without
   any large reference lesion (none at all, or only small ones, with or without false positives) has no
   lesion-wise score: NaN, which the challenge leaves out of its means.
   With ``scored="matched_pairs"`` (GLI, PED, MEN, MEN-RT, GoAT: Panoptica's ``sq_dsc``, ``sq_nsd`` and
   ``sq_hd95``): the means over the matched pairs only, whatever their size; missed lesions and false
   positives lower only the counts (and F1). Without a matched pair: Dice 0, NSD 0 and the one-empty HD95
   (373 mm, where the package writes ``inf``: docs/conventions.md) when either mask has a lesion; NaN when
   neither has.

Masks are boolean ``(X, Y, Z)`` arrays on one grid; ``spacing`` is the voxel size along those axes in mm.
Orientation does not matter.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

import numpy as np
from scipy import ndimage
from scipy.optimize import linear_sum_assignment

from medseg.evaluation.metrics import SCORINGS, Scoring, check_masks, dice, hd95, mask_box, nsd

_COMPONENTS = np.ones((3, 3, 3), dtype=bool)  # 26-connected components, as Panoptica's cc3d

LesionMeans = Literal["large_and_false_positives", "matched_pairs"]
"""What the lesion-wise means are taken over (module docstring, step 5)."""


@dataclass(frozen=True)
class MatchedLesionRules:
    """The thresholds of one-to-one lesion matching (module docstring).

    Attributes:
        matching_dice: the smallest Dice (0..1) of a pair that may be matched.
        large_volume_mm3: reference lesions of at least this volume (mm³) are scored; smaller ones only counted.
        detection_dice: the smallest Dice (0..1) of a matched lesion that counts as detected.
        scored: what the lesion-wise means are taken over: ``"large_and_false_positives"`` (the large
            lesions, missed ones included, and the false positives) or ``"matched_pairs"`` (the matched
            pairs only); the size and detection thresholds shape the score only in the first.
    """

    matching_dice: float = 1e-6
    large_volume_mm3: float = 20.0
    detection_dice: float = 0.1
    scored: LesionMeans = "large_and_false_positives"

    def __post_init__(self) -> None:
        if not (0 < self.matching_dice <= 1 and self.large_volume_mm3 >= 0 and 0 <= self.detection_dice <= 1):
            raise ValueError(f"matched lesion rules need Dice thresholds in (0, 1] and a volume >= 0, got {self}")
        if self.scored not in ("large_and_false_positives", "matched_pairs"):
            raise ValueError(f"matched lesion rules score large_and_false_positives or matched_pairs, got {self}")

    def describe(self) -> str:
        """One line for summaries: how lesions are matched and which are scored."""
        if self.scored == "matched_pairs":
            return "one-to-one Dice matching, means over the matched pairs"
        return (
            f"one-to-one Dice matching, lesions >= {self.large_volume_mm3:g} mm³ scored,"
            f" detected at Dice >= {self.detection_dice:g}"
        )


BRATS2025_MET = MatchedLesionRules()
"""BraTS 2025 MET: ``MaxBipartiteMatching`` at Dice 1e-6 (``config_mets``), 20 mm³ and Dice 0.1 (the defaults of
``parse_mets_results``' ``vol_threshold`` and ``overlap_threshold``)."""
BRATS2025_MATCHED_PAIRS = MatchedLesionRules(scored="matched_pairs")
"""BraTS 2025 GLI, PED, MEN (pre-operative), MEN-RT and GoAT: ``MaxBipartiteMatching`` at Dice 1e-6
(``config_gli``, ``config_ped``, ``config_MenPre``, ``config_MenRT``, ``config_GoAT``), lesion-wise means over the
matched pairs (``parse_seg_results``: Panoptica's ``sq_dsc``, ``sq_nsd``, ``sq_hd95``)."""


class ReferenceLesion(NamedTuple):
    """One reference lesion and what it was matched with.

    Attributes:
        volume_mm3: its volume (voxel count x voxel volume, mm³).
        matched: a predicted lesion is paired with it.
        dice: Dice with that lesion (0..1); NaN when unmatched.
        hd95: HD95 (mm) with that lesion; NaN when unmatched.
        nsd: NSD with that lesion at the smallest voxel side (0..1); NaN when unmatched.
    """

    volume_mm3: float
    matched: bool
    dice: float
    hd95: float
    nsd: float


class MatchedLesionScore(NamedTuple):
    """Lesion-wise scores of one region of one case (module docstring, step 5).

    Attributes:
        dice: mean Dice over what the rules score (0..1); NaN where they give no score (module docstring).
        hd95: mean HD95 likewise (mm).
        nsd: mean NSD likewise (0..1).
        tp: reference lesions matched (any size).
        fn: reference lesions unmatched (any size).
        fp: predicted lesions unmatched.
        large_tp: large lesions detected (matched at Dice >= the detection threshold).
        large_fn: large lesions not detected.
        small_tp: small lesions detected.
        small_fn: small lesions not detected.
        lesions: every reference lesion, matched ones first, each group in reference-component order.
    """

    dice: float
    hd95: float
    nsd: float
    tp: int
    fn: int
    fp: int
    large_tp: int
    large_fn: int
    small_tp: int
    small_fn: int
    lesions: tuple[ReferenceLesion, ...]


def match_lesions(ref_lesions: np.ndarray, pred_lesions: np.ndarray, *, min_dice: float) -> dict[int, int]:
    """The one-to-one matching of reference and predicted lesions that maximises the sum of the pairs' Dice.

    Args:
        ref_lesions: int ``(X, Y, Z)`` reference lesion labels 1..n (0 outside).
        pred_lesions: int ``(X, Y, Z)`` predicted lesion labels 1..m on the same grid.
        min_dice: pairs of lower Dice (or no overlap) are never matched.

    Returns:
        Reference label -> its predicted label, for the matched lesions.
    """
    n_ref, n_pred = int(ref_lesions.max(initial=0)), int(pred_lesions.max(initial=0))
    both = (ref_lesions > 0) & (pred_lesions > 0)
    if not both.any():
        return {}
    pairs, overlap = np.unique(np.stack([ref_lesions[both], pred_lesions[both]]), axis=1, return_counts=True)
    ref_sizes = np.bincount(ref_lesions.ravel(), minlength=n_ref + 1)
    pred_sizes = np.bincount(pred_lesions.ravel(), minlength=n_pred + 1)
    dices = 2.0 * overlap / (ref_sizes[pairs[0]] + pred_sizes[pairs[1]])
    candidate = dices >= min_dice
    cost = np.full((n_ref, n_pred), 1.0 + 1e-6)  # above every candidate's 1 - Dice: never chosen over one
    cost[pairs[0][candidate] - 1, pairs[1][candidate] - 1] = 1.0 - dices[candidate]
    rows, cols = linear_sum_assignment(cost)
    return {int(r) + 1: int(c) + 1 for r, c in zip(rows, cols, strict=True) if cost[r, c] < 1.0}


def matched_lesion_scores(
    pred: np.ndarray,
    ref: np.ndarray,
    *,
    spacing: Sequence[float],
    rules: MatchedLesionRules = BRATS2025_MET,
    scoring: Scoring = SCORINGS["brats2025"],
) -> MatchedLesionScore:
    """Lesion-wise scores of two boolean ``(X, Y, Z)`` masks by one-to-one matching (module docstring).

    Args:
        pred: predicted mask ``(X, Y, Z)``, any dtype (nonzero = inside).
        ref: reference mask on the same grid.
        spacing: voxel size along X, Y, Z in mm; gives the volumes, HD95s and the NSD tolerance.
        rules: the matching, size and detection thresholds and what the means are taken over.
        scoring: the HD95's and NSD's surfaces and the HD95 of a missed lesion and a false positive
            (by default BraTS 2025's: Panoptica's surface voxels, 373 mm).

    Raises:
        ValueError: the masks are not of one 3-D shape, or ``spacing`` is not three values.
    """
    pred, ref = check_masks(pred, ref, spacing)
    if pred.any() or ref.any():  # the box that holds both masks, with a voxel of background round it
        box = mask_box(pred | ref, margin=1)
        pred, ref = pred[box], ref[box]
    ref_lesions, n_ref = ndimage.label(ref, structure=_COMPONENTS)
    pred_lesions, n_pred = ndimage.label(pred, structure=_COMPONENTS)
    matches = match_lesions(ref_lesions, pred_lesions, min_dice=rules.matching_dice)
    voxel_mm3 = float(np.prod([float(s) for s in spacing]))
    sizes = np.bincount(ref_lesions.ravel(), minlength=n_ref + 1)
    tolerance = min(float(s) for s in spacing)
    matched, unmatched = [], []
    for lesion_id in range(1, n_ref + 1):
        volume = float(sizes[lesion_id]) * voxel_mm3
        if lesion_id not in matches:
            unmatched.append(ReferenceLesion(volume, False, math.nan, math.nan, math.nan))
            continue
        lesion, answer = ref_lesions == lesion_id, pred_lesions == matches[lesion_id]
        both = mask_box(lesion | answer, 1)
        lesion, answer = lesion[both], answer[both]
        matched.append(
            ReferenceLesion(
                volume,
                True,
                dice(answer, lesion),
                hd95(answer, lesion, spacing=spacing, scoring=scoring),
                nsd(answer, lesion, spacing=spacing, tolerance_mm=tolerance, scoring=scoring),
            )
        )
    lesions = (*matched, *unmatched)
    missed_hd95 = scoring.one_empty_hd95(ref.shape, spacing)
    fp = n_pred - len(matched)
    large = [lesion for lesion in lesions if lesion.volume_mm3 >= rules.large_volume_mm3]
    small = [lesion for lesion in lesions if lesion.volume_mm3 < rules.large_volume_mm3]
    large_tp = sum(lesion.matched and lesion.dice >= rules.detection_dice for lesion in large)
    small_tp = sum(lesion.matched and lesion.dice >= rules.detection_dice for lesion in small)
    counts = (len(matched), len(unmatched), fp, large_tp, len(large) - large_tp, small_tp, len(small) - small_tp)
    if rules.scored == "matched_pairs":
        if matched:
            means = [sum(getattr(lesion, f) for lesion in matched) / len(matched) for f in ("dice", "hd95", "nsd")]
            return MatchedLesionScore(*means, *counts, lesions)
        if n_ref or n_pred:
            return MatchedLesionScore(0.0, missed_hd95, 0.0, *counts, lesions)
        return MatchedLesionScore(math.nan, math.nan, math.nan, *counts, lesions)
    if not large:
        return MatchedLesionScore(math.nan, math.nan, math.nan, *counts, lesions)
    scored = len(large) + fp
    return MatchedLesionScore(
        sum(lesion.dice for lesion in large if lesion.matched) / scored,
        (sum(lesion.hd95 if lesion.matched else missed_hd95 for lesion in large) + fp * missed_hd95) / scored,
        sum(lesion.nsd for lesion in large if lesion.matched) / scored,
        *counts,
        lesions,
    )
