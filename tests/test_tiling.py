"""Tight tiling: coverage, positive weights, exact identity, fewer windows than MONAI."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from monai.inferers import SlidingWindowInferer

from medseg.tiling import TilePlan, plan_axis, tiled_inference


def monai_windows(shape: tuple[int, ...], roi: int, overlap: float) -> int:
    """How many windows MONAI's sliding window puts on ``shape`` (counted by running it)."""
    calls = []

    def net(x: torch.Tensor) -> torch.Tensor:
        calls.append(x.shape[0])
        return x

    SlidingWindowInferer((roi,) * 3, sw_batch_size=1, overlap=overlap)(torch.zeros(1, 1, *shape), net)
    return sum(calls)


@pytest.mark.parametrize("length", [1, 7, 31, 32, 33, 96, 97, 140, 170, 240, 1000])
@pytest.mark.parametrize(("roi", "overlap", "multiple"), [(96, 16, 1), (128, 16, 32), (64, 0, 16), (96, 48, 32)])
def test_axis_plan_covers_with_min_overlap(length: int, roi: int, overlap: int, multiple: int) -> None:
    window, starts = plan_axis(length, roi, min_overlap=overlap, multiple=multiple)
    assert window <= roi and window % multiple == 0
    assert starts[0] == 0 and starts[-1] + window == max(length, window)
    assert starts == sorted(starts)
    for a, b in itertools.pairwise(starts):
        assert a + window - b >= overlap  # neighbours overlap by at least min_overlap
    if length > roi:  # the fewest windows of size roi that keep the overlap
        assert len(starts) == math.ceil((length - overlap) / (roi - overlap))


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
    """The BraTS brain box (~140x170x140 voxels) at roi 128: eight 96³ windows, not MONAI's 27 of 128³."""
    plan = TilePlan.tight((140, 170, 140), (128, 128, 128), min_overlap=16, multiple=32)
    assert plan.window == (96, 96, 96) and len(plan) == 8


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="min_overlap"):
        plan_axis(100, 32, min_overlap=32)
    with pytest.raises(ValueError, match="multiple"):
        plan_axis(100, 48, min_overlap=8, multiple=32)
    with pytest.raises(ValueError, match="does not match"):
        tiled_inference(torch.ones(1, 1, 8, 8, 8), lambda x: x, TilePlan.tight((9, 8, 8), (8, 8, 8), min_overlap=2))
