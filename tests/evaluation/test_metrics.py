from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from medseg.errors import MedsegInputError
from medseg.evaluation.metrics import (
    SCORINGS,
    RegionScore,
    default_scoring,
    dice,
    get_scoring,
    hd95,
    image_diagonal_mm,
    nsd,
    score_label_maps,
    score_masks,
)
from medseg.labels import BRATS2021, BRATS2023, LabelTable

if TYPE_CHECKING:
    from conftest import ReferenceMetrics

SPACING = (0.8, 1.3, 2.7)


def _blob(shape: tuple[int, int, int], rng: np.random.Generator, fill: float = 0.45) -> np.ndarray:
    """A random lumpy mask (smoothed noise, thresholded); it may touch the image border."""
    noise = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=2.0)
    return noise > np.quantile(noise, 1.0 - fill * 0.3)


def _sitk_dice(a: np.ndarray, b: np.ndarray) -> float:
    f = sitk.LabelOverlapMeasuresImageFilter()
    f.Execute(sitk.GetImageFromArray(a.astype(np.uint8)), sitk.GetImageFromArray(b.astype(np.uint8)))
    return f.GetDiceCoefficient()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dice_hd95_nsd_match_independent_implementations(seed: int, reference_metrics: type[ReferenceMetrics]) -> None:
    rng = np.random.default_rng(seed)
    shape = (33, 28, 19)
    pred, ref = _blob(shape, rng), _blob(shape, rng)
    score = score_masks(pred, ref, spacing=SPACING, nsd_tolerance_mm=2.0)
    assert isinstance(score, RegionScore)
    assert score.dice == pytest.approx(_sitk_dice(pred, ref), abs=1e-6)
    assert score.hd95 == pytest.approx(reference_metrics.hd95(pred, ref, SPACING), rel=1e-5, abs=1e-4)
    assert score.nsd == pytest.approx(reference_metrics.nsd(pred, ref, SPACING, 2.0), abs=1e-6)
    by_tolerance = {t: nsd(pred, ref, spacing=SPACING, tolerance_mm=t) for t in (0.0, 1.0, 2.7, 6.0)}
    for tolerance, value in by_tolerance.items():
        assert value == pytest.approx(reference_metrics.nsd(pred, ref, SPACING, tolerance), abs=1e-6)
    assert list(by_tolerance.values()) == sorted(by_tolerance.values())  # a wider tolerance admits more
    assert len(set(by_tolerance.values())) == len(by_tolerance)
    # spacing is applied per axis: permuting it changes the result on anisotropic masks
    assert hd95(pred, ref, spacing=SPACING) != pytest.approx(hd95(pred, ref, spacing=SPACING[::-1]), abs=1e-3)


def test_hd95_is_max_of_directed_percentiles_not_pooled_percentile(reference_metrics: type[ReferenceMetrics]) -> None:
    # the prediction is the reference cube plus a distant blob holding ~7% of its surface voxels:
    # p95 of d(pred -> ref) lands on the blob, but the pooled set has only ~4% of blob distances
    ref = np.zeros((60, 60, 60), bool)
    ref[5:35, 5:35, 5:35] = True
    pred = ref.copy()
    pred[45:54, 45:54, 45:54] = True
    spacing = (1.0, 1.0, 1.0)
    d_pr, d_rp = reference_metrics.directed(pred, ref, spacing), reference_metrics.directed(ref, pred, spacing)
    max_of_directed = max(np.percentile(d_pr, 95), np.percentile(d_rp, 95))
    pooled = np.percentile(np.concatenate([d_pr, d_rp]), 95)
    assert max_of_directed - pooled > 10.0  # the two conventions really differ here
    assert hd95(pred, ref, spacing=spacing) == pytest.approx(max_of_directed, rel=1e-5)


