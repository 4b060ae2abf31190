"""tools/bench_real.py's pooled folder: every held-out case of the folds run, in a ``metrics.csv`` that
``medseg compare`` pairs case by case between two runs (e.g. trained from scratch and from phantom weights)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

from medseg.evaluation.comparison import compare_evaluations
from medseg.evaluation.files import Metrics, read_metrics_csv, write_metrics_csv
from medseg.evaluation.metrics import RegionScore


def _run(out: Path, dice: float, variant: str | None = None) -> None:
    """Two folds' evaluations as the tool leaves them: fold K held out cases c{2K} and c{2K+1}."""
    for fold in (0, 1):
        scores = {
            f"c{2 * fold + i}": {"WT": RegionScore(dice - 0.1 * i, 2.0 + i, 0.9), "ET": RegionScore(dice / 2, 5.0, 0.5)}
            for i in (0, 1)
        }
        write_metrics_csv(out / f"fold_{fold}" / (variant or "") / "evaluation" / "metrics.csv", Metrics(scores, 1.0))


def test_pooled_scores_are_every_held_out_case_and_compare_pairs_two_runs(
    tmp_path: Path, load_tool: Callable[[str], ModuleType]
) -> None:
    bench_real = load_tool("bench_real")
    runs = {"scratch": 0.7, "phantom_init": 0.8}
    pooled = {}
    for name, dice in runs.items():
        _run(tmp_path / name, dice)
        args = argparse.Namespace(out=tmp_path / name, variant=None, dataset="brats2018")
        pooled[name] = bench_real.write_pooled(args, [0, 1])
        assert pooled[name] == tmp_path / name / "pooled"
        metrics = read_metrics_csv(pooled[name] / "metrics.csv")
        assert list(metrics.scores) == ["c0", "c1", "c2", "c3"] and metrics.nsd_tolerance_mm == 1.0
        assert metrics.scores["c3"]["WT"] == RegionScore(pytest.approx(dice - 0.1), 3.0, 0.9)
        assert (pooled[name] / "metrics.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = compare_evaluations(eval_dirs=list(pooled.values()), out_dir=tmp_path / "cmp", names=list(runs))
    wt = next(r for r in rows if (r.region, r.metric, r.model) == ("WT", "dice", "phantom_init"))
    assert wt.difference == pytest.approx(0.1) and wt.mean == pytest.approx(0.75)
    # a variant's scores are pooled apart from the run's own
    _run(tmp_path / "scratch", 0.5, variant="mirrored")
    args = argparse.Namespace(out=tmp_path / "scratch", variant="mirrored", dataset="brats2018")
    variant = bench_real.write_pooled(args, [0, 1])
    assert variant.name == "pooled-mirrored"
    assert read_metrics_csv(variant / "metrics.csv").scores["c0"]["WT"].dice == pytest.approx(0.5)
