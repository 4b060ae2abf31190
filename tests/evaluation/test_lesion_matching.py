"""BraTS 2025's lesion-wise scores (one-to-one matching, as ``brats-evaluation`` on Panoptica), MET's and the other
sub-challenges': hand-worked scenes for each rule, and agreement with the package itself on random and hand-built
label maps."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy import ndimage

from medseg.cli import main
from medseg.errors import MedsegInputError
from medseg.evaluation.lesion_matching import (
    BRATS2025_MATCHED_PAIRS,
    BRATS2025_MET,
    MatchedLesionRules,
    MatchedLesionScore,
    ReferenceLesion,
    match_lesions,
    matched_lesion_scores,
)
from medseg.evaluation.lesion_wise import (
    LESION_RULE_TABLES,
    LESION_RULES,
    LesionScore,
    check_rules_table,
    lesion_wise_label_maps,
    lesion_wise_scores,
)
from medseg.evaluation.metrics import SCORINGS, dice, hd95, nsd
from medseg.evaluation.report import write_report
from medseg.io import Geometry, write_nifti
from medseg.labels import get_label_table

BRATS2025 = SCORINGS["brats2025"]
MISSED = 373.0  # brats-evaluation's HD95 of a missed lesion and of a false positive
MET_2025 = get_label_table("brats2025-met")


def _box(shape: tuple[int, int, int], *boxes: tuple[slice, slice, slice]) -> np.ndarray:
    mask = np.zeros(shape, bool)
    for box in boxes:
        mask[box] = True
    return mask


def test_a_lesion_is_paired_with_one_predicted_lesion_only() -> None:
    # the reference 4 x 4 x 4 box; the prediction covers it but for the 2 x 2 x 2 corner at the origin, and a
    # single voxel in that corner, two voxels away from the rest: both overlap the lesion, the larger Dice wins
    # (2 * 56 / 120 against 2 / 65) and the voxel is a false positive (the 2023 rules would join the two)
    ref = _box((12, 12, 12), np.s_[0:4, 0:4, 0:4])
    big = ref.copy()
    big[0:2, 0:2, 0:2] = False
    pred = big.copy()
    pred[0, 0, 0] = True
    score = matched_lesion_scores(pred, ref, spacing=(1, 1, 1))
    expected_hd95 = hd95(big, ref, spacing=(1, 1, 1), scoring=BRATS2025)
    expected_nsd = nsd(big, ref, spacing=(1, 1, 1), tolerance_mm=1.0, scoring=BRATS2025)
    assert score.lesions == (ReferenceLesion(64.0, True, pytest.approx(112 / 120), expected_hd95, expected_nsd),)
    assert score.dice == pytest.approx(112 / 120 / 2)
    assert score.hd95 == pytest.approx((expected_hd95 + MISSED) / 2)
    assert score.nsd == pytest.approx(expected_nsd / 2)
    assert score[3:10] == (1, 0, 1, 1, 0, 0, 0)


def test_two_lesions_compete_for_one_prediction() -> None:
    # the prediction covers lesion A (64 voxels) and bridges to B (27 voxels), overlapping 9 of B's: Dice 128/155
    # with A, 18/118 with B. It is A's; B, large (27 mm³ >= 20 mm³), is missed
    ref = _box((14, 8, 8), np.s_[0:4, 0:4, 0:4], np.s_[6:9, 0:3, 0:3])
    pred = _box((14, 8, 8), np.s_[0:4, 0:4, 0:4], np.s_[4:7, 0:3, 0:3])
    lesions, _ = ndimage.label(ref, np.ones((3, 3, 3)))
    assert match_lesions(lesions, pred.astype(int), min_dice=1e-6) == {1: 1}
    score = matched_lesion_scores(pred, ref, spacing=(1, 1, 1))
    assert [(lesion.volume_mm3, lesion.matched) for lesion in score.lesions] == [(64.0, True), (27.0, False)]
    assert score.lesions[0].dice == pytest.approx(128 / 155)
    assert score.dice == pytest.approx(128 / 155 / 2)
    assert score.hd95 == pytest.approx((score.lesions[0].hd95 + MISSED) / 2)
    assert score[3:6] == (1, 1, 0)
    assert score[6:8] == (1, 1)  # detected (Dice >= 0.1) and missed


def test_the_matching_maximises_the_sum_of_dice() -> None:
    # lesion labels along a line (any labels will do): Dice (1, 1) 6/10, (1, 2) 2/8, (2, 1) 4/7, (2, 2) none.
    # Pairing the largest Dice first takes (1, 1) alone (0.6); the assignment takes (1, 2) and (2, 1) (0.82)
    ref = np.array([[[2, 0, 1, 1, 2, 1, 1, 0, 1, 0]]])
    pred = np.array([[[1, 2, 1, 2, 1, 0, 1, 2, 1, 0]]])
    assert [dice(pred == p, ref == r) for r, p in ((1, 1), (1, 2), (2, 1), (2, 2))] == pytest.approx(
        [0.6, 0.25, 4 / 7, 0.0]
    )
    assert match_lesions(ref, pred, min_dice=1e-6) == {1: 2, 2: 1}
    # a threshold above a pair's Dice rules that pair out: (1, 1) alone then beats (2, 1) alone
    assert match_lesions(ref, pred, min_dice=0.5) == {1: 1}


def test_large_and_small_lesions_at_the_thresholds() -> None:
    # voxels of 2 mm³: L has 10 voxels (20 mm³, large: >= 20), S 9 (18 mm³, small). L is predicted exactly;
    # S is matched by a 12-voxel piece that overlaps it in one voxel: Dice 2/21 < 0.1, so not detected. It is
    # matched, so not a false positive either, and being small it leaves the lesion-wise scores alone
    spacing = (1.0, 1.0, 2.0)
    ref = _box((24, 8, 8), np.s_[0:10, 0, 0], np.s_[0:9, 5, 5])
    pred = _box((24, 8, 8), np.s_[0:10, 0, 0], np.s_[8:20, 5, 5])
    score = matched_lesion_scores(pred, ref, spacing=spacing)
    assert [(lesion.volume_mm3, lesion.dice) for lesion in score.lesions] == [
        (20.0, 1.0),
        (18.0, pytest.approx(2 / 21)),
    ]
    assert score[:3] == (1.0, 0.0, 1.0)
    assert score[3:10] == (2, 0, 0, 1, 0, 0, 1)
    # the same with detection at Dice 0.09 detects S; and with 21 mm³ as the threshold, L is small too: no score
    assert (
        matched_lesion_scores(pred, ref, spacing=spacing, rules=MatchedLesionRules(detection_dice=0.09)).small_tp == 1
    )
    only_small = matched_lesion_scores(pred, ref, spacing=spacing, rules=MatchedLesionRules(large_volume_mm3=21.0))
    assert all(math.isnan(v) for v in only_small[:3]) and only_small[3:10] == (2, 0, 0, 0, 0, 1, 1)


def test_empty_masks_and_cases_without_a_large_lesion() -> None:
    shape = (10, 10, 10)
    empty = np.zeros(shape, bool)
    lesion = _box(shape, np.s_[2:5, 2:5, 2:5])
    speck = _box(shape, np.s_[8, 8, 8])
    # nothing at all, or only false positives, or only a small lesion: no lesion-wise score (NaN), counts kept
    for pred, ref, counts in ((empty, empty, (0, 0, 0)), (lesion, empty, (0, 0, 1)), (lesion, speck, (0, 1, 1))):
        score = matched_lesion_scores(pred, ref, spacing=(1, 1, 1))
        assert all(math.isnan(v) for v in score[:3]) and score[3:6] == counts
    # a large lesion missed by an empty prediction: Dice 0, HD95 373 mm, NSD 0
    missed = matched_lesion_scores(empty, lesion, spacing=(1, 1, 1))
    assert missed[:6] == (0.0, MISSED, 0.0, 0, 1, 0)
    # and as a LesionScore, through the rules registered under the table's name
    assert LESION_RULES["brats2025-met"] is BRATS2025_MET
    assert lesion_wise_scores(
        empty, lesion, spacing=(1, 1, 1), rules=LESION_RULES["brats2025-met"], scoring=BRATS2025
    ) == LesionScore(0.0, MISSED, 0, 1, 0, nsd=0.0, large_tp=0, large_fn=1, small_tp=0, small_fn=0)


def test_rules_are_checked() -> None:
    for bad in ({"matching_dice": 0.0}, {"large_volume_mm3": -1.0}, {"detection_dice": 1.5}):
        with pytest.raises(ValueError, match="matched lesion rules"):
            MatchedLesionRules(**bad)


def test_label_maps_score_the_2025_met_regions() -> None:
    # ET (3) a 27-voxel lesion predicted exactly; a resection cavity (4) predicted only in part
    ref = np.zeros((16, 16, 16), np.uint8)
    ref[2:5, 2:5, 2:5] = 3
    ref[9:13, 9:13, 9:13] = 4
    pred = ref.copy()
    pred[9:11, 9:13, 9:13] = 0
    scores = lesion_wise_label_maps(
        pred, ref, table=MET_2025, spacing=(1, 1, 1), rules=LESION_RULES["brats2025-met"], scoring=BRATS2025
    )
    assert list(scores) == ["WT", "TC", "ET", "RC"]
    found = LesionScore(1.0, 0.0, 1, 0, 0, nsd=1.0, large_tp=1, large_fn=0, small_tp=0, small_fn=0)
    assert scores["ET"] == scores["TC"] == scores["WT"] == found
    rc_hd95 = hd95(pred == 4, ref == 4, spacing=(1, 1, 1), scoring=BRATS2025)
    rc_nsd = nsd(pred == 4, ref == 4, spacing=(1, 1, 1), tolerance_mm=1.0, scoring=BRATS2025)
    rc = LesionScore(pytest.approx(2 * 32 / 96), pytest.approx(rc_hd95), 1, 0, 0, pytest.approx(rc_nsd), 1, 0, 0, 0)
    assert scores["RC"] == rc


def test_matched_pairs_rules_average_over_the_matched_pairs_only() -> None:
    # lesion A (27 voxels) predicted exactly, lesion B (8 voxels) missed, and a false positive: BraTS 2025 GLI's
    # means take A alone (Dice 1, HD95 0, NSD 1); MET's take A (large) and the false positive (B is small)
    shape = (16, 16, 16)
    a, b, fp = np.s_[1:4, 1:4, 1:4], np.s_[8:10, 8:10, 8:10], np.s_[13, 13, 13]
    ref, pred = _box(shape, a, b), _box(shape, a, fp)
    score = matched_lesion_scores(pred, ref, spacing=(1, 1, 1), rules=LESION_RULES["brats2025-gli"])
    assert score[:6] == (1.0, 0.0, 1.0, 1, 1, 1)
    assert LesionScore.of_matched(score, LESION_RULES["brats2025-gli"]).f1 == pytest.approx(2 / 4)
    met = matched_lesion_scores(pred, ref, spacing=(1, 1, 1), rules=BRATS2025_MET)
    assert met[:3] == (pytest.approx(1 / 2), pytest.approx(MISSED / 2), pytest.approx(1 / 2))
    # a prediction that only half covers A: its Dice is the score, however many lesions are missed
    half = _box(shape, np.s_[1:4, 1:4, 1:2])
    score = matched_lesion_scores(half, ref, spacing=(1, 1, 1), rules=BRATS2025_MATCHED_PAIRS)
    assert score.dice == pytest.approx(2 * 9 / 36) and score[3:6] == (1, 1, 0)


def test_matched_pairs_rules_without_a_matched_pair() -> None:
    # no pair: Dice 0, NSD 0 and 373 mm (the package: inf) when either mask has a lesion, NaN when neither has;
    # F1 0, or NaN without any lesion
    shape = (10, 10, 10)
    empty, here, there = np.zeros(shape, bool), _box(shape, np.s_[1:3, 1:3, 1:3]), _box(shape, np.s_[6:9, 6:9, 6:9])
    for pred, ref, counts in ((empty, here, (0, 1, 0)), (here, empty, (0, 0, 1)), (there, here, (0, 1, 1))):
        score = matched_lesion_scores(pred, ref, spacing=(1, 2, 1), rules=BRATS2025_MATCHED_PAIRS)
        assert score[:6] == (0.0, MISSED, 0.0, *counts)
        assert LesionScore.of_matched(score, BRATS2025_MATCHED_PAIRS).f1 == 0.0
    nothing = matched_lesion_scores(empty, empty, spacing=(1, 1, 1), rules=BRATS2025_MATCHED_PAIRS)
    assert all(math.isnan(v) for v in nothing[:3]) and nothing[3:6] == (0, 0, 0)
    assert math.isnan(LesionScore.of_matched(nothing, BRATS2025_MATCHED_PAIRS).f1)


def test_2025_rules_score_their_tables_regions() -> None:
    # every 2025 rule set is registered with its table; scoring a map with another table is refused
    for name, table_name in LESION_RULE_TABLES.items():
        assert isinstance(LESION_RULES[name], MatchedLesionRules)
        assert (LESION_RULES[name].scored == "large_and_false_positives") == (name == "brats2025-met")
        check_rules_table(name, get_label_table(table_name))
    with pytest.raises(MedsegInputError, match="brats2025-gli score the regions of label table brats2024-gli, not"):
        check_rules_table("brats2025-gli", get_label_table("brats2023"))
    check_rules_table("GLI", get_label_table("brats2024-ped"))  # 2023 and 2024 rules take any table
    # PED: ET (1) predicted exactly, the cyst (3) missed, oedema (4) invented; each region its own matching
    ref = np.zeros((16, 16, 16), np.uint8)
    ref[2:5, 2:5, 2:5] = 1
    ref[9:11, 9:11, 9:11] = 3
    pred = np.zeros_like(ref)
    pred[2:5, 2:5, 2:5] = 1
    pred[13:15, 2:4, 2:4] = 4
    scores = lesion_wise_label_maps(
        pred,
        ref,
        table=get_label_table("brats2024-ped"),
        spacing=(1, 1, 1),
        rules=LESION_RULES["brats2025-ped"],
        scoring=BRATS2025,
    )
    assert list(scores) == ["WT", "TC", "ET", "CC", "NETC", "ED"]
    # NSD is scored (1 for the exact pair, 0 without a pair); the detection counts by size are MET's alone
    assert scores["ET"] == LesionScore(1.0, 0.0, 1, 0, 0, nsd=1.0)
    assert scores["WT"] == LesionScore(1.0, 0.0, 1, 1, 1, nsd=1.0) and scores["TC"] == LesionScore(
        1.0, 0.0, 1, 1, 0, nsd=1.0
    )
    assert scores["CC"] == LesionScore(0.0, MISSED, 0, 1, 0, nsd=0.0)
    assert scores["ED"] == LesionScore(0.0, MISSED, 0, 0, 1, nsd=0.0)
    assert all(math.isnan(v) for v in scores["NETC"][:2]) and scores["NETC"][2:5] == (0, 0, 0)
    assert math.isnan(scores["NETC"].nsd) and scores["NETC"].large_tp is None


# --- agreement with brats-evaluation (Panoptica) ---------------------------------------------------------

SPACINGS = [(1.0, 1.0, 1.0), (0.8, 1.3, 2.7), (1.0, 1.0, 3.0), (0.5, 0.6, 1.5), (2.0, 1.0, 1.0)]
# medseg's 2025 rules -> their brats-evaluation configuration
CONFIGS = {
    "brats2025-met": "mets",
    "brats2025-gli": "gli",
    "brats2025-ped": "ped",
    "brats2025-men": "MenPre",
    "brats2025-men-rt": "MenRT",
    "brats2025-goat": "GoAT",
}
# Lesion kinds of each table, drawn as layers outermost first: (radius added in voxels, radius factor, label,
# painted over other labels); 1 NETC, 2 SNFH, 3 ET, 4 RC in the GLI and MET tables; 1 ET, 2 NETC, 3 CC, 4 ED in
# PED's. Kinds are drawn with the weights given.
Layers = tuple[tuple[float, float, int, bool], ...]
_TUMOUR: dict[str, Layers] = {
    "et": ((0, 1, 3, True),),
    "full": ((1.5, 1, 2, False), (0, 1, 3, True), (0, 0.5, 1, True)),
}
KINDS: dict[str, tuple[dict[str, Layers], list[float]]] = {
    "brats2025-met": ({**_TUMOUR, "rc": ((0, 1, 4, False),)}, [0.5, 0.35, 0.15]),
    "brats2024-gli": ({**_TUMOUR, "rc": ((0, 1, 4, False),)}, [0.4, 0.4, 0.2]),
    "brats2024-ped": (
        {
            "et": ((0, 1, 1, True),),
            "full": ((1.5, 1, 4, False), (0, 1, 1, True), (0, 0.5, 2, True)),
            "cyst": ((0, 0.8, 3, True),),
        },
        [0.3, 0.5, 0.2],
    ),
    "brats2023": (_TUMOUR, [0.5, 0.5]),
    "brats2024-men-rt": ({"gtv": ((0, 1, 1, True),)}, [1.0]),
}


def _ball(shape: tuple[int, ...], centre: np.ndarray, radii: np.ndarray) -> np.ndarray:
    idx = np.indices(shape).reshape(3, -1).T
    return (np.sum(((idx - centre) / radii) ** 2, axis=1) <= 1.0).reshape(shape)


def _draw(
    shape: tuple[int, ...], lesions: list[tuple[np.ndarray, np.ndarray, str]], kinds: dict[str, Layers]
) -> np.ndarray:
    """A label map with each lesion drawn as its kind's layers."""
    label = np.zeros(shape, np.uint8)
    for centre, radii, kind in lesions:
        for grow, factor, value, over in kinds[kind]:
            inside = _ball(shape, centre, radii * factor + grow)
            label[inside if over else inside & (label == 0)] = value
    return label