def test_brats2025_pools_the_percentile_and_averages_the_directions(reference_metrics: type[ReferenceMetrics]) -> None:
    # as Panoptica (BraTS 2025's brats-evaluation) measures: surface voxels, the 95th percentile of both
    # directions' distances pooled, NSD the mean of the two directions' shares
    ref = np.zeros((60, 60, 60), bool)
    ref[5:35, 5:35, 5:35] = True
    pred = ref.copy()
    pred[45:54, 45:54, 45:54] = True
    spacing = (1.0, 1.2, 0.9)
    d_pr, d_rp = reference_metrics.directed(pred, ref, spacing), reference_metrics.directed(ref, pred, spacing)
    brats2025 = SCORINGS["brats2025"]
    score = score_masks(pred, ref, spacing=spacing, nsd_tolerance_mm=1.0, scoring=brats2025)
    assert score.hd95 == pytest.approx(np.percentile(np.concatenate([d_pr, d_rp]), 95), rel=1e-9)
    assert score.hd95 < hd95(pred, ref, spacing=spacing) - 10.0  # MONAI's: the larger directed percentile
    assert score.nsd == pytest.approx((np.mean(d_pr <= 1.0) + np.mean(d_rp <= 1.0)) / 2, abs=1e-12)
    assert score.nsd != pytest.approx(reference_metrics.nsd(pred, ref, spacing, 1.0), abs=1e-3)  # pooled share


def test_identical_masks_and_shift() -> None:
    ref = np.zeros((30, 30, 30), bool)
    ref[5:20, 5:20, 5:20] = True
    assert score_masks(ref, ref, spacing=SPACING) == (pytest.approx(1.0), pytest.approx(0.0), pytest.approx(1.0))
    shifted = np.roll(ref, 2, axis=2)  # two voxels along Z at 2.7 mm
    assert hd95(shifted, ref, spacing=SPACING) == pytest.approx(5.4, rel=1e-5)
    # every surface voxel lies within 5.4 mm of the other surface (the tolerance is inclusive), and
    # the top and bottom faces lie farther than 5.3 mm
    assert nsd(shifted, ref, spacing=SPACING, tolerance_mm=5.4) == pytest.approx(1.0)
    assert nsd(shifted, ref, spacing=SPACING, tolerance_mm=5.3) < 0.9


def test_empty_mask_rules() -> None:
    empty = np.zeros((240, 240, 155), bool)
    some = empty.copy()
    some[100:110, 100:110, 70:80] = True
    assert image_diagonal_mm((240, 240, 155), (1, 1, 1)) == pytest.approx(373.13, abs=5e-3)
    assert score_masks(empty, empty, spacing=(1, 1, 1)) == (1.0, 0.0, 1.0)
    for pred, ref in ((empty, some), (some, empty)):
        score = score_masks(pred, ref, spacing=(1, 1, 1))
        assert score.dice == 0.0
        assert score.hd95 == pytest.approx(373.13, abs=5e-3)
        assert score.nsd == 0.0
    # the diagonal uses the spacing
    small = np.zeros((10, 20, 5), bool)
    small_some = small.copy()
    small_some[0, 0, 0] = True
    assert hd95(small, small_some, spacing=SPACING) == pytest.approx(np.sqrt(8.0**2 + 26.0**2 + 13.5**2))


@pytest.mark.parametrize(
    ("scoring", "one_empty"),
    [("voxels", 373.13), ("elements", 373.13), ("brats2023", 374.0), ("brats2025", 373.0)],
)
def test_each_scorings_empty_mask_constant(scoring: str, one_empty: float) -> None:
    empty = np.zeros((240, 240, 155), bool)
    some = empty.copy()
    some[100:110, 100:110, 70:80] = True
    chosen = get_scoring(scoring)
    assert score_masks(empty, empty, spacing=(1, 1, 1), scoring=chosen) == (1.0, 0.0, 1.0)
    for pred, ref in ((empty, some), (some, empty)):
        assert score_masks(pred, ref, spacing=(1, 1, 1), scoring=chosen) == (
            0.0,
            pytest.approx(one_empty, abs=5e-3),
            0.0,
        )
    # a constant does not scale with the grid; the diagonal does
    small, small_some = np.zeros((10, 20, 5), bool), np.zeros((10, 20, 5), bool)
    small_some[0, 0, 0] = True
    expected = one_empty if scoring.startswith("brats") else image_diagonal_mm((10, 20, 5), SPACING)
    assert hd95(small, small_some, spacing=SPACING, scoring=chosen) == pytest.approx(expected)


