"""The BraTS demo pipeline (``medseg demo``) end to end on a tiny budget."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medseg.demo import BRATS_DEMO_NSD_TOLERANCE_MM, run_demo

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo_brats_phantom.yaml"


@pytest.mark.slow
def test_brats_demo_end_to_end_learns_on_a_small_budget(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    overrides = [
        "data.manifest=null",  # the demo's manifest lists its 30 cases
        "phantoms.train_cases=4",
        "phantoms.test_cases=2",
        "phantoms.shape=[48,48,40]",
        "phantoms.spacing=4.0",
        "transforms.patch_size=[32,32,32]",
        "inference.roi_size=[32,32,32]",
        "data.num_folds=4",
        "data.num_workers=0",
        "train.epochs=8",
        "train.iterations_per_epoch=25",
        "train.val_every=8",
        "train.lr=0.01",
    ]
    out = tmp_path / "demo"
    summary = run_demo(out_dir=out, config=CONFIG, overrides=overrides)
    assert list(summary["regions"]) == ["WT", "TC", "ET"] and len(summary["cases"]) == 2
    # 200 steps learn the phantoms' tumours (measured WT 0.73, TC 0.64 on the 2-core development machine):
    # a model that predicts nothing, or noise, fails here
    dice = {region: stats["dice"]["mean"] for region, stats in summary["regions"].items()}
    assert dice["WT"] >= 0.5 and dice["TC"] >= 0.35, dice
    assert summary["nsd_tolerance_mm"] == BRATS_DEMO_NSD_TOLERANCE_MM
    assert summary["lesion_wise"]["rules"] == "GLI"
    assert json.loads((out / "summary.json").read_text()) == summary
    for case in summary["cases"]:
        pred = nib.load(out / "predictions" / f"{case}.nii.gz")
        ref = nib.load(out / "data" / "test" / case / f"{case}_seg.nii.gz")
        assert pred.shape == ref.shape
        np.testing.assert_allclose(pred.affine, ref.affine, atol=1e-5)
    lesion_rows = (out / "lesion_metrics.csv").read_text().splitlines()
    assert len(lesion_rows) == 1 + 2 * 3
    report = (out / "report.html").read_text(encoding="utf-8")
    assert "<h2>Lesion-wise</h2>" in report and "(NSD) at 2 mm" in report
    printed = capsys.readouterr().out
    assert "lesion-wise, BraTS GLI rules (dilation 3, lesions > 50 mm³)" in printed