def _random_scenes(table: str, n: int, seed: int) -> list[tuple[np.ndarray, np.ndarray, tuple[float, float, float]]]:
    """Random scenes of lesions of every size round 20 mm³, some missed, some moved or resized, some split in
    two, some invented, some merged by the prediction, on anisotropic grids."""
    kinds, weights = KINDS[table]
    rng = np.random.default_rng(seed)
    scenes = []
    for i in range(n):
        shape = tuple(int(s) for s in rng.integers(18, 34, size=3))
        ref_lesions, pred_lesions = [], []
        for _ in range(int(rng.integers(0, 7))):
            centre = rng.uniform(2, np.asarray(shape) - 2)
            radii = rng.uniform(0.6, 3.5, size=3)
            kind = str(rng.choice(list(kinds), p=weights))
            ref_lesions.append((centre, radii, kind))
            fate = rng.uniform()
            if fate < 0.15:
                continue  # missed
            if fate < 0.25:  # split into two pieces
                offset = radii * rng.choice([-1, 1], size=3) * 0.8
                pred_lesions += [(centre + offset, radii / 1.6, kind), (centre - offset, radii / 1.6, kind)]
                continue
            pred_lesions.append((centre + rng.normal(0, 0.8, size=3), radii * rng.uniform(0.7, 1.4, size=3), kind))
        for _ in range(int(rng.integers(0, 3))):  # invented
            centre = rng.uniform(2, np.asarray(shape) - 2)
            pred_lesions.append((centre, rng.uniform(0.6, 2.5, size=3), str(rng.choice(list(kinds)))))
        spacing = SPACINGS[i % len(SPACINGS)]
        scenes.append((_draw(shape, pred_lesions, kinds), _draw(shape, ref_lesions, kinds), spacing))
    return scenes


