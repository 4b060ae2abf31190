"""tools/bench_active_learning.py: the area under a learning curve and the summary over complete curves (the
training rounds themselves run on the real hippocampus scans only)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

LoadTool = Callable[[str], ModuleType]


def test_the_area_under_a_curve_is_its_mean_dice_over_the_labelled_range(load_tool: LoadTool) -> None:
    bench = load_tool("bench_active_learning")
    assert bench.area_under_curve([10, 20, 30], [0.5, 0.5, 0.5]) == pytest.approx(0.5)
    # trapezoids: (0.2 + 0.6) / 2 * 10 + (0.6 + 0.7) / 2 * 30, over 40 labelled cases
    assert bench.area_under_curve([10, 20, 50], [0.2, 0.6, 0.7]) == pytest.approx((4.0 + 19.5) / 40)


def test_the_summary_compares_complete_curves_and_draws_them(load_tool: LoadTool, tmp_path: Path) -> None:
    bench = load_tool("bench_active_learning")
    args = argparse.Namespace(seeds=[0, 1], rounds=2, initial=10, step=10, epochs=6, score="entropy_boundary")
    args.out, args.held_out = tmp_path, 40
    curves = {("uncertainty", 0): [0.5, 0.7, 0.8], ("random", 0): [0.5, 0.6, 0.7], ("uncertainty", 1): [0.4, 0.6, 0.8]}
    done = {
        (strategy, seed, r): {"labelled": 10 + 10 * r, "mean_dice": dice}
        for (strategy, seed), values in curves.items()
        for r, dice in enumerate(values)
    }
    done[("random", 1, 0)] = {"labelled": 10, "mean_dice": 0.4}  # an incomplete curve: left out
    summary = bench.summarize(args, done)
    assert summary["area_per_seed"] == {"uncertainty": {0: 0.675, 1: 0.6}, "random": {0: 0.6}}
    assert summary["area_under_curve"] == {"uncertainty": 0.6375, "random": 0.6}
    assert summary["uncertainty_above_random"] is True
    assert Path(summary["plot"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