def test_default_scoring_per_table() -> None:
    assert default_scoring("brats2021") is SCORINGS["elements"]
    for name in ("brats2023", "brats2024-gli", "brats2024-ped", "brats2024-met", "brats2024-men-rt"):
        assert default_scoring(name) is SCORINGS["brats2023"]
    assert default_scoring("brats2025-met") is SCORINGS["brats2025"]
    for name in ("btcv", "msd_spleen", "organs"):
        assert default_scoring(name) is SCORINGS["voxels"]
    with pytest.raises(MedsegInputError, match="unknown scoring 'mesh'; choose one of voxels, elements, brats2023"):
        get_scoring("mesh")


def test_dice_accepts_any_dtype_and_rejects_mismatched_shapes() -> None:
    a = np.zeros((8, 8, 8), np.uint8)
    a[2:6, 2:6, 2:6] = 3
    assert dice(a, a > 0) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="shape"):
        score_masks(a, a[:-1], spacing=(1, 1, 1))
    with pytest.raises(ValueError, match="spacing"):
        score_masks(a, a, spacing=(1, 1))
    for tolerance in (-0.5, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="NSD tolerance must be a finite number of mm >= 0"):
            score_masks(a, a, spacing=(1, 1, 1), nsd_tolerance_mm=tolerance)


@pytest.mark.parametrize("table", [BRATS2021, BRATS2023], ids=lambda t: t.name)
def test_score_label_maps_brats_regions(table: LabelTable, reference_metrics: type[ReferenceMetrics]) -> None:
    et = table.foreground_labels[-1]
    rng = np.random.default_rng(5)
    values = np.array([0, 1, 2, et])
    ref = values[rng.integers(0, 4, size=(20, 18, 12))]
    pred = ref.copy()
    pred[rng.random(pred.shape) < 0.2] = 2  # some voxels turn oedema
    scores = score_label_maps(pred, ref, table=table, spacing=SPACING)
    assert list(scores) == ["WT", "TC", "ET"]
    for name, labels in (("WT", (1, 2, et)), ("TC", (1, et)), ("ET", (et,))):
        p, r = np.isin(pred, labels), np.isin(ref, labels)
        assert scores[name].dice == pytest.approx(_sitk_dice(p, r), abs=1e-6)
        assert scores[name].hd95 == pytest.approx(reference_metrics.hd95(p, r, SPACING), rel=1e-5, abs=1e-4)
        assert scores[name].nsd == pytest.approx(reference_metrics.nsd(p, r, SPACING, 1.0), abs=1e-6)


def test_score_label_maps_classes_and_empty_organ() -> None:
    table = LabelTable(name="organs", labels={0: "background", 1: "liver", 2: "spleen", 3: "kidney"}, kind="classes")
    ref = np.zeros((30, 30, 20), np.uint8)
    ref[2:12, 2:12, 2:10] = 1
    ref[15:25, 15:25, 5:15] = 2
    pred = ref.copy()
    pred[15:25, 15:25, 5:15] = 0  # spleen missed
    pred[20:28, 2:8, 2:6] = 3  # kidney hallucinated where the reference has none
    scores = score_label_maps(pred, ref, table=table, spacing=(1.5, 1.5, 3.0))
    assert list(scores) == ["liver", "spleen", "kidney"]
    assert scores["liver"] == (pytest.approx(1.0), pytest.approx(0.0), pytest.approx(1.0))
    diagonal = image_diagonal_mm(ref.shape, (1.5, 1.5, 3.0))
    assert scores["spleen"] == (0.0, pytest.approx(diagonal), 0.0)
    assert scores["kidney"] == (0.0, pytest.approx(diagonal), 0.0)


def test_score_label_maps_rejects_unknown_values() -> None:
    ref = np.zeros((5, 5, 5), np.uint8)
    pred = ref.copy()
    pred[0, 0, 0] = 3
    with pytest.raises(MedsegInputError, match=r"prediction label values \[3\] are not in label table brats2021"):
        score_label_maps(pred, ref, table=BRATS2021, spacing=(1, 1, 1))