def _met_scenes() -> list[tuple[np.ndarray, np.ndarray, tuple[float, float, float]]]:
    """Random MET scenes; and hand-built ones (the tests above, empty maps)."""
    scenes = _random_scenes("brats2025-met", 30, 2025)
    ref = np.zeros((14, 12, 12), np.uint8)
    ref[0:4, 0:4, 0:4] = 3
    ref[6:9, 0:3, 0:3] = 3
    pred = np.zeros_like(ref)
    pred[0:4, 0:4, 0:4] = 3
    pred[4:7, 0:3, 0:3] = 3
    pred[10, 10, 10] = 3
    scenes.append((pred, ref, (1.0, 1.0, 1.0)))
    ref = np.zeros((24, 8, 8), np.uint8)
    ref[0:10, 0, 0] = 3
    ref[0:9, 5, 5] = 3
    pred = np.zeros_like(ref)
    pred[0:10, 0, 0] = 3
    pred[8:20, 5, 5] = 3
    scenes.append((pred, ref, (1.0, 1.0, 2.0)))
    empty = np.zeros((10, 10, 10), np.uint8)
    lesion = empty.copy()
    lesion[2:5, 2:5, 2:5] = 1
    scenes += [(empty, empty, (1.0, 1.0, 1.0)), (lesion, empty, (1.0, 1.0, 1.0)), (empty, lesion, (1.0, 2.0, 1.0))]
    return scenes


