"""Tight tiling: coverage, positive weights, exact identity, fewer windows than MONAI."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from monai.inferers import SlidingWindowInferer

from medseg.inference.tiling import TilePlan, plan_axis, tiled_inference


def monai_windows(shape: tuple[int, ...], roi: int, overlap: float) -> int:
    """How many windows MONAI's sliding window puts on ``shape`` (counted by running it)."""
    calls = []

    def net(x: torch.Tensor) -> torch.Tensor:
        calls.append(x.shape[0])
        return x

    SlidingWindowInferer((roi,) * 3, sw_batch_size=1, overlap=overlap)(torch.zeros(1, 1, *shape), net)
    return sum(calls)


@pytest.mark.parametrize("length", [1, 7, 31, 32, 33, 96, 97, 140, 170, 240, 1000])
@pytest.mark.parametrize(
    ("roi", "overlap", "multiple", "largest"),
    [
        (96, 16, 1, None),
        (128, 16, 32, None),
        (64, 0, 16, None),
        (96, 48, 32, None),
        (128, 16, 32, 160),
        (96, 16, 16, 112),
    ],
)
def test_axis_plan_covers_with_min_overlap(
    length: int, roi: int, overlap: int, multiple: int, largest: int | None
) -> None:
    window, starts = plan_axis(length, roi, min_overlap=overlap, multiple=multiple, max_window=largest)
    largest = largest or roi
    assert window <= largest and window % multiple == 0
    assert starts[0] == 0 and starts[-1] + window == max(length, window)
    assert starts == sorted(starts)
    for a, b in itertools.pairwise(starts):
        assert a + window - b >= overlap  # neighbours overlap by at least min_overlap
    if length <= largest:  # one window spanning the axis
        assert starts == [0] and window < length + multiple
    else:  # the fewest windows of at most max_window that keep the overlap, none smaller than roi
        assert len(starts) == math.ceil((length - overlap) / (largest - overlap))
        assert window >= roi


def test_plan_covers_every_voxel_with_positive_weight() -> None:
    plan = TilePlan.tight((140, 171, 37), (96, 96, 96), min_overlap=16, multiple=16)
    counts = torch.zeros(plan.padded_shape)
    for sl in plan.slices():
        counts[sl] += 1
    assert counts.min() >= 1
    assert len(plan) == len(plan.slices())
    weights = tiled_inference(torch.ones(1, 1, 140, 171, 37), lambda x: x, plan)
    assert torch.all(weights > 0)


@pytest.mark.parametrize("mode", ["gaussian", "constant"])
def test_identity_network_returns_input(mode: str) -> None:
    torch.manual_seed(0)
    image = torch.randn(2, 3, 75, 50, 130)
    plan = TilePlan.tight(image.shape[2:], (32, 32, 64), min_overlap=8, multiple=8)
    out = tiled_inference(image, lambda x: x, plan, batch_size=3, mode=mode)
    assert out.shape == image.shape
    torch.testing.assert_close(out, image, atol=1e-5, rtol=1e-5)


def test_output_channels_follow_the_network() -> None:
    plan = TilePlan.tight((40, 40, 40), (32, 32, 32), min_overlap=8)
    out = tiled_inference(torch.ones(1, 2, 40, 40, 40), lambda x: x.sum(1, keepdim=True).repeat(1, 3, 1, 1, 1), plan)
    assert out.shape == (1, 3, 40, 40, 40)
    torch.testing.assert_close(out, torch.full_like(out, 2.0))


@pytest.mark.parametrize("shape", [(240, 240, 155), (200, 200, 200), (300, 150, 140)])
def test_fewer_windows_than_monai_at_half_overlap(shape: tuple[int, int, int]) -> None:
    plan = TilePlan.tight(shape, (128, 128, 128), min_overlap=16, multiple=32)
    assert len(plan) < monai_windows(shape, 128, 0.5)


@pytest.mark.parametrize("shape", [(140, 170, 140), (100, 100, 100), (129, 129, 129)])
def test_never_more_computed_voxels_than_monai(shape: tuple[int, int, int]) -> None:
    plan = TilePlan.tight(shape, (128, 128, 128), min_overlap=16, multiple=32)
    assert len(plan) <= monai_windows(shape, 128, 0.5)
    assert len(plan) * math.prod(plan.window) <= monai_windows(shape, 128, 0.5) * 128**3


