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
    args = argparse.Namespace(
        seeds=[0, 1], rounds=2, initial=10, step=10, epochs=6, score="entropy_boundary", from_scratch=False
    )
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
    assert summary["warm_start"] is True
    assert Path(summary["plot"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("from_scratch", [False, True])
def test_each_round_starts_from_the_model_that_chose_its_cases(
    load_tool: LoadTool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, from_scratch: bool
) -> None:
    """The wiring of the warm start, training and ranking replaced (each is a real run of minutes): round r
    trains from round r - 1's ``last.pt``, also when the earlier rounds are read back from the results file."""
    bench = load_tool("bench_active_learning")
    args = argparse.Namespace(rounds=3, initial=2, step=2, epochs=1, set=[], from_scratch=from_scratch, out=tmp_path)
    inits: dict[int, Path | None] = {}

    def train(_: argparse.Namespace, labelled: list[str], *__: object, init: Path | None) -> dict:
        inits[len(labelled)] = init
        return {"mean_dice": 0.5}

    def choose(
        _: argparse.Namespace, strategy: str, seed: int, round_: int, unlabelled: list[str], *__: object
    ) -> list[str]:
        return unlabelled[:2]

    monkeypatch.setattr(bench, "train_and_score", train)
    monkeypatch.setattr(bench, "choose", choose)
    pool = [f"c{i}" for i in range(10)]
    done: dict = {}
    bench.run_curve(args, "uncertainty", 0, tmp_path / "held_out.json", pool, done)
    rounds = tmp_path / "seed_0"
    expected = [None, rounds / "round_0", rounds / "uncertainty" / "round_1", rounds / "uncertainty" / "round_2"]
    expected = [None if from_scratch or e is None else e / "train" / "last.pt" for e in expected]
    assert [inits[n] for n in (2, 4, 6, 8)] == expected
    assert [done[("uncertainty", 0, r)]["warm_start"] for r in range(4)] == [e is not None for e in expected]
    del done[("uncertainty", 0, 3)]  # the last round again, the earlier ones read back
    inits.clear()
    bench.run_curve(args, "uncertainty", 0, tmp_path / "held_out.json", pool, done)
    assert inits == {8: expected[3]}
