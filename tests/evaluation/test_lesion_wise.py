"""BraTS lesion-wise Dice and HD95: hand-built scenes whose scores are worked out by hand (the 2023 rules and
each 2024 rule set's own joins, thresholds and false-positive handling), and a full-grid re-implementation
(SimpleITK components, scipy distance transforms) on random scenes."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from medseg.evaluation.lesion_wise import (
    LESION_RULES,
    LesionRules,
    LesionScore,
    lesion_wise_label_maps,
    lesion_wise_scores,
    reference_lesions,
)
from medseg.evaluation.metrics import SCORINGS, Scoring, dice, hd95, image_diagonal_mm
from medseg.labels import BRATS2021, LabelTable, Region

if TYPE_CHECKING:
    from conftest import ReferenceMetrics

GLI, MET = LESION_RULES["GLI"], LESION_RULES["MET"]
BRATS2023_SCORING = SCORINGS["brats2023"]
MISSED_LESION_HD95_MM = 374.0  # the BraTS 2023 and 2024 scripts' HD95 of a missed lesion and a false positive


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
    gap_hd = hd95(small_pred, small_ref, spacing=(2, 2, 2), scoring=BRATS2023_SCORING)
    assert dice(small_pred, small_ref) == 0 and gap_hd == pytest.approx(8.0)  # from the cube's far face
    assert score.tp == 2 and score.fn == 1 and score.fp == 1
    assert score.dice == pytest.approx(1 / 4)
    assert score.hd95 == pytest.approx((gap_hd + 2 * MISSED_LESION_HD95_MM) / 4)


def test_empty_masks() -> None:
    empty = np.zeros((20, 20, 20), bool)
    blob = empty.copy()
    blob[5:12, 5:12, 5:12] = True
    assert lesion_wise_scores(empty, empty, spacing=(1, 1, 1), rules=GLI) == LesionScore(1.0, 0.0, 0, 0, 0)
    assert lesion_wise_scores(blob, empty, spacing=(1, 1, 1), rules=GLI) == LesionScore(
        0.0, MISSED_LESION_HD95_MM, 0, 0, 1
    )
    assert lesion_wise_scores(empty, blob, spacing=(1, 1, 1), rules=GLI) == LesionScore(
        0.0, MISSED_LESION_HD95_MM, 0, 1, 0
    )
    # a lesion at or below the threshold and no prediction: nothing to score
    tiny = empty.copy()
    tiny[0:2, 0:2, 0:2] = True
    assert lesion_wise_scores(empty, tiny, spacing=(1, 1, 1), rules=GLI) == LesionScore(1.0, 0.0, 0, 0, 0)


def test_rules_refuse_negative_values() -> None:
    for bad in ({"dilation": -1}, {"min_volume_mm3": -1.0}, {"max_dropped_voxels": -1}):
        with pytest.raises(ValueError, match="dilation, volumes and max_dropped_voxels >= 0"):
            LesionRules(**{"dilation": 1, "min_volume_mm3": 50.0, **bad})


def test_missed_lesions_take_the_scorings_constant() -> None:
    empty = np.zeros((20, 20, 20), bool)
    blob = empty.copy()
    blob[5:12, 5:12, 5:12] = True
    for name, constant in (
        ("brats2023", 374.0),
        ("brats2025", 373.0),
        ("voxels", image_diagonal_mm((20,) * 3, (1,) * 3)),
    ):
        scoring = SCORINGS[name]
        assert lesion_wise_scores(empty, blob, spacing=(1, 1, 1), rules=GLI, scoring=scoring).hd95 == constant
        assert lesion_wise_scores(blob, empty, spacing=(1, 1, 1), rules=GLI, scoring=scoring).hd95 == constant


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
    pred: np.ndarray,
    ref: np.ndarray,
    spacing: tuple[float, ...],
    rules: LesionRules,
    metrics: type[ReferenceMetrics],
    surface_hd95: Callable[[np.ndarray, np.ndarray, tuple[float, ...]], float],
    missed: float,
) -> tuple:
    """The scores of the 2023 rules on the full grid; ``surface_hd95(pred, ref, spacing)`` gives a matched
    lesion's HD95 and ``missed`` that of a missed lesion and a false positive."""
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
            hds.append(surface_hd95(answer, lesion, spacing))
        else:
            fn += 1
            dices.append(0.0)
            hds.append(missed)
    fp = n_pieces - len(matched_all)
    if not dices and not fp:
        return 1.0, 0.0, 0, 0, 0
    return sum(dices) / (len(dices) + fp), (sum(hds) + missed * fp) / (len(dices) + fp), tp, fn, fp


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