def test_brain_crop_plan() -> None:
    """The benchmark's brain box (145x157x152 voxels) at roi 128: one 160³ window with max_window 160,
    a quarter of the voxels of MONAI's eight 128³ windows at overlap 0.5; never eight 96³ windows."""
    shape = (145, 157, 152)
    plan = TilePlan.tight(shape, (128,) * 3, min_overlap=16, multiple=32, max_window=(160,) * 3)
    assert plan.window == (160, 160, 160) and len(plan) == 1
    assert math.prod(plan.window) < 0.5 * monai_windows(shape, 128, 0.5) * 128**3
    assert TilePlan.tight(shape, (128,) * 3, min_overlap=16, multiple=32).window == (128, 128, 128)


def test_long_axes_take_windows_between_roi_and_max_window() -> None:
    plan = TilePlan.tight((240, 240, 155), (128,) * 3, min_overlap=16, multiple=32, max_window=(160,) * 3)
    assert plan.window == (128, 128, 160) and len(plan) == 4
    assert plan.starts == ((0, 112), (0, 112), (0,))


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="min_overlap"):
        plan_axis(100, 32, min_overlap=32)
    with pytest.raises(ValueError, match="multiple"):
        plan_axis(100, 48, min_overlap=8, multiple=32)
    with pytest.raises(ValueError, match="smaller than roi"):
        plan_axis(100, 64, min_overlap=8, max_window=32)
    with pytest.raises(ValueError, match="does not match"):
        tiled_inference(torch.ones(1, 1, 8, 8, 8), lambda x: x, TilePlan.tight((9, 8, 8), (8, 8, 8), min_overlap=2))


@pytest.mark.parametrize("shape", [(145, 157, 152), (240, 240, 155), (60, 200, 90), (33, 33, 300)])
@pytest.mark.parametrize("budget", [128**3, 1_700_000, 600_000])
def test_voxel_budget_bounds_each_window_and_still_covers(shape: tuple[int, int, int], budget: int) -> None:
    plan = TilePlan.tight(shape, (128,) * 3, min_overlap=16, multiple=32, max_window=(160,) * 3, max_voxels=budget)
    assert math.prod(plan.window) <= budget
    assert all(64 <= w <= 160 and w % 32 == 0 for w in plan.window)
    counts = torch.zeros(plan.padded_shape)
    for sl in plan.slices():
        counts[sl] += 1
    assert counts.min() >= 1
    for window, starts in zip(plan.window, plan.starts, strict=True):
        for a, b in itertools.pairwise(starts):
            assert a + window - b >= 16
    unbounded = TilePlan.tight(shape, (128,) * 3, min_overlap=16, multiple=32, max_window=(160,) * 3)
    if math.prod(unbounded.window) <= budget:
        assert plan == unbounded


def test_voxel_budget_on_the_brain_crop_splits_one_axis() -> None:
    """A budget below one 160³ window (the DynUNet's memory) gives three 64 x 160 x 160 windows on the
    benchmark's brain box: 1.2 times the voxels of the single window, not the 4 times of eight 128³."""
    shape = (145, 157, 152)
    plan = TilePlan.tight(shape, (128,) * 3, min_overlap=16, multiple=32, max_window=(160,) * 3, max_voxels=2_400_000)
    assert plan.window == (64, 160, 160) and len(plan) == 3
    assert len(plan) * math.prod(plan.window) == 3 * 64 * 160 * 160 < 0.3 * 8 * 128**3
    image = torch.randn(1, 2, *shape)
    torch.testing.assert_close(tiled_inference(image, lambda x: x, plan), image, atol=1e-5, rtol=1e-5)


def test_voxel_budget_below_the_smallest_window() -> None:
    with pytest.raises(ValueError, match="smallest window"):
        TilePlan.tight((200, 200, 200), (128,) * 3, min_overlap=16, multiple=32, max_voxels=64**3 - 1)
