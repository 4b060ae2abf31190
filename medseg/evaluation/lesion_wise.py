"""Lesion-wise Dice and HD95 (mm), the metrics BraTS has ranked on since 2023.

A whole-image Dice lets one large lesion hide every small one that a model misses or invents. The
lesion-wise scores count each lesion once (the definition of the BraTS 2023 evaluation, Saluja et
al., github.com/rachitsaluja/BraTS-2023-Metrics):

1. **Reference lesions.** The reference mask's 26-connected components, where components that its
   dilation (``dilation`` iterations with the 18-connected 3 x 3 x 3 neighbourhood) joins count as
   one lesion: a satellite a few voxels from a tumour is part of it, not a lesion of its own.
2. **Matching.** A predicted 26-connected component matches a reference lesion when it touches that
   lesion's own dilation (the same neighbourhood and iterations). A lesion's Dice and HD95 are those
   of the lesion and the union of the components that match it; a lesion nothing matches is a false
   negative (Dice 0, HD95 374 mm).
3. **Small lesions.** Reference lesions of at most ``min_volume_mm3`` are left out of the score (a
   prediction that matches one is not a false positive either).
4. **False positives.** Each predicted component that matches no reference lesion scores Dice 0 and
   HD95 374 mm.
5. **Score.** Lesion-wise Dice is the sum of the kept lesions' Dice over (kept lesions + false
   positives); lesion-wise HD95 likewise, with 374 mm per false positive. Nothing to score (no kept
   lesion, no false positive) gives Dice 1 and HD95 0.

Each lesion's HD95 follows :func:`medseg.evaluation.metrics.hd95` (MONAI's surface voxels and the larger of the
two directed 95th percentiles), where the BraTS script uses DeepMind's surface-element distances, so
the two differ by a fraction of a voxel per lesion. The parameters of each BraTS 2023 challenge are in
:data:`LESION_RULES`.

Masks are boolean ``(X, Y, Z)`` arrays on one grid; ``spacing`` is the voxel size along those axes in
mm. Orientation does not matter.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from scipy import ndimage

from medseg.errors import MedsegInputError
from medseg.evaluation.metrics import check_masks, dice, hd95, mask_box
from medseg.labels import LabelTable

MISSED_LESION_HD95_MM = 374.0
"""HD95 of a missed lesion and of a false positive: the BraTS 2023 script's constant (about the
diagonal of a 240 x 240 x 155 grid at 1 mm, 373.13 mm)."""

_COMPONENTS = np.ones((3, 3, 3), dtype=bool)  # 26-connected components
_DILATION = ndimage.generate_binary_structure(3, 2)  # the 18-connected neighbourhood


@dataclass(frozen=True)
class LesionRules:
    """How lesions are formed and which are scored.

    Attributes:
        dilation: iterations of the 18-connected dilation that joins nearby reference components and
            finds the predicted components that match a lesion (0: neither).
        min_volume_mm3: reference lesions of at most this volume (mm³) are left out of the score.
    """

    dilation: int
    min_volume_mm3: float

    def __post_init__(self) -> None:
        if self.dilation < 0 or self.min_volume_mm3 < 0:
            raise ValueError(f"lesion rules need dilation >= 0 and min_volume_mm3 >= 0, got {self}")


LESION_RULES: dict[str, LesionRules] = {
    "GLI": LesionRules(dilation=3, min_volume_mm3=50.0),
    "SSA": LesionRules(dilation=3, min_volume_mm3=50.0),
    "MEN": LesionRules(dilation=1, min_volume_mm3=50.0),
    "PED": LesionRules(dilation=3, min_volume_mm3=50.0),
    "MET": LesionRules(dilation=1, min_volume_mm3=2.0),
}
"""The BraTS 2023 challenges' rules: adult glioma (GLI), sub-Saharan Africa (SSA), meningioma (MEN),
paediatric (PED) and metastases (MET)."""


def get_lesion_rules(name: str) -> LesionRules:
    """The rules of one BraTS 2023 challenge (a key of :data:`LESION_RULES`).

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
        dice: lesion-wise Dice (0..1).
        hd95: lesion-wise HD95 (mm).
        tp: kept reference lesions that a predicted component matches.
        fn: kept reference lesions that nothing matches.
        fp: predicted components that match no reference lesion.
    """

    dice: float
    hd95: float
    tp: int
    fn: int
    fp: int


def reference_lesions(ref: np.ndarray, *, dilation: int) -> tuple[np.ndarray, int]:
    """Label the lesions of a reference mask: 26-connected components, joined where ``dilation``
    iterations of the 18-connected dilation join them.

    Args:
        ref: reference mask ``(X, Y, Z)``.
        dilation: iterations of the dilation (0: the components themselves).

    Returns:
        ``(lesions, n)``: an int ``(X, Y, Z)`` array, 0 outside the mask and 1..n on the lesions.
    """
    ref = np.asarray(ref, dtype=bool)
    if dilation == 0:
        return ndimage.label(ref, structure=_COMPONENTS)
    grown, n = ndimage.label(ndimage.binary_dilation(ref, _DILATION, iterations=dilation), structure=_COMPONENTS)
    return np.where(ref, grown, 0), n


def lesion_wise_scores(
    pred: np.ndarray, ref: np.ndarray, *, spacing: Sequence[float], rules: LesionRules
) -> LesionScore:
    """Lesion-wise Dice and HD95 of two boolean ``(X, Y, Z)`` masks (see the module docstring).

    Args:
        pred: predicted mask ``(X, Y, Z)``, any dtype (nonzero = inside).
        ref: reference mask on the same grid.
        spacing: voxel size along X, Y, Z in mm; gives the lesions' volumes and the HD95s.
        rules: dilation and smallest scored lesion volume, e.g. ``LESION_RULES["GLI"]``.

    Returns:
        The case's :class:`LesionScore`.

    Raises:
        ValueError: the masks are not of one 3-D shape, or ``spacing`` is not three values
            (:func:`~medseg.evaluation.metrics.check_masks`).
    """
    pred, ref = check_masks(pred, ref, spacing)
    voxel_mm3 = float(np.prod(spacing))
    if pred.any() or ref.any():  # the box that holds both masks and every lesion's dilation
        box = mask_box(pred | ref, margin=rules.dilation + 1)
        pred, ref = pred[box], ref[box]
    lesions, n_lesions = reference_lesions(ref, dilation=rules.dilation)
    components, n_components = ndimage.label(pred, structure=_COMPONENTS)
    matched_any: set[int] = set()
    dices: list[float] = []
    hd95s: list[float] = []
    tp = fn = 0
    for lesion_id in range(1, n_lesions + 1):
        lesion = lesions == lesion_id
        near = mask_box(lesion, rules.dilation + 1)  # the lesion's dilation stays inside this box
        reach = (
            ndimage.binary_dilation(lesion[near], _DILATION, iterations=rules.dilation)
            if rules.dilation
            else lesion[near]
        )
        matched = set(np.unique(components[near][reach]).tolist()) - {0}
        matched_any |= matched
        if lesion.sum() * voxel_mm3 <= rules.min_volume_mm3:
            continue
        if not matched:
            fn += 1
            dices.append(0.0)
            hd95s.append(MISSED_LESION_HD95_MM)
            continue
        tp += 1
        answer = np.isin(components, list(matched))
        both = mask_box(lesion | answer, 0)  # a voxel on the box's faces lies on its mask's surface anyway
        dices.append(dice(answer[both], lesion[both]))
        hd95s.append(hd95(answer[both], lesion[both], spacing=spacing))
    fp = n_components - len(matched_any)
    scored = len(dices) + fp
    if scored == 0:
        return LesionScore(dice=1.0, hd95=0.0, tp=0, fn=0, fp=0)
    return LesionScore(
        dice=sum(dices) / scored,
        hd95=(sum(hd95s) + fp * MISSED_LESION_HD95_MM) / scored,
        tp=tp,
        fn=fn,
        fp=fp,
    )


def lesion_wise_label_maps(
    pred: np.ndarray, ref: np.ndarray, *, table: LabelTable, spacing: Sequence[float], rules: LesionRules
) -> dict[str, LesionScore]:
    """Lesion-wise scores of two integer label maps, set by set of ``table.evaluation_sets()`` (BraTS:
    WT, TC, ET; class tables: each label).

    Args:
        pred: predicted label map ``(X, Y, Z)``.
        ref: reference label map on the same grid.
        table: the label table whose evaluation sets are scored.
        spacing: voxel size along X, Y, Z in mm.
        rules: e.g. ``LESION_RULES["GLI"]``.

    Returns:
        Set name -> :class:`LesionScore`, in the table's evaluation order.
    """
    return {
        name: lesion_wise_scores(np.isin(pred, values), np.isin(ref, values), spacing=spacing, rules=rules)
        for name, values in table.evaluation_sets().items()
    }
