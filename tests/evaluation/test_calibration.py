"""The expected calibration error against hand-computed values, and ``medseg evaluate`` scoring it where the
prediction folder holds probabilities."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medseg.cli import main
from medseg.evaluation import evaluate_folder
from medseg.evaluation.calibration import calibration_bins, calibration_of_case, expected_calibration_error
from medseg.labels import LabelTable, Region

CLASSES = LabelTable("organs", {0: "background", 1: "liver", 2: "spleen"})


def test_ece_of_a_handful_of_voxels_by_hand() -> None:
    p = np.array([0.05, 0.15, 0.12, 0.95, 0.85, 0.55, 1.0, 0.1])
    truth = np.array([0, 1, 0, 1, 1, 0, 1, 0], dtype=bool)
    # 10 bins: [0, .1) holds .05; [.1, .2) .15, .12 and .1; [.5, .6) .55; [.8, .9) .85; [.9, 1] .95 and 1.0
    # |truth - probability| summed per bin: .05, |1 - .37|, .55, .15, |2 - 1.95|; over 8 voxels
    expected = (0.05 + 0.63 + 0.55 + 0.15 + 0.05) / 8
    assert expected_calibration_error(p, truth, bins=10) == pytest.approx(expected)
    bins = calibration_bins(p, truth, bins=10)
    assert bins.count.tolist() == [1, 3, 0, 0, 0, 1, 0, 0, 1, 2]
    # one bin: the gap between the mean probability and the share that is right
    assert expected_calibration_error(p, truth, bins=1) == pytest.approx(abs(truth.mean() - p.mean()))
    # pooled bins of two halves are the bins of the whole
    halves = calibration_bins(p[:4], truth[:4], bins=10) + calibration_bins(p[4:], truth[4:], bins=10)
    assert halves.ece == pytest.approx(expected)


def test_a_calibrated_prediction_has_ece_zero_and_an_overconfident_one_its_gap() -> None:
    rng = np.random.default_rng(0)
    p = rng.uniform(0, 1, 400_000)
    truth = rng.uniform(0, 1, p.size) < p  # right as often as it says
    assert expected_calibration_error(p, truth) < 0.005
    sure = np.where(p > 0.5, 1.0, 0.0)  # says 0 or 1, right three times in four
    assert expected_calibration_error(sure, truth) == pytest.approx(0.25, abs=0.005)


def test_each_label_is_scored_against_the_rest_from_its_own_channel() -> None:
    reference = np.array([0, 1, 1, 2, 0, 2], dtype=np.uint8).reshape(6, 1, 1)
    probs = np.array(
        [[0.9, 0.05, 0.05], [0.2, 0.7, 0.1], [0.4, 0.6, 0.0], [0.1, 0.1, 0.8], [0.5, 0.0, 0.5], [0.0, 0.3, 0.7]]
    ).T.reshape(3, 6, 1, 1)
    scores = calibration_of_case(probs, reference, table=CLASSES, bins=5)
    assert list(scores) == ["liver", "spleen"]
    liver = expected_calibration_error(probs[1].ravel(), reference.ravel() == 1, bins=5)
    assert scores["liver"].ece == pytest.approx(liver)
    # liver, 5 bins: [0, .2) .05 .1 0 (none liver); [.2, .4) .3 (not); [.6, .8) .7 .6 (both liver)
    assert liver == pytest.approx((0.15 + 0.3 + abs(2 - 1.3)) / 6)
    regions = LabelTable("r", {0: "bg", 1: "a", 2: "b"}, kind="regions", regions=(Region("AB", (1, 2)),))
    region = calibration_of_case(np.full((1, 6, 1, 1), 0.5), reference, table=regions, bins=5)
    assert region["AB"].ece == pytest.approx(abs(4 / 6 - 0.5))


def _save(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.diag([2.0, 2.0, 3.0, 1.0])), path)


def test_evaluate_scores_the_ece_where_probabilities_lie_beside_the_predictions(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    reference = np.zeros((8, 8, 4), dtype=np.uint8)
    reference[2:6, 2:6] = 1
    pred_dir, ref_dir = tmp_path / "pred", tmp_path / "ref"
    for case in ("a", "b"):
        _save(reference, ref_dir / f"{case}.nii.gz")
        _save(reference, pred_dir / f"{case}.nii.gz")
    table = LabelTable("one", {0: "background", 1: "organ"})
    liver = np.where(reference == 1, 0.8, 0.1).astype(np.float32)  # off by .2 inside, by .1 outside
    _save(np.stack([1 - liver, liver], axis=-1), pred_dir / "a_probabilities.nii.gz")
    _save(np.zeros((8, 8, 4, 2), dtype=np.float32), pred_dir / "b_uncertainty.nii.gz")  # not a prediction
    summary = evaluate_folder(pred_dir=pred_dir, ref_dir=ref_dir, out_dir=tmp_path / "eval", labels=table, ece_bins=10)
    assert summary["cases"] == ["a", "b"]  # the files beside the predictions are not cases
    inside = (reference == 1).mean()
    expected = 0.2 * inside + 0.1 * (1 - inside)
    organ = summary["calibration"]["regions"]["organ"]
    assert organ["n"] == 1 and organ["ece"] == pytest.approx(expected, rel=1e-5)
    assert summary["calibration"]["bins"] == 10
    assert json.loads((tmp_path / "eval" / "summary.json").read_text())["calibration"] == summary["calibration"]
    rows = (tmp_path / "eval" / "calibration.csv").read_text().splitlines()
    assert rows[0] == "case,region,ece,bins" and rows[1].startswith("a,organ,0.1") and len(rows) == 2

    labels = tmp_path / "dataset.json"
    labels.write_text(json.dumps({"name": "one", "labels": {"0": "background", "1": "organ"}}))
    argv = ["evaluate", "--pred", str(pred_dir), "--ref", str(ref_dir), "--out", str(tmp_path / "eval2")]
    assert main([*argv, "--labels", str(labels), "--ece-bins", "10"]) == 0
    printed = capsys.readouterr().out
    assert "expected calibration error, 10 equal-width bins" in printed and f"{expected:.4f}" in printed

    (pred_dir / "a_probabilities.nii.gz").unlink()  # without probabilities: no calibration, and its file goes
    summary = evaluate_folder(pred_dir=pred_dir, ref_dir=ref_dir, out_dir=tmp_path / "eval", labels=table)
    assert "calibration" not in summary and not (tmp_path / "eval" / "calibration.csv").exists()


def test_probabilities_with_the_wrong_channels_are_an_error_naming_the_file(tmp_path: Path) -> None:
    reference = np.zeros((4, 4, 4), dtype=np.uint8)
    _save(reference, tmp_path / "ref" / "a.nii.gz")
    _save(reference, tmp_path / "pred" / "a.nii.gz")
    _save(np.zeros((4, 4, 4, 3), dtype=np.float32), tmp_path / "pred" / "a_probabilities.nii.gz")
    table = LabelTable("one", {0: "background", 1: "organ"})
    with pytest.raises(Exception, match=r"a_probabilities.nii.gz.*expected 2 probability channels"):
        evaluate_folder(pred_dir=tmp_path / "pred", ref_dir=tmp_path / "ref", out_dir=tmp_path / "e", labels=table)