def _deepmind_hd95(pred: np.ndarray, ref: np.ndarray, spacing: tuple[float, ...]) -> float:
    surface_distance = pytest.importorskip(
        "surface_distance", reason="DeepMind's surface-distance (dev extra) is not installed"
    )
    distances = surface_distance.compute_surface_distances(ref, pred, spacing)
    return float(surface_distance.compute_robust_hausdorff(distances, 95))


@pytest.mark.parametrize("scoring", ["voxels", "brats2023"])
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_matches_a_full_grid_reimplementation(
    seed: int, scoring: str, reference_metrics: type[ReferenceMetrics]
) -> None:
    rng = np.random.default_rng(seed)
    shape, spacing = (48, 40, 24), (1.2, 0.9, 2.0)
    pred, ref = _random_scene(rng, shape)
    chosen: Scoring = SCORINGS[scoring]
    if scoring == "voxels":  # MONAI's surface voxels, the grid's diagonal
        surface_hd95, missed = reference_metrics.hd95, image_diagonal_mm(shape, spacing)
    else:  # the BraTS 2023 script: DeepMind's surface elements, 374 mm
        surface_hd95, missed = _deepmind_hd95, MISSED_LESION_HD95_MM
    for rules in (GLI, MET, LesionRules(dilation=0, min_volume_mm3=10.0)):
        expected = _reference_lesion_wise(pred, ref, spacing, rules, reference_metrics, surface_hd95, missed)
        got = lesion_wise_scores(pred, ref, spacing=spacing, rules=rules, scoring=chosen)
        assert got.tp > 1 and 0 < got.dice < 1
        assert got[2:5] == expected[2:]
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
        assert scores[region] == LesionScore(0.0, MISSED_LESION_HD95_MM, 0, 0, 1)


# --- BraTS 2024: each rule set's own joins, thresholds and false positives ------------------------------
# (github.com/rachitsaluja/BraTS-2024-Metrics, metrics_{GLI,PED,MET,MEN_RT}.py; the tables are built here
# as the 2024 label tables define them)

GLI_2024 = LabelTable(
    name="brats2024-gli",
    labels={0: "background", 1: "NETC", 2: "SNFH", 3: "ET", 4: "RC"},
    kind="regions",
    regions=(
        Region("WT", (1, 2, 3)),
        Region("TC", (1, 3)),
        Region("NETC", (1,)),
        Region("SNFH", (2,)),
        Region("ET", (3,)),
        Region("RC", (4,)),
    ),
)
MET_2024 = LabelTable(
    name="brats2024-met",
    labels={0: "background", 1: "NETC", 2: "SNFH", 3: "ET"},
    kind="regions",
    regions=(Region("WT", (1, 2, 3)), Region("TC", (1, 3)), Region("ET", (3,))),
)
NOTHING = LesionScore(1.0, 0.0, 0, 0, 0)


def test_gli_2024_scores_et_and_rc_lesions_from_10_mm3_and_the_rest_from_20() -> None:
    ref = np.zeros((40, 40, 20), np.uint8)
    ref[5:8, 5:8, 5:7] = 3  # an 18 mm³ ET lesion: over ET's 10 mm³, under WT's and TC's 20 mm³
    ref[25:28, 25:29, 5] = 4  # a 12 mm³ resection cavity: over RC's 10 mm³ (the script's threshold after ET)
    scores = lesion_wise_label_maps(
        np.zeros_like(ref), ref, table=GLI_2024, spacing=(1, 1, 1), rules=LESION_RULES["brats2024-gli"]
    )
    missed = LesionScore(0.0, MISSED_LESION_HD95_MM, 0, 1, 0)
    assert scores == {"WT": NOTHING, "TC": NOTHING, "NETC": NOTHING, "SNFH": NOTHING, "ET": missed, "RC": missed}


