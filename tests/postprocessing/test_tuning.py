"""medseg tune-postprocessing: the choice of inference.min_component_ml on validation predictions."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from medseg.cli import main
from medseg.evaluation.lesion_wise import LESION_RULES, lesion_wise_label_maps
from medseg.io import Geometry, read_nifti, write_nifti
from medseg.labels import BRATS_RELEASES
from medseg.postprocessing import remove_small_components
from medseg.postprocessing.tuning import tune_min_component_ml

RELEASE = BRATS_RELEASES["2021"]
TABLE = RELEASE.label_table
SHAPE = (40, 40, 30)


def _cases(root: Path, n: int = 3) -> tuple[Path, Path]:
    """References: one tumour (oedema 20³ around necrosis 8³ around enhancing tumour 4³, 1 mm voxels).
    Predictions: the reference plus three 8-voxel oedema specks (0.008 mL) far from it, and a 27-voxel
    enhancing piece (0.027 mL) in a corner of the oedema, beyond the core's 3-voxel dilation."""
    ref_dir, pred_dir = root / "ref", root / "pred"
    pred_dir.mkdir(parents=True)
    geometry = Geometry(SHAPE, np.eye(4))
    for i in range(n):
        case = RELEASE.case_id(i)
        ref = np.zeros(SHAPE, np.uint8)
        ref[2:22, 2:22, 2:22] = 2
        ref[8:16, 8:16, 8:16] = 1
        ref[10:14, 10:14, 10:14] = 4
        pred = ref.copy()
        for x, y in ((26, 26), (30, 34), (36, 26)):
            pred[x : x + 2, y : y + 2, 24:26] = 2
        pred[2:5, 2:5, 2:5] = 4
        write_nifti(ref, geometry, ref_dir / case / RELEASE.file_name(case, "seg"))
        write_nifti(pred, geometry, pred_dir / f"{case}.nii.gz")
    return pred_dir, ref_dir


def test_specks_go_and_the_tumour_stays(tmp_path: Path) -> None:
    pred_dir, ref_dir = _cases(tmp_path)
    chosen, trials = tune_min_component_ml(
        pred_dir=pred_dir, ref_dir=ref_dir, out_dir=tmp_path / "out", lesion_rules="GLI", candidates=[0.02, 0.05, 10.0]
    )
    scores = {(t.region, t.min_ml): t.score for t in trials}
    # WT: 1 lesion + 3 false specks scores 1/4; 0.02 mL removes the specks; 10 mL the 8 mL tumour too
    assert [scores["WT", m] for m in (None, 0.02, 0.05, 10.0)] == pytest.approx([0.25, 1.0, 1.0, 0.0])
    # TC: the 0.027 mL enhancing piece is a false TC piece too; 0.05 mL removes it (it becomes oedema)
    assert [scores["TC", m] for m in (None, 0.02, 0.05, 10.0)] == pytest.approx([0.5, 0.5, 1.0, 0.0])
    # ET: nothing false is left once TC's choice applies; removing more only loses the 64 mm³ core
    assert [scores["ET", m] for m in (None, 0.02, 0.05, 10.0)] == pytest.approx([1.0, 1.0, 1.0, 0.0])
    assert chosen == {"WT": 0.02, "TC": 0.05}  # the smallest of equal bests; nothing for ET
    record = json.loads((tmp_path / "out" / "tuning.json").read_text())
    assert record == {"min_component_ml": chosen, "criterion": "lesion-wise Dice (GLI)", "cases": 3}
    rows = (tmp_path / "out" / "tuning.csv").read_text().splitlines()
    assert rows[0] == "region,min_component_ml,score,criterion,cases" and len(rows) == 1 + 3 * 4


def test_each_score_is_the_mean_over_cases_of_the_post_processed_maps(tmp_path: Path) -> None:
    pred_dir, ref_dir = _cases(tmp_path)
    for case in ("BraTS2021_00001",):  # make the cases differ: one case loses its false ET piece
        pred = read_nifti(pred_dir / f"{case}.nii.gz", dtype=None)
        array = pred.array.copy()
        array[2:5, 2:5, 2:5] = 2
        write_nifti(array, pred.geometry, pred_dir / f"{case}.nii.gz")
    chosen, trials = tune_min_component_ml(
        pred_dir=pred_dir, ref_dir=ref_dir, out_dir=tmp_path / "out", lesion_rules="GLI", candidates=[0.02, 0.05]
    )
    preds = {p.name[: -len(".nii.gz")]: read_nifti(p, dtype=None).array for p in sorted(pred_dir.iterdir())}
    refs = {c: read_nifti(ref_dir / c / RELEASE.file_name(c, "seg"), dtype=None).array for c in preds}
    order = TABLE.evaluation_names
    for trial in trials:
        before = {r: v for r, v in chosen.items() if order.index(r) < order.index(trial.region)}
        settings = before if trial.min_ml is None else {**before, trial.region: trial.min_ml}
        expected = [
            lesion_wise_label_maps(
                remove_small_components(preds[c], TABLE, spacing=(1, 1, 1), min_component_ml=settings),
                refs[c],
                table=TABLE,
                spacing=(1, 1, 1),
                rules=LESION_RULES["GLI"],
            )[trial.region].dice
            for c in preds
        ]
        assert trial.score == pytest.approx(np.mean(expected), abs=1e-6)
    assert {round(t.score, 4) for t in trials if t.region == "TC"} == {0.6667, 1.0}  # (0.5 + 1 + 0.5) / 3


