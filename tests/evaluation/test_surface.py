"""Surface elements weighted by area: element areas worked out by hand, and HD95/NSD against DeepMind's
``surface-distance`` package (the library the BraTS 2023 and 2024 scripts score with) on random and hand-built
anisotropic scenes."""

from __future__ import annotations

import math
from collections.abc import Callable
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from scipy import ndimage

from medseg.evaluation.metrics import SCORINGS, hd95, nsd, score_masks
from medseg.evaluation.surface import cube_polygons, element_areas, surface_distances

ELEMENTS = SCORINGS["elements"]
SPACING = (2.0, 3.0, 5.0)


def _code(*corners: tuple[int, int, int]) -> int:
    return sum(1 << (4 * c0 + 2 * c1 + c2) for c0, c1, c2 in corners)


def test_element_areas_worked_by_hand() -> None:
    areas = element_areas(SPACING)
    # one corner inside: the triangle through the three half-edges, intercepts 1, 1.5 and 2.5 mm:
    # area = sqrt(a²b² + b²c² + c²a²) / 2
    corner = _code((0, 0, 0))
    assert cube_polygons(corner) == (((0.0, 0.0, 0.5), (0.0, 0.5, 0.0), (0.5, 0.0, 0.0)),)
    assert areas[corner] == pytest.approx(math.sqrt(1.5**2 + (1.5 * 2.5) ** 2 + 2.5**2) / 2)
    # the four corners with c0 = 0: the square x = 1/2, 3 mm x 5 mm
    assert areas[_code((0, 0, 0), (0, 0, 1), (0, 1, 0), (0, 1, 1))] == pytest.approx(15.0)
    # an edge along Z: the rectangle cutting it off, 5 mm long and sqrt(1² + 1.5²) mm wide
    assert areas[_code((0, 0, 0), (0, 0, 1))] == pytest.approx(5.0 * math.sqrt(1.0 + 1.5**2))
    # two diagonal corners of a face are cut off one by one: two triangles
    diagonal = _code((0, 0, 0), (0, 1, 1))
    assert len(cube_polygons(diagonal)) == 2
    assert areas[diagonal] == pytest.approx(2 * areas[corner])
    # a mask and its complement share their surface; empty and full cubes hold none
    assert np.allclose(areas, areas[::-1])
    assert areas[0] == areas[255] == 0.0
    assert (areas[1:255] > 0).all()


def test_identical_and_shifted_boxes() -> None:
    ref = np.zeros((20, 16, 10), bool)
    ref[4:12, 3:11, 2:7] = True
    assert score_masks(ref, ref, spacing=SPACING, scoring=ELEMENTS) == (1.0, 0.0, 1.0)
    # one slice up: the top face of the shifted box lies 5 mm above the reference's, more than 5 % of the
    # surface's area, and nothing lies farther
    shifted = np.roll(ref, 1, axis=2)
    d = surface_distances(shifted, ref, spacing=SPACING)
    assert d.pred_to_ref.max() == pytest.approx(5.0) and d.ref_to_pred.max() == pytest.approx(5.0)
    assert hd95(shifted, ref, spacing=SPACING, scoring=ELEMENTS) == pytest.approx(5.0)
    assert 0.0 < nsd(shifted, ref, spacing=SPACING, tolerance_mm=4.9, scoring=ELEMENTS) < 1.0
    assert nsd(shifted, ref, spacing=SPACING, tolerance_mm=5.0, scoring=ELEMENTS) == pytest.approx(1.0)


def test_area_not_count_decides_the_percentile() -> None:
    # a wide slab two 5 mm slices thick, and a prediction that adds a thin column along Z beside it: the
    # column holds few surface elements and voxels, but its side elements are 5 mm tall, so much area
    ref = np.zeros((50, 42, 10), bool)
    ref[2:40, 2:40, 4:6] = True
    pred = ref.copy()
    pred[44:46, 20:22, 1:9] = True
    spacing = (1.0, 1.0, 5.0)
    d = surface_distances(pred, ref, spacing=spacing)
    far = d.pred_to_ref > 3.0
    assert far.mean() < 0.05 < d.pred_areas[far].sum() / d.pred_areas.sum()
    assert hd95(pred, ref, spacing=spacing, scoring=ELEMENTS) >= 4.0  # at least the 4 mm gap
    assert hd95(pred, ref, spacing=spacing, scoring=SCORINGS["voxels"]) == 0.0  # under 5 % of surface voxels


# --- DeepMind's surface-distance package ------------------------------------------------------------


def _blob(shape: tuple[int, int, int], rng: np.random.Generator, fill: float) -> np.ndarray:
    noise = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=1.5)
    return noise > np.quantile(noise, 1.0 - fill)


