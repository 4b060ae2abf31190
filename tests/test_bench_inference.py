"""tools/bench_inference.py end to end in its --quick form: real training, real predictions, its JSON lines."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from medseg.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parents[1]


def _run(out: Path, *extra: str) -> list[dict]:
    proc = subprocess.run(
        [sys.executable, "tools/bench_inference.py", "--quick", "--out", str(out), *extra],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=900,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


@pytest.mark.slow
def test_quick_benchmark_prints_one_line_per_configuration_and_a_summary(tmp_path: Path) -> None:
    rows = _run(tmp_path)
    summary = rows[-1]
    assert summary["summary"] is True and summary["quick"] is True
    assert set(summary["networks"]) == {"resunet", "dynunet"}
    configs = {(r["network"], r["config"]) for r in rows[:-1]}
    for net in ("resunet", "dynunet"):
        assert {
            (net, c)
            for c in (
                "baseline",
                "predictor",
                "baseline_shifted",
                "predictor_monai_tiling",
                "predictor_roi_windows",
                "predictor_uncropped_monai",
            )
        } <= configs
        result = summary["networks"][net]
        assert result["baseline_s"] > 0 and result["predictor_s"] > 0
        assert 0.0 < result["peak_rss_gb"] < 24
        assert set(result["predictor_dice_vs_crop_overlap_0.5"]) == {"WT", "TC", "ET"}
        assert set(result["shifted_baseline_dice"]) == {"WT", "TC", "ET"}
    assert ("dynunet", "predictor_unbounded") in configs  # only networks with a default window budget
    assert ("resunet", "predictor_unbounded") not in configs
    for row in rows[:-1]:
        if row["config"] == "predictor_uncropped_monai":  # the baseline's own windows: its answer, any backend
            assert min(row["dice_vs_baseline"].values()) >= 0.99, row
        assert set(row["dice_vs_reference"]) == {"WT", "TC", "ET"}
        assert row["first_s"] in row["seconds"]
        if row["config"] != "baseline":
            assert set(row["dice_vs_baseline"]) == {"WT", "TC", "ET"}
        assert ("speedup" in row) == row["config"].startswith("predictor")
    labels = sorted(p.name for p in (tmp_path / "labels").iterdir())
    assert "resunet-predictor-quick.nii.gz" in labels and "dynunet-baseline-quick.nii.gz" in labels

    # the DynUNet's recipe has two stages: the second fine-tunes the first's weights on larger patches
    stage1, final = tmp_path / "checkpoints" / "dynunet-quick-stage1.pt", tmp_path / "checkpoints" / "dynunet-quick.pt"
    config = load_checkpoint(final, training=False).config
    assert config["train"]["init_weights"] == str(stage1)
    assert config["transforms"]["patch_size"] == [64] * 3
    assert load_checkpoint(stage1, training=False).config["transforms"]["patch_size"] == [32] * 3

    # a second run reuses the trained checkpoint instead of training again
    cached = tmp_path / "checkpoints" / "resunet-quick.pt"
    stamp = cached.stat().st_mtime_ns
    again = _run(tmp_path, "--networks", "resunet", "--no-study")
    assert [r["config"] for r in again[:-1]] == ["baseline", "predictor"]
    assert cached.stat().st_mtime_ns == stamp