def test_references_without_a_prediction_are_left_out(
    tmp_path: Path, capsys: pytest.CaptureFixture, without_progress: Callable[[str], str]
) -> None:
    pred_dir, ref_dir = _cases(tmp_path)
    _, alone = tune_min_component_ml(pred_dir=pred_dir, ref_dir=ref_dir, out_dir=tmp_path / "a", candidates=[0.02])
    (pred_dir / "BraTS2021_00002.nii.gz").unlink()  # a reference the validation predictions do not cover
    (pred_dir / "BraTS2021_00001.nii.gz").rename(pred_dir / "BraTS2021_00002.nii.gz")
    capsys.readouterr()
    _, fewer = tune_min_component_ml(pred_dir=pred_dir, ref_dir=ref_dir, out_dir=tmp_path / "b", candidates=[0.02])
    assert without_progress(capsys.readouterr().err) == (
        "medseg: note: tuning on the 2 predicted case(s); 1 reference(s) without a prediction are left out\n"
    )
    assert [t.score for t in fewer] == pytest.approx([t.score for t in alone])  # the cases are alike
    assert json.loads((tmp_path / "b" / "tuning.json").read_text())["cases"] == 2


def test_cli_prints_the_setting_and_refuses_bad_candidates(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    pred_dir, ref_dir = _cases(tmp_path)
    argv = ["tune-postprocessing", "--pred", str(pred_dir), "--ref", str(ref_dir), "--out", str(tmp_path / "o")]
    assert main([*argv, "--candidates", "0.02", "0.05", "--lesion-wise", "GLI"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "mean lesion-wise Dice (GLI) per smallest kept piece (mL); * chosen",
        "WT: none 0.2500  0.02 1.0000*  0.05 1.0000",
        "TC: none 0.5000  0.02 0.5000  0.05 1.0000*",
        "ET: none 1.0000*  0.02 1.0000  0.05 1.0000",
        'apply with: medseg predict ... --set "inference.min_component_ml={WT: 0.02, TC: 0.05}"',
    ]
    for bad in ("0", "-1"):
        assert main([*argv, "--candidates", bad]) == 2
        assert capsys.readouterr().err == f"medseg: error: candidates must be volumes in mL > 0, got [{float(bad)}]\n"


def test_a_prediction_on_another_grid_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture, without_progress: Callable[[str], str]
) -> None:
    pred_dir, ref_dir = _cases(tmp_path)
    culprit = pred_dir / "BraTS2021_00001.nii.gz"
    moved = read_nifti(culprit, dtype=None)
    affine = moved.geometry.affine.copy()
    affine[0, 3] += 2.0  # the same voxels, 2 mm to the right
    write_nifti(moved.array, Geometry(SHAPE, affine), culprit)
    argv = ["tune-postprocessing", "--pred", str(pred_dir), "--ref", str(ref_dir), "--out", str(tmp_path / "o")]
    assert main(argv) == 2
    err = without_progress(capsys.readouterr().err)
    assert err.count("\n") == 1 and err.startswith(f"medseg: error: {culprit}: not on the grid of ")
    assert "origin (LPS)" in err
    assert not (tmp_path / "o").exists()  # nothing written


def test_cases_without_a_brats2025_met_score_are_left_out(tmp_path: Path) -> None:
    # case 1: a 64 mm³ ET lesion predicted exactly and a one-voxel false positive (lesion-wise Dice 1/2, 1 once
    # pieces under 5 mm³ go); case 2: a 2 mm³ lesion only, which the BraTS 2025 MET rules do not score (NaN).
    # No case has a resection cavity: RC keeps every piece
    geometry = Geometry((16, 16, 16), np.eye(4))
    big, small = np.zeros((16, 16, 16), np.uint8), np.zeros((16, 16, 16), np.uint8)
    big[2:6, 2:6, 2:6] = 3
    small[10:12, 10, 10] = 3
    speck = big.copy()
    speck[12, 12, 12] = 3
    for case, (pred, ref) in {"BraTS-MET-00001-000": (speck, big), "BraTS-MET-00002-000": (small, small)}.items():
        write_nifti(ref, geometry, tmp_path / "ref" / case / f"{case}-seg.nii.gz")
        write_nifti(pred, geometry, tmp_path / "pred" / f"{case}.nii.gz")
    chosen, trials = tune_min_component_ml(
        pred_dir=tmp_path / "pred",
        ref_dir=tmp_path / "ref",
        out_dir=tmp_path / "out",
        labels="brats2025-met",
        lesion_rules="brats2025-met",
        candidates=[0.005],
    )
    assert {(t.region, t.min_ml): t.score for t in trials} == pytest.approx(
        {("WT", None): 0.5, ("WT", 0.005): 1.0, ("TC", None): 1.0, ("TC", 0.005): 1.0}
        | {("ET", None): 1.0, ("ET", 0.005): 1.0}
    )
    assert chosen == {"WT": 0.005}


def test_rules_that_cannot_tune_or_that_miss_the_table_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    pred_dir, ref_dir = _cases(tmp_path)  # BraTS 2021 label maps
    argv = ["tune-postprocessing", "--pred", str(pred_dir), "--ref", str(ref_dir), "--out", str(tmp_path / "o")]
    assert main([*argv, "--lesion-wise", "brats2025-gli"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "brats2025-gli average over matched pairs only and ignore false positives" in err
    assert main([*argv, "--lesion-wise", "brats2025-met"]) == 2  # MET's rules, on the 2021 table
    err = capsys.readouterr().err
    assert "lesion rules brats2025-met score the regions of label table brats2025-met, not brats2021" in err
    assert not (tmp_path / "o").exists()  # nothing written
