"""tools/bench_inference.py end to end in its --quick form: real training, real predictions, its JSON lines."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import nibabel as nib
import numpy as np
import pytest
from scipy.spatial import cKDTree

from medseg.checkpoint import load_checkpoint
from medseg.labels import BRATS2021

REPO = Path(__file__).resolve().parents[1]
LoadTool = Callable[[str], ModuleType]


def test_differences_locate_boundary_jitter_and_far_false_positives(tmp_path: Path, load_tool: LoadTool) -> None:
    """On anisotropic voxels (1 x 1 x 2.5 mm): a one-voxel shell grown around the true tumour and a
    slice lost inside it are boundary jitter, a blob 30 mm away is far; checked against brute-force
    nearest-voxel distances in mm."""
    bench = load_tool("bench_inference")
    spacing = (1.0, 1.0, 2.5)
    truth = np.zeros((60, 40, 20), np.uint8)
    truth[10:20, 10:20, 5:10] = 2  # oedema: WT only
    truth[13:17, 13:17, 6:9] = 4  # enhancing: WT, TC and ET
    a = truth.copy()
    a[:, :, 9] = 0  # loses the top oedema slice: 2.5 mm from outside across z, 1 mm at its rim
    b = truth.copy()
    b[9:21, 9:21, 5:10] = np.where(b[9:21, 9:21, 5:10] == 0, 2, b[9:21, 9:21, 5:10])  # WT grown 1 voxel in-plane
    b[50:53, 30:33, 8:10] = 2  # false oedema 30+ mm from the tumour
    reference = tmp_path / "seg.nii.gz"
    nib.save(nib.Nifti1Image(truth, np.diag([*spacing, 1.0])), reference)  # the spacing comes from the file

    result = bench.Truth.read(reference, BRATS2021)
    masks_a, masks_b = bench.region_masks(a, BRATS2021), bench.region_masks(b, BRATS2021)
    wt = result.differences(masks_a, masks_b)["WT"]

    inside, outside = np.argwhere(truth > 0) * spacing, np.argwhere(truth == 0) * spacing
    differ = np.argwhere((a > 0) ^ (b > 0))
    in_truth = truth[tuple(differ.T)] > 0
    nearest = np.where(  # to the other side of the true boundary, voxel centre to voxel centre
        in_truth, cKDTree(outside).query(differ * spacing)[0], cKDTree(inside).query(differ * spacing)[0]
    )
    assert wt["voxels"] == len(differ) == 100 + 44 * 5 + 18  # slice, shell, blob
    assert wt["near_boundary"] == round(float((nearest <= bench.NEAR_MM).mean()), 3)
    assert wt["far"] == round(float((~in_truth & (nearest > bench.FAR_MM)).mean()), 3)
    assert 0 < wt["far"] < wt["near_boundary"] < 1  # the slice's centre is 2.5 mm deep: not near
    far_fp = result.far_false_positives(masks_b)
    assert far_fp["WT"] == 18 and far_fp["ET"] == 0  # the 3 x 3 x 2 blob
    assert result.differences(masks_a, masks_a)["TC"] == {"voxels": 0, "near_boundary": 0.0, "far": 0.0}


def test_a_cached_checkpoint_from_another_recipe_is_refused(
    tiny_checkpoint: Path, tmp_path: Path, load_tool: LoadTool
) -> None:
    """Figures measured on weights that the recipe did not train would be reported as the recipe's."""
    bench = load_tool("bench_inference")
    cached = tmp_path / "checkpoints" / "resunet-quick.pt"
    cached.parent.mkdir()
    shutil.copy(tiny_checkpoint, cached)
    expected = r"resunet-quick\.pt: a unet trained as Stage\(patch=32, .* asks for a resunet .*; delete it to retrain"
    with pytest.raises(SystemExit, match=expected):
        bench.train_checkpoint("resunet", out=tmp_path, quick=True)
    assert not (tmp_path / "train_phantoms-quick").exists()  # nothing trained, nothing generated


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
                "predictor_mirrored",
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
        assert set(row["far_false_positives"]) == {"WT", "TC", "ET"}
        assert row["first_s"] in row["seconds"]
        if row["config"] != "baseline":
            assert set(row["dice_vs_baseline"]) == {"WT", "TC", "ET"}
            assert set(row["differences_vs_baseline"]) == {"WT", "TC", "ET"}
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

    # ... but not one that another recipe trained: the DynUNet's final stage is 64³ patches, batch 1
    shutil.copy(cached, final)
    proc = subprocess.run(
        [sys.executable, "tools/bench_inference.py", "--quick", "--out", str(tmp_path), "--networks", "dynunet"],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        f"{final}: a resunet trained as Stage(patch=32, epochs=2, batch_size=2, lr=0.003), but the recipe asks"
        " for a dynunet trained as Stage(patch=64, epochs=1, batch_size=1, lr=0.001); delete it to retrain"
    )


@pytest.mark.slow
def test_given_weights_are_measured_instead_of_a_recipe(tiny_checkpoint: Path, tmp_path: Path) -> None:
    rows = _run(tmp_path, "--networks", "tiny", "--weights", f"tiny={tiny_checkpoint}", "--no-study")
    assert [(r["network"], r["config"]) for r in rows[:-1]] == [("tiny", "baseline"), ("tiny", "predictor")]
    assert rows[-1]["networks"]["tiny"]["checkpoint"] == str(tiny_checkpoint.resolve())
    assert rows[-1]["networks"]["tiny"]["speedup"] > 0
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "train_phantoms-quick").exists()