def test_gli_2024_joins_lesions_through_the_lowest_numbered_lesion_they_touch() -> None:
    # ET 1 and ET 2 lie 15 voxels apart; NETC A runs from ET 1 to ET 2 and NETC B touches only ET 2; A and B
    # lie 8 voxels apart, too far for the 3-voxel dilation to join them
    ref = np.zeros((40, 12, 12), np.uint8)
    ref[2:5, 2:5, 2:5] = 3  # ET 1
    ref[5:20, 2:5, 2:5] = 1  # NETC A
    ref[20:28, 2:5, 2:5] = 3  # ET 2
    ref[28:31, 2:5, 2:5] = 1  # NETC B
    rules = LESION_RULES["brats2024-gli"]
    assert reference_lesions(ref == 1, dilation=3)[1] == 2 and reference_lesions(ref == 3, dilation=3)[1] == 2
    scores = lesion_wise_label_maps(ref, ref, table=GLI_2024, spacing=(1, 1, 1), rules=rules)
    # NETC: A joins the group of ET 1 (its lowest), B that of ET 2: still two lesions, not one (the
    # script's joins are not transitive)
    assert scores["NETC"] == LesionScore(1.0, 0.0, 2, 0, 0)
    # ET: both ET lesions touch NETC A, the lowest NETC lesion either touches: one lesion
    assert scores["ET"] == LesionScore(1.0, 0.0, 1, 0, 0)
    # predicting only ET 1 now scores half of the joined lesion, not one lesion of two found
    pred = np.where(np.arange(40)[:, None, None] < 5, ref, 0).astype(np.uint8)
    et = lesion_wise_label_maps(pred, ref, table=GLI_2024, spacing=(1, 1, 1), rules=rules)["ET"]
    assert (et.tp, et.fn, et.fp) == (1, 0, 0)
    assert et.dice == pytest.approx(2 * 27 / (27 + 27 + 72))
    assert lesion_wise_scores(pred == 3, ref == 3, spacing=(1, 1, 1), rules=rules)[2:5] == (1, 1, 0)  # unjoined


def test_met_2024_joins_et_lesions_that_touch_one_netc_lesion() -> None:
    ref = np.zeros((20, 10, 10), np.uint8)
    ref[2:5, 2:5, 2:5] = 3  # ET e1
    ref[5:8, 2:5, 2:5] = 1  # NETC between them: 3 voxels, more than the 1-voxel dilation bridges
    ref[8:11, 2:5, 2:5] = 3  # ET e2
    pred = np.zeros_like(ref)
    pred[2:5, 2:5, 2:5] = 3  # e1 only
    joined = lesion_wise_label_maps(pred, ref, table=MET_2024, spacing=(1, 1, 1), rules=LESION_RULES["brats2024-met"])
    assert (joined["ET"].tp, joined["ET"].fn) == (1, 0)
    assert joined["ET"].dice == pytest.approx(2 * 27 / (27 + 54))
    apart = lesion_wise_label_maps(pred, ref, table=MET_2024, spacing=(1, 1, 1), rules=MET)  # 2023: two lesions
    assert apart["ET"] == LesionScore(pytest.approx(0.5), pytest.approx(MISSED_LESION_HD95_MM / 2), 1, 1, 0)


def test_ped_2024_joins_predicted_pieces_and_drops_specks() -> None:
    ref = np.zeros((60, 30, 30), bool)
    ref[3:9, 3:9, 3:9] = True  # one lesion, predicted exactly
    pred = ref.copy()
    pred[30:33, 10:13, 10:13] = True  # two pieces 6 voxels apart: one false positive under a 5-voxel dilation
    pred[39:42, 10:13, 10:13] = True
    pred[50:52, 25:27, 25:27] = True  # 8 voxels: dropped
    ped_2024 = lesion_wise_scores(pred, ref, spacing=(1, 1, 1), rules=LESION_RULES["brats2024-ped"])
    assert ped_2024 == LesionScore(0.5, pytest.approx(MISSED_LESION_HD95_MM / 2), 1, 0, 1)
    ped_2023 = lesion_wise_scores(pred, ref, spacing=(1, 1, 1), rules=LESION_RULES["PED"])
    assert ped_2023 == LesionScore(0.25, pytest.approx(3 * MISSED_LESION_HD95_MM / 4), 1, 0, 3)


def test_men_rt_2024_counts_but_does_not_penalise_false_positives() -> None:
    ref = np.zeros((40, 20, 20), bool)
    ref[3:9, 3:9, 3:9] = True
    pred = ref.copy()
    pred[30:34, 10:14, 10:14] = True
    rules = LESION_RULES["brats2024-men-rt"]
    assert lesion_wise_scores(pred, ref, spacing=(1, 1, 1), rules=rules) == LesionScore(1.0, 0.0, 1, 0, 1)
    only_false = lesion_wise_scores(pred & ~ref, np.zeros_like(ref), spacing=(1, 1, 1), rules=rules)
    assert only_false == LesionScore(1.0, 0.0, 0, 0, 1)