def _hand_scenes(value: int, other: int | None) -> list[tuple[np.ndarray, np.ndarray, tuple[float, float, float]]]:
    """Hand-built scenes in label ``value`` (and ``other``, a label of another region, where the table has one):
    empty maps, one map empty, lesions apart, lesions touching at a corner (one 26-connected lesion) predicted
    as two pieces, two lesions competing for one prediction, one region empty in both maps."""
    shape = (14, 12, 10)
    empty = np.zeros(shape, np.uint8)
    lesion, apart = empty.copy(), empty.copy()
    lesion[2:5, 2:5, 2:5] = value
    apart[8:12, 7:10, 5:9] = value
    touching, pieces = empty.copy(), empty.copy()
    touching[1:4, 1:4, 1:4] = touching[4:7, 4:7, 4:7] = value
    pieces[1:4, 1:4, 1:4] = pieces[5:8, 5:8, 5:8] = value
    compete_ref, compete_pred = empty.copy(), empty.copy()
    compete_ref[0:4, 0:4, 0:4] = compete_ref[6:9, 0:3, 0:3] = value
    compete_pred[0:4, 0:4, 0:4] = compete_pred[4:7, 0:3, 0:3] = value
    scenes = [
        (empty, empty, (1.0, 1.0, 1.0)),
        (empty, lesion, (1.0, 2.0, 1.0)),
        (lesion, empty, (0.8, 1.3, 2.7)),
        (apart, lesion, (1.0, 1.0, 3.0)),
        (pieces, touching, (0.5, 0.6, 1.5)),
        (compete_pred, compete_ref, (1.0, 1.0, 1.0)),
    ]
    if other is not None:  # the other region: nothing in the reference, an invented lesion in the prediction
        invented = lesion.copy()
        invented[9:12, 8:11, 6:9] = other
        scenes.append((invented, lesion, (2.0, 1.0, 1.0)))
    return scenes


