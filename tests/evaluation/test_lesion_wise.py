"""BraTS 2023 lesion-wise Dice and HD95: hand-built scenes whose scores are worked out by hand, and a
slow full-grid re-implementation (SimpleITK components, scipy distance transforms) on random scenes."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from medseg.evaluation.lesion_wise import (
    LESION_RULES,
    MISSED_LESION_HD95_MM,
    LesionRules,
    LesionScore,
    lesion_wise_label_maps,
    lesion_wise_scores,
    reference_lesions,
)
from medseg.evaluation.metrics import dice, hd95
from medseg.labels import BRATS2021

if TYPE_CHECKING:
    from conftest import ReferenceMetrics

GLI, MET = LESION_RULES["GLI"], LESION_RULES["MET"]


def _scene() -> tuple[np.ndarray, np.ndarray]:
    """Reference: two 10-voxel cubes 4 voxels apart (one lesion under a 3-voxel dilation, two under a
    1-voxel one), a 27-voxel cube, and a 1000-voxel cube that nothing predicts. Prediction: the two
    cubes exactly, a piece 2 voxels from the small cube, and a piece far from everything."""
    ref = np.zeros((64, 64, 40), bool)
    ref[5:15, 5:15, 5:15] = True
    ref[19:29, 5:15, 5:15] = True
    ref[40:43, 40:43, 30:33] = True
    ref[30:40, 40:50, 5:15] = True
    pred = np.zeros_like(ref)
    pred[5:15, 5:15, 5:15] = True
    pred[19:29, 5:15, 5:15] = True
    pred[44, 40:43, 30:33] = True
    pred[55:60, 55:60, 2:6] = True
    return pred, ref


@pytest.mark.parametrize(
    ("rules", "lesions", "expected"),
    [
        # GLI: kept are the joined pair (Dice 1, HD95 0) and the missed cube (0, 374); the 27 mm³ cube
        # is left out, and the piece beside it matches it, so is no false positive; the far piece is one
        (GLI, 3, LesionScore(pytest.approx(1 / 3), pytest.approx(2 * MISSED_LESION_HD95_MM / 3), 1, 1, 1)),
        # MET: both cubes count (1, 0 each), the small cube too, which the piece 2 voxels away no longer
        # reaches (0, 374), and the missed cube (0, 374); false positives: that piece and the far one
        (MET, 4, LesionScore(pytest.approx(2 / 6), pytest.approx(4 * MISSED_LESION_HD95_MM / 6), 2, 2, 2)),
    ],
    ids=["glioma", "metastasis"],
)
def test_rules_join_match_and_leave_out_lesions(rules: LesionRules, lesions: int, expected: LesionScore) -> None:
    pred, ref = _scene()
    assert reference_lesions(ref, dilation=rules.dilation)[1] == lesions
    assert lesion_wise_scores(pred, ref, spacing=(1, 1, 1), rules=rules) == expected


def test_the_volume_threshold_is_in_mm3() -> None:
    pred, ref = _scene()
    # at 2 mm voxels the 27-voxel cube holds 216 mm³ and counts; the piece 2 voxels beside it matches
    # it without overlapping it: Dice 0, and an HD95 of the gap between them
    score = lesion_wise_scores(pred, ref, spacing=(2, 2, 2), rules=GLI)
    small_ref, small_pred = ref[38:46, 38:46, 28:35], pred[38:46, 38:46, 28:35]
    gap_hd = hd95(small_pred, small_ref, spacing=(2, 2, 2))
    assert dice(small_pred, small_ref) == 0 and gap_hd == pytest.approx(8.0)  # from the cube's far face
    assert score.tp == 2 and score.fn == 1 and score.fp == 1
    assert score.dice == pytest.approx(1 / 4)
    assert score.hd95 == pytest.approx((gap_hd + 2 * MISSED_LESION_HD95_MM) / 4)


def test_empty_masks() -> None:
    empty = np.zeros((20, 20, 20), bool)
    blob = empty.copy()
    blob[5:12, 5:12, 5:12] = True
    assert lesion_wise_scores(empty, empty, spacing=(1, 1, 1), rules=GLI) == (1.0, 0.0, 0, 0, 0)
    assert lesion_wise_scores(blob, empty, spacing=(1, 1, 1), rules=GLI) == (0.0, MISSED_LESION_HD95_MM, 0, 0, 1)
    assert lesion_wise_scores(empty, blob, spacing=(1, 1, 1), rules=GLI) == (0.0, MISSED_LESION_HD95_MM, 0, 1, 0)
    # a lesion at or below the threshold and no prediction: nothing to score
    tiny = empty.copy()
    tiny[0:2, 0:2, 0:2] = True
    assert lesion_wise_scores(empty, tiny, spacing=(1, 1, 1), rules=GLI) == (1.0, 0.0, 0, 0, 0)


def test_rules_refuse_negative_values() -> None:
    with pytest.raises(ValueError, match="dilation >= 0"):
        LesionRules(dilation=-1, min_volume_mm3=50)


# --- a slow, full-grid re-implementation -----------------------------------------------------------


def _components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    image = sitk.ConnectedComponent(sitk.GetImageFromArray(mask.astype(np.uint8)), True)  # 26-connected
    labels = sitk.GetArrayFromImage(image)
    return labels, int(labels.max())


def _grow(mask: np.ndarray, iterations: int) -> np.ndarray:
    out = mask.copy()
    for _ in range(iterations):  # one voxel at a time, by shifting along each 18-neighbour offset
        step = out.copy()
        for offset in np.argwhere(ndimage.generate_binary_structure(3, 2)) - 1:
            step |= np.roll(np.pad(out, 1), tuple(offset), axis=(0, 1, 2))[1:-1, 1:-1, 1:-1]
        out = step
    return out


def _reference_lesion_wise(
    pred: np.ndarray, ref: np.ndarray, spacing: tuple[float, ...], rules: LesionRules, metrics: type[ReferenceMetrics]
) -> tuple:
    grown, n = _components(_grow(ref, rules.dilation))
    lesions = np.where(ref, grown, 0)
    pieces, n_pieces = _components(pred)
    matched_all: set[int] = set()
    dices, hds, tp, fn = [], [], 0, 0
    for k in range(1, n + 1):
        lesion = lesions == k
        matched = set(np.unique(pieces[_grow(lesion, rules.dilation)]).tolist()) - {0}
        matched_all |= matched
        if lesion.sum() * np.prod(spacing) <= rules.min_volume_mm3:
            continue
        answer = np.isin(pieces, list(matched))
        if matched:
            tp += 1
            dices.append(metrics.dice(answer, lesion))
            hds.append(metrics.hd95(answer, lesion, spacing))
        else:
            fn += 1
            dices.append(0.0)
            hds.append(374.0)
    fp = n_pieces - len(matched_all)
    if not dices and not fp:
        return 1.0, 0.0, 0, 0, 0
    return sum(dices) / (len(dices) + fp), (sum(hds) + 374.0 * fp) / (len(dices) + fp), tp, fn, fp


def _random_scene(rng: np.random.Generator, shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Eight reference balls of radius 1-5 voxels (some close enough to join, some below the volume
    threshold); the prediction finds most of them, moved and resized, and adds three of its own."""
    idx = np.indices(shape)

    def ball(centre: np.ndarray, radius: float) -> np.ndarray:
        return sum(((idx[i] - centre[i]) / radius) ** 2 for i in range(3)) <= 1

    ref, pred = np.zeros(shape, bool), np.zeros(shape, bool)
    for _ in range(8):
        centre, radius = rng.uniform(2, np.array(shape) - 2), rng.uniform(1.0, 5.0)
        ref |= ball(centre, radius)
        if rng.random() < 0.7:
            pred |= ball(centre + rng.uniform(-2, 2, 3), radius * rng.uniform(0.7, 1.2))
    for _ in range(3):
        pred |= ball(rng.uniform(2, np.array(shape) - 2), rng.uniform(1.0, 3.0))
    return pred, ref


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_matches_a_full_grid_reimplementation(seed: int, reference_metrics: type[ReferenceMetrics]) -> None:
    rng = np.random.default_rng(seed)
    shape, spacing = (48, 40, 24), (1.2, 0.9, 2.0)
    pred, ref = _random_scene(rng, shape)
    for rules in (GLI, MET, LesionRules(dilation=0, min_volume_mm3=10.0)):
        expected = _reference_lesion_wise(pred, ref, spacing, rules, reference_metrics)
        got = lesion_wise_scores(pred, ref, spacing=spacing, rules=rules)
        assert got.tp > 1 and 0 < got.dice < 1
        assert got[2:] == expected[2:]
        assert got.dice == pytest.approx(expected[0], abs=1e-6)
        assert got.hd95 == pytest.approx(expected[1], rel=1e-5)


def test_label_maps_score_each_brats_region() -> None:
    pred, ref = _scene()
    ref_map = np.where(ref, 2, 0).astype(np.uint8)  # all oedema: WT lesions, no TC or ET
    pred_map = np.where(pred, 2, 0).astype(np.uint8)
    pred_map[55:60, 55:60, 2:6] = 4  # the far piece is enhancing: an ET and TC false positive too
    scores = lesion_wise_label_maps(pred_map, ref_map, table=BRATS2021, spacing=(1, 1, 1), rules=GLI)
    assert list(scores) == ["WT", "TC", "ET"]
    assert scores["WT"] == lesion_wise_scores(pred, ref, spacing=(1, 1, 1), rules=GLI)
    for region in ("TC", "ET"):
        assert scores[region] == (0.0, MISSED_LESION_HD95_MM, 0, 0, 1)