def _scenes() -> list[tuple[np.ndarray, np.ndarray, tuple[float, float, float]]]:
    """Random lumpy masks (some touching the grid's border, some with holes and satellites) and
    hand-built ones: a box and its shift, a ball and a cube, single voxels, a thin plate."""
    rng = np.random.default_rng(7)
    spacings = [(1.0, 1.0, 1.0), (0.8, 1.3, 2.7), (0.5, 0.5, 3.0), (2.0, 1.0, 0.7)]
    scenes = []
    for i in range(16):
        shape = tuple(int(s) for s in rng.integers(8, 22, size=3))
        fill = float(rng.uniform(0.05, 0.4))
        scenes.append((_blob(shape, rng, fill), _blob(shape, rng, fill), spacings[i % len(spacings)]))
    box = np.zeros((16, 14, 10), bool)
    box[3:10, 4:11, 2:7] = True
    scenes.append((np.roll(box, 2, axis=0), box, (0.9, 1.1, 2.5)))
    idx = np.indices((18, 18, 12))
    ball = ((idx[0] - 8.5) ** 2 + (idx[1] - 9) ** 2 + ((idx[2] - 6) * 2.5) ** 2) <= 30
    cube = np.zeros((18, 18, 12), bool)
    cube[4:13, 4:13, 3:9] = True
    scenes.append((ball, cube, (1.0, 1.0, 2.5)))
    one, other = np.zeros((9, 9, 9), bool), np.zeros((9, 9, 9), bool)
    one[2, 2, 2], other[6, 5, 2] = True, True
    scenes.append((one, other, (0.7, 1.9, 3.1)))
    plate = np.zeros((30, 30, 12), bool)
    plate[2:14, 2:14, 2:10] = True
    with_plate = plate.copy()
    with_plate[20:28, 20:28, 5] = True
    scenes.append((with_plate, plate, (1.0, 1.0, 5.0)))
    return scenes


@pytest.fixture(scope="module")
def surface_distance() -> ModuleType:
    return pytest.importorskip("surface_distance", reason="DeepMind's surface-distance (dev extra) is not installed")


def test_hd95_and_nsd_equal_deepminds_surface_distance(surface_distance: ModuleType) -> None:
    for pred, ref, spacing in _scenes():
        if not pred.any() or not ref.any():
            continue
        theirs = surface_distance.compute_surface_distances(ref, pred, spacing)
        ours = score_masks(pred, ref, spacing=spacing, nsd_tolerance_mm=2.0, scoring=ELEMENTS)
        assert ours.hd95 == pytest.approx(surface_distance.compute_robust_hausdorff(theirs, 95), abs=1e-3)
        assert ours.nsd == pytest.approx(surface_distance.compute_surface_dice_at_tolerance(theirs, 2.0), abs=1e-6)
        ours_d = surface_distances(pred, ref, spacing=spacing)
        assert np.sort(ours_d.ref_to_pred) == pytest.approx(theirs["distances_gt_to_pred"], abs=1e-9)
        assert np.sort(ours_d.pred_to_ref) == pytest.approx(theirs["distances_pred_to_gt"], abs=1e-9)
        assert ours_d.ref_areas.sum() == pytest.approx(theirs["surfel_areas_gt"].sum(), rel=1e-9)
        assert ours_d.pred_areas.sum() == pytest.approx(theirs["surfel_areas_pred"].sum(), rel=1e-9)


def test_element_areas_equal_deepminds_table(surface_distance: ModuleType) -> None:
    lookup = getattr(surface_distance, "lookup_tables", None)
    if lookup is None or not hasattr(lookup, "create_table_neighbour_code_to_surface_area"):
        pytest.skip("this surface-distance release does not expose its area table")
    # its code gives corner (c0, c1, c2) the bit 7 - (4 c0 + 2 c1 + c2): ours with the bits reversed
    reverse = [int(f"{code:08b}"[::-1], 2) for code in range(256)]
    for spacing in ((1.0, 1.0, 1.0), (0.8, 1.3, 2.7), (3.0, 0.5, 1.0)):
        theirs = np.asarray(lookup.create_table_neighbour_code_to_surface_area(spacing))
        ours = element_areas(spacing)
        assert ours[reverse] == pytest.approx(theirs, abs=1e-12)


def test_brats2025_scoring_equals_panopticas_surface_metrics(panoptica: Callable[..., list[dict[str, Any]]]) -> None:
    # Panoptica 2.1.7 (brats-evaluation 0.0.10) pins numpy < 2.3, so it runs in an environment of its own
    # (conftest.py). Its surface distances are called as brats-evaluation means to: spacing in mm along the
    # array's axes (0.0.10 reads NIfTI spacing on the wrong axes and gives global HD95 in voxels)
    brats2025 = SCORINGS["brats2025"]
    scenes = [(pred, ref, spacing) for pred, ref, spacing in _scenes() if pred.any() and ref.any()]
    cases = panoptica([(p.astype(np.uint8), r.astype(np.uint8), s) for p, r, s in scenes], tolerance_mm=1.5)
    for (pred, ref, spacing), case in zip(scenes, cases, strict=True):
        theirs = case["surfaces"]["wt"]  # label 1 is in WT
        ours = score_masks(pred, ref, spacing=spacing, nsd_tolerance_mm=1.5, scoring=brats2025)
        assert ours.hd95 == pytest.approx(theirs["hd95"], abs=1e-9)
        assert ours.nsd == pytest.approx(theirs["nsd"], abs=1e-12)