# each 2025 rule set's hand-built scenes: a label and one of another region (MEN-RT has one region only)
HAND_LABELS = {
    "brats2025-gli": (3, 4),
    "brats2025-ped": (1, 3),
    "brats2025-men": (3, 2),
    "brats2025-men-rt": (1, None),
    "brats2025-goat": (1, 3),
}


@pytest.fixture(scope="module")
def brats_evaluation(panoptica: Callable[..., list[dict[str, Any]]]) -> dict[str, list[tuple[Any, ...]]]:
    """Rules -> ``[(pred, ref, spacing, case)]``: every rule set's scenes scored by its ``brats-evaluation``
    configuration, all in one run of the package."""
    scenes: dict[str, list[tuple[np.ndarray, np.ndarray, tuple[float, float, float]]]] = {
        "brats2025-met": _met_scenes()
    }
    for seed, (rules, labels) in enumerate(HAND_LABELS.items()):
        scenes[rules] = _random_scenes(LESION_RULE_TABLES[rules], 10, 2026 + seed) + _hand_scenes(*labels)
    flat = [(rules, scene) for rules, found in scenes.items() for scene in found]
    cases = panoptica([(*scene, CONFIGS[rules]) for rules, scene in flat])
    assert len(cases) == len(flat)
    out: dict[str, list[tuple[Any, ...]]] = {}
    for (rules, scene), case in zip(flat, cases, strict=True):
        assert case["config"] == CONFIGS[rules]
        out.setdefault(rules, []).append((*scene, case))
    return out


def _value(row: dict[str, Any], key: str) -> float:
    return float(row[key])  # NaN and inf come as strings


def _same(ours: float, theirs: float, tolerance: float) -> bool:
    return (math.isnan(ours) and math.isnan(theirs)) or abs(ours - theirs) <= tolerance


def _regions(rules: str, case: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """The package configuration's regions (lower-case name -> labels), checked to be those of the rules' table."""
    table = get_label_table(LESION_RULE_TABLES[rules])
    regions = {name.lower(): values for name, values in table.evaluation_sets().items()}
    assert {k: tuple(v) for k, v in case["groups"].items()} == regions
    return regions


def _lesions_as_theirs(ours: MatchedLesionScore, row: dict[str, Any], theirs: list[dict], key: str, where: str) -> None:
    """Every count, and every reference lesion's volume, match, Dice, HD95 and NSD, equal the package's."""
    assert (ours.tp, ours.fp, ours.fn) == tuple(
        int(_value(row, f"all_instance_{c}_{key}")) for c in ("tp", "fp", "fn")
    ), where
    assert _same(
        LesionScore.of_matched(ours, BRATS2025_MATCHED_PAIRS).f1, _value(row, f"all_instance_f1_{key}"), 1e-12
    ), where
    # the package lists matched lesions first, as medseg
    assert len(theirs) == len(ours.lesions), where
    for lesion, other in zip(
        sorted(ours.lesions, key=lambda x: (not x.matched, x.volume_mm3, x.dice if x.matched else 0)),
        sorted(theirs, key=lambda x: (not x["is_matched"], x["volume"], x.get("sq_dsc", 0))),
        strict=True,
    ):
        assert lesion.matched == bool(other["is_matched"]), where
        assert lesion.volume_mm3 == pytest.approx(other["volume"], rel=1e-12), where
        if lesion.matched:
            assert lesion.dice == pytest.approx(other["sq_dsc"], abs=1e-6), where
            assert lesion.hd95 == pytest.approx(other["sq_hd95"], abs=1e-3), where
            assert lesion.nsd == pytest.approx(other["sq_nsd"], abs=1e-6), where


def _globals_as_theirs(
    p: np.ndarray, r: np.ndarray, spacing: tuple[float, ...], case: dict, key: str, where: str
) -> None:
    """Global Dice equal, except both empty (the package: NaN; BraTS and medseg: 1); HD95 and NSD as documented."""
    global_dice = _value(case["rows"], f"global_dsc_{key}")
    if p.any() or r.any():
        assert dice(p, r) == pytest.approx(global_dice, abs=1e-6), where
    else:
        assert math.isnan(global_dice), where
    _global_surfaces_as_documented(p, r, spacing, case["rows"], key, case["surfaces"].get(key), where)


def _global_surfaces_as_documented(
    p: np.ndarray,
    r: np.ndarray,
    spacing: tuple[float, float, float],
    row: dict[str, Any],
    key: str,
    surfaces: dict[str, float] | None,
    where: str,
) -> None:
    """The package's whole-mask HD95 and NSD differ from medseg's ``brats2025`` scoring in the ways
    docs/conventions.md states; each is checked to be that and nothing else."""
    global_hd95, global_nsd = _value(row, f"global_hd95_{key}"), _value(row, f"global_nsd_{key}")
    if not (p & r).any():
        # no overlap (one mask empty, or both far apart): the package's zero-TP rule, Dice 0, NSD 0, 373
        if p.any() or r.any():
            assert (global_hd95, global_nsd) == (MISSED, 0.0), where
        return
    # overlapping masks: HD95 in voxels (unit spacing) and NSD at half a voxel, whatever the spacing
    assert global_hd95 == pytest.approx(hd95(p, r, spacing=(1, 1, 1), scoring=BRATS2025), abs=1e-9), where
    assert global_nsd == pytest.approx(nsd(p, r, spacing=(1, 1, 1), tolerance_mm=0.5, scoring=BRATS2025), abs=1e-9)
    # measured with the spacing, Panoptica's own surface distances equal medseg's in mm
    assert surfaces is not None
    assert surfaces["hd95"] == pytest.approx(hd95(p, r, spacing=spacing, scoring=BRATS2025), abs=1e-9), where


def test_met_scores_equal_brats_evaluations(brats_evaluation: dict[str, list[tuple[Any, ...]]]) -> None:
    compared = 0
    for pred, ref, spacing, case in brats_evaluation["brats2025-met"]:
        row = case["rows"]
        for key, values in _regions("brats2025-met", case).items():
            p, r = np.isin(pred, values), np.isin(ref, values)
            ours = matched_lesion_scores(p, r, spacing=spacing)
            where = f"{key} of a {pred.shape} scene at {spacing} mm"
            # per case: lesion-wise Dice, HD95, NSD; every count
            assert _same(ours.dice, _value(row, f"lesionwise_dsc_mean_{key}"), 1e-6), where
            assert _same(ours.hd95, _value(row, f"lesionwise_hd95_mean_{key}"), 1e-3), where
            assert _same(ours.nsd, _value(row, f"lesionwise_nsd_mean_{key}"), 1e-6), where
            large = [_value(row, f"large_instance_{c}_{key}") for c in ("tp", "fn")]
            if any(lesion.volume_mm3 >= 20.0 for lesion in ours.lesions):
                assert [ours.large_tp, ours.large_fn] == large, where
            else:
                assert all(math.isnan(v) for v in large), where
            small = [_value(row, f"small_instance_{c}_{key}") for c in ("tp", "fn")]
            if any(lesion.volume_mm3 < 20.0 for lesion in ours.lesions):
                assert [ours.small_tp, ours.small_fn] == small, where
            else:
                assert all(math.isnan(v) for v in small), where
            _lesions_as_theirs(ours, row, case["regions"][key].get("reference_instances", []), key, where)
            _globals_as_theirs(p, r, spacing, case, key, where)
            compared += 1
    assert compared == 4 * 35


@pytest.mark.parametrize("rules", list(HAND_LABELS))
def test_matched_pairs_scores_equal_brats_evaluations(
    rules: str, brats_evaluation: dict[str, list[tuple[Any, ...]]]
) -> None:
    compared = no_pair = 0
    for pred, ref, spacing, case in brats_evaluation[rules]:
        row = case["rows"]
        for key, values in _regions(rules, case).items():
            p, r = np.isin(pred, values), np.isin(ref, values)
            ours = matched_lesion_scores(p, r, spacing=spacing, rules=LESION_RULES[rules])
            where = f"{rules} {key} of a {pred.shape} scene at {spacing} mm"
            # per case: lesion-wise Dice and NSD (parse_seg_results: Panoptica's sq_dsc, sq_nsd), HD95 (sq_hd95)
            assert _same(ours.dice, _value(row, f"lesionwise_dsc_mean_{key}"), 1e-6), where
            assert _same(ours.nsd, _value(row, f"lesionwise_nsd_mean_{key}"), 1e-6), where
            theirs_hd95 = _value(row, f"lesionwise_hd95_mean_{key}")
            if ours.tp == 0 and (ours.lesions or ours.fp):
                # no pair: the package writes the zero-TP rule's inf; medseg the 373 mm it writes everywhere else
                assert (ours.hd95, theirs_hd95) == (MISSED, math.inf), where
                no_pair += 1
            else:
                assert _same(ours.hd95, theirs_hd95, 1e-3), where
            _lesions_as_theirs(ours, row, case["regions"][key].get("reference_instances", []), key, where)
            _globals_as_theirs(p, r, spacing, case, key, where)
            compared += 1
    assert compared == len(brats_evaluation[rules]) * len(_regions(rules, case))
    assert no_pair > 0  # the zero-TP cases were exercised


def test_cli_evaluate_scores_brats2025_met_lesion_wise(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    # two MET cases at 1 x 1 x 2 mm: one with a large ET lesion predicted in part and a false positive; one
    # whose only ET lesion is small (2 voxels, 4 mm³), which has no lesion-wise ET score and is left out
    spacing = (1.0, 1.0, 2.0)
    geometry = Geometry((16, 16, 8), np.diag([*spacing, 1.0]))
    big, small = np.zeros((16, 16, 8), np.uint8), np.zeros((16, 16, 8), np.uint8)
    big[2:6, 2:6, 2:5] = 3
    small[10:12, 10, 4] = 3
    pred_big = big.copy()
    pred_big[2:4, 2:6, 2:5] = 0
    pred_big[12, 12, 6] = 3
    cases = {"BraTS-MET-00001-000": (pred_big, big), "BraTS-MET-00002-000": (small, small)}
    for case, (pred, ref) in cases.items():
        write_nifti(ref, geometry, tmp_path / "ref" / case / f"{case}-seg.nii.gz")
        write_nifti(pred, geometry, tmp_path / "pred" / f"{case}.nii.gz")
    out = tmp_path / "out"
    argv = ["evaluate", "--pred", str(tmp_path / "pred"), "--ref", str(tmp_path / "ref"), "--out", str(out)]
    assert main([*argv, "--labels", "brats2025-met", "--lesion-wise", "brats2025-met"]) == 0
    printed = capsys.readouterr().out
    with (out / "lesion_metrics.csv").open(newline="") as f:
        rows = {(r["case"], r["region"]): r for r in csv.DictReader(f)}
    for (case, region), row in rows.items():
        pred, ref = cases[case]
        values = MET_2025.evaluation_sets()[region]
        expected = matched_lesion_scores(np.isin(pred, values), np.isin(ref, values), spacing=spacing)
        assert _same(float(row["dice"]), expected.dice, 1e-6) and _same(float(row["hd95"]), expected.hd95, 1e-5)
        assert (int(row["tp"]), int(row["fn"]), int(row["fp"])) == expected[3:6]
        assert _same(float(row["nsd"]), expected.nsd, 1e-6)
        by_size = (expected.large_tp, expected.large_fn, expected.small_tp, expected.small_fn)
        assert tuple(int(row[c]) for c in ("large_tp", "large_fn", "small_tp", "small_fn")) == by_size
        assert row["rules"] == "brats2025-met"
    first = rows[("BraTS-MET-00001-000", "ET")]
    assert float(first["dice"]) == pytest.approx(2 * 24 / 72 / 2, abs=1e-6)  # (Dice 48/72 + FP 0) / 2
    assert float(first["hd95"]) > 373.0 / 2 and first["fp"] == "1"
    assert rows[("BraTS-MET-00002-000", "ET")]["dice"] == "nan"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["scoring"] == "brats2025"  # the table's scoring: Panoptica's surfaces, 373 mm
    lesion_wise = summary["lesion_wise"]
    assert (lesion_wise["large_volume_mm3"], lesion_wise["detection_dice"]) == (20.0, 0.1)
    et = lesion_wise["regions"]["ET"]
    assert et["n"] == 2 and et["dice"]["mean"] == pytest.approx(float(first["dice"]), abs=1e-6)
    assert (et["tp"], et["fn"], et["fp"]) == (2, 0, 1)
    # the large lesion detected (Dice 2/3 >= 0.1) in the first case, the small one in the second
    assert (et["large_tp"], et["large_fn"], et["small_tp"], et["small_fn"]) == (1, 0, 1, 0)
    assert et["nsd"]["mean"] == pytest.approx(float(first["nsd"]), abs=1e-6)
    assert f"lesion-wise, BraTS brats2025-met rules ({BRATS2025_MET.describe()})" in printed
    heading = next(line for line in printed.splitlines() if "F1 mean" in line)
    assert "NSD mean ± sd" in heading and heading.split()[-4:] == ["small", "TP", "small", "FN"]
    report = write_report(out_dir=out, summary=summary).read_text(encoding="utf-8")
    assert "brats2025-met rules: each reference lesion matched with at most one predicted lesion" in report
    assert "those under 20 mm³ counted but not scored" in report and "HD95 373 mm" in report


def test_cli_evaluate_scores_brats2025_gli_lesion_wise(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    # one GLI case at 1 x 1 x 2 mm on the 2024 table: an ET lesion predicted in part and one missed, a resection
    # cavity invented. The 2025 rules take the matched pair alone; the 2024 table's scoring would be 2023's
    spacing = (1.0, 1.0, 2.0)
    geometry = Geometry((16, 16, 8), np.diag([*spacing, 1.0]))
    ref = np.zeros((16, 16, 8), np.uint8)
    ref[2:6, 2:6, 2:5] = 3
    ref[10:12, 10:12, 5:7] = 3
    pred = np.zeros_like(ref)
    pred[4:6, 2:6, 2:5] = 3
    pred[12:15, 2:4, 5:7] = 4
    case = "BraTS-GLI-00001-000"
    write_nifti(ref, geometry, tmp_path / "ref" / case / f"{case}-seg.nii.gz")
    write_nifti(pred, geometry, tmp_path / "pred" / f"{case}.nii.gz")
    out = tmp_path / "out"
    argv = ["evaluate", "--pred", str(tmp_path / "pred"), "--ref", str(tmp_path / "ref"), "--out", str(out)]
    # the 2023 table (which auto would choose: label 4 is only predicted) lacks GLI's regions: refused
    assert main([*argv, "--labels", "brats2023", "--lesion-wise", "brats2025-gli"]) == 2
    assert "lesion rules brats2025-gli score the regions of label table brats2024-gli, not brats2023" in (
        capsys.readouterr().err
    )
    assert main([*argv, "--labels", "brats2024-gli", "--lesion-wise", "brats2025-gli"]) == 0
    printed = capsys.readouterr().out
    with (out / "lesion_metrics.csv").open(newline="") as f:
        rows = {r["region"]: r for r in csv.DictReader(f)}
    assert list(rows) == ["WT", "TC", "ET", "RC", "NETC", "SNFH"]
    et = rows["ET"]
    assert float(et["dice"]) == pytest.approx(2 * 24 / 72, abs=1e-6)  # the matched pair alone
    assert (et["tp"], et["fn"], et["fp"], float(et["f1"])) == ("1", "1", "0", pytest.approx(2 / 3, abs=1e-6))
    lesion = _box(ref.shape, np.s_[2:6, 2:6, 2:5])
    assert float(et["hd95"]) == pytest.approx(hd95(pred == 3, lesion, spacing=spacing, scoring=BRATS2025), abs=1e-5)
    assert (float(rows["RC"]["dice"]), float(rows["RC"]["hd95"]), rows["RC"]["fp"]) == (0.0, MISSED, "1")
    assert rows["NETC"]["dice"] == "nan" and rows["NETC"]["f1"] == "nan"  # no lesion in either map
    assert rows["ET"]["large_tp"] == "" and float(rows["RC"]["nsd"]) == 0.0  # no counts by size outside MET
    summary = json.loads((out / "summary.json").read_text())
    assert summary["scoring"] == "brats2025"  # the 2025 rules' scoring, on the 2024 table
    lesion_wise = summary["lesion_wise"]
    assert (lesion_wise["scored"], "large_volume_mm3" in lesion_wise) == ("matched_pairs", False)
    assert lesion_wise["regions"]["ET"]["f1"]["mean"] == pytest.approx(2 / 3)
    assert "lesion-wise, BraTS brats2025-gli rules (one-to-one Dice matching, means over the matched pairs)" in printed
    report = write_report(out_dir=out, summary=summary).read_text(encoding="utf-8")
    assert "brats2025-gli rules: each reference lesion matched with at most one predicted lesion" in report
    assert "Dice and HD95 are means over the matched pairs" in report and "HD95 373 mm" in report
