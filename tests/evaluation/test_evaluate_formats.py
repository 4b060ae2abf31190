"""``medseg evaluate`` on what medseg reads and writes: every label-map format, references stored on another
axis order of the same grid, the label table of the model that predicted, the MSD ``labelsTs/`` folder and
the empty-both rule of each kind of table. Scores are checked against the independent ``reference_metrics``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import nibabel as nib
import numpy as np
import pytest

from medseg.cli import main
from medseg.errors import MedsegInputError
from medseg.evaluation import evaluate_folder, read_metrics_csv
from medseg.io import Geometry, write_label_map, write_nifti
from medseg.labels import LabelTable, get_label_table
from medseg.protocol import LABELS_JSON

if TYPE_CHECKING:
    from conftest import ReferenceMetrics

SHAPE = (22, 18, 10)
SPACING = (1.2, 0.8, 2.5)
ORGANS = LabelTable("organs5", {0: "background", **{v: f"organ{v}" for v in range(1, 6)}}, kind="classes")


def _geometry() -> Geometry:
    """An LPS-stored grid (as SimpleITK and DICOM store it), off-origin."""
    return Geometry.from_itk(shape=SHAPE, spacing=SPACING, origin=(-20.0, 35.5, 12.0), direction=np.eye(3))


def _organs(seed: int, values: tuple[int, ...] = (1, 2, 3, 4, 5)) -> np.ndarray:
    """A label map of boxes, one per value, at random places."""
    rng = np.random.default_rng(seed)
    out = np.zeros(SHAPE, np.uint8)
    for v in values:
        x, y, z = (int(rng.integers(0, s - 5)) for s in SHAPE)
        out[x : x + 5, y : y + 4, z : z + 3] = v
    return out


def _expected(metrics: type[ReferenceMetrics], pred: np.ndarray, ref: np.ndarray, table: LabelTable) -> dict:
    return {
        name: metrics.scores(np.isin(pred, v), np.isin(ref, v), SPACING) for name, v in table.evaluation_sets().items()
    }


def _assert_scores(scores: dict, expected: dict) -> None:
    assert sorted(scores) == sorted(expected)
    for name, (dice, hd, nsd) in expected.items():
        assert scores[name].dice == pytest.approx(dice, abs=1e-5), name
        assert scores[name].hd95 == pytest.approx(hd, abs=1e-4), name
        assert scores[name].nsd == pytest.approx(nsd, abs=1e-5), name


def _write_itk(labels: np.ndarray, geometry: Geometry, path: Path) -> None:
    """A label map as NRRD or MHA through SimpleITK (LPS spacing, origin, direction)."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.ascontiguousarray(labels.transpose(2, 1, 0)))
    image.SetSpacing(geometry.spacing)
    image.SetOrigin(tuple(geometry.origin))
    image.SetDirection(tuple(geometry.direction.ravel()))
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))


def test_predictions_and_references_in_every_format(tmp_path: Path, reference_metrics: type[ReferenceMetrics]) -> None:
    """``.seg.nrrd`` and ``.nii.gz`` predictions against ``.nrrd``, ``.mha`` and ``.nii`` references: before,
    only ``<case>.nii.gz`` was found."""
    geometry, pred_dir, ref_dir = _geometry(), tmp_path / "pred", tmp_path / "ref"
    pred_dir.mkdir()
    cases = {}
    for n, (pred_ending, ref_ending) in enumerate([(".seg.nrrd", ".nrrd"), (".nii.gz", ".mha"), (".seg.nrrd", ".nii")]):
        ref = _organs(n)
        pred = np.roll(ref, 1, axis=n % 3)
        write_label_map(pred, geometry, pred_dir / f"case{n}{pred_ending}", table=ORGANS)
        if ref_ending == ".nii":
            write_nifti(ref, geometry, ref_dir / f"case{n}.nii")
        else:
            _write_itk(ref, geometry, ref_dir / f"case{n}{ref_ending}")
        cases[f"case{n}"] = (pred, ref)
    (pred_dir / "case0_uncertainty.nii.gz").write_bytes(b"")  # written beside a label map by medseg predict: no case
    summary = evaluate_folder(pred_dir=pred_dir, ref_dir=ref_dir, out_dir=tmp_path / "out", labels=ORGANS)
    assert summary["cases"] == sorted(cases) and summary["missing_predictions"] == []
    scores = read_metrics_csv(tmp_path / "out" / "metrics.csv").scores
    for case, (pred, ref) in cases.items():
        _assert_scores(scores[case], _expected(reference_metrics, pred, ref, ORGANS))


def test_two_files_of_one_case_are_refused_naming_both(tmp_path: Path) -> None:
    geometry = _geometry()
    write_label_map(_organs(0), geometry, tmp_path / "pred" / "a.nii.gz", table=ORGANS)
    write_label_map(_organs(0), geometry, tmp_path / "pred" / "a.seg.nrrd", table=ORGANS)
    write_nifti(_organs(0), geometry, tmp_path / "ref" / "a.nii.gz")
    with pytest.raises(MedsegInputError, match=r"two label maps of case 'a': a\.nii\.gz and a\.seg\.nrrd"):
        evaluate_folder(pred_dir=tmp_path / "pred", ref_dir=tmp_path / "ref", out_dir=tmp_path / "o", labels=ORGANS)


def _stored_as(labels: np.ndarray, affine: np.ndarray, axcodes: tuple[str, str, str]) -> tuple[np.ndarray, np.ndarray]:
    """The same voxels stored with the axes ``axcodes`` (nibabel's reorientation, independent of medseg's)."""
    transform = nib.orientations.ornt_transform(
        nib.orientations.io_orientation(affine), nib.orientations.axcodes2ornt(axcodes)
    )
    return nib.orientations.apply_orientation(labels, transform), affine @ nib.orientations.inv_ornt_aff(
        transform, labels.shape
    )


@pytest.mark.parametrize("axcodes", [("L", "A", "S"), ("A", "R", "I")], ids=["LAS", "ARI"])
def test_a_reference_on_another_axis_order_is_reoriented_exactly(
    tmp_path: Path, axcodes: tuple[str, str, str], reference_metrics: type[ReferenceMetrics],
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """A reference stored LAS (or permuted and flipped) beside an LPS prediction: the same voxels, scored
    exactly as on one grid, with one note. Before: refused as "direction cosines differ"."""
    geometry = _geometry()
    ref, pred = _organs(1), np.roll(_organs(1), 2, axis=0)
    assert nib.aff2axcodes(geometry.affine) == ("L", "P", "S")
    stored, affine = _stored_as(ref, geometry.affine, axcodes)
    assert nib.aff2axcodes(affine) == axcodes
    write_nifti(stored, Geometry(stored.shape, affine), tmp_path / "ref" / "ct_1.nii.gz")
    write_nifti(pred, geometry, tmp_path / "pred" / "ct_1.nii.gz")
    evaluate_folder(pred_dir=tmp_path / "pred", ref_dir=tmp_path / "ref", out_dir=tmp_path / "out", labels=ORGANS)
    scores = read_metrics_csv(tmp_path / "out" / "metrics.csv").scores["ct_1"]
    # scored on the reference's grid, whose axes carry the spacing: both maps as nibabel stores them there
    moved = _stored_as(pred, geometry.affine, axcodes)[0]
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    _assert_scores(
        scores,
        {
            name: reference_metrics.scores(np.isin(moved, v), np.isin(stored, v), spacing)
            for name, v in ORGANS.evaluation_sets().items()
        },
    )
    notes = [line for line in capsys.readouterr().err.splitlines() if "no interpolation" in line]
    assert len(notes) == 1 and notes[0].startswith("medseg: note: 1 prediction(s)") and notes[0].endswith(": ct_1")


def test_a_reference_half_a_voxel_away_is_still_refused(tmp_path: Path) -> None:
    geometry = _geometry()
    shifted = geometry.affine.copy()
    shifted[:3, 3] += shifted[:3, 0] / 2  # half a voxel along i: no voxel centre in common
    write_nifti(_organs(0), Geometry(SHAPE, shifted), tmp_path / "ref" / "a.nii.gz")
    write_nifti(_organs(0), geometry, tmp_path / "pred" / "a.nii.gz")
    with pytest.raises(MedsegInputError, match=r"not on the grid of .*a\.nii\.gz: origin \(LPS\)"):
        evaluate_folder(pred_dir=tmp_path / "pred", ref_dir=tmp_path / "ref", out_dir=tmp_path / "o", labels=ORGANS)


def _ct_folders(tmp_path: Path, *, table_beside: bool) -> tuple[Path, Path]:
    """A flat CT label folder (no dataset.json) with values 1-5, and predictions of it."""
    pred_dir, ref_dir = tmp_path / "pred", tmp_path / "ref"
    for n in range(2):
        write_nifti(_organs(n), _geometry(), ref_dir / f"ct_{n}.nii.gz")
        write_nifti(_organs(n), _geometry(), pred_dir / f"ct_{n}.nii.gz")
    if table_beside:  # as medseg predict writes it
        (pred_dir / LABELS_JSON).write_text(json.dumps(ORGANS.to_dict()))
    return pred_dir, ref_dir


def test_auto_labels_take_the_table_written_beside_the_predictions(tmp_path: Path) -> None:
    pred_dir, ref_dir = _ct_folders(tmp_path, table_beside=True)
    summary = evaluate_folder(pred_dir=pred_dir, ref_dir=ref_dir, out_dir=tmp_path / "out")
    assert summary["label_table"] == "organs5" and list(summary["regions"]) == [f"organ{v}" for v in range(1, 6)]
    assert all(stats["dice"]["mean"] == pytest.approx(1.0) for stats in summary["regions"].values())


def test_auto_labels_on_a_ct_folder_say_how_to_give_the_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before: "holds both label 3 (BraTS 2023 ET) and 4 (BraTS 2021 ET)"."""
    pred_dir, ref_dir = _ct_folders(tmp_path, table_beside=False)
    argv = ["evaluate", "--pred", str(pred_dir), "--ref", str(ref_dir), "--out", str(tmp_path / "o")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"medseg: error: {ref_dir / 'ct_0.nii.gz'}: label values [0, 1, 2,")
    assert "are in none of the label tables brats2021, brats2023" in err and "BraTS" not in err
    assert err.endswith("give --labels (a table name, a dataset.json) or --labels-from CKPT (the model that predicted)")


def test_labels_from_a_checkpoint(
    tmp_path: Path, one_channel_checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for n in range(2):
        tissue = (_organs(n) > 0).astype(np.uint8)
        write_nifti(tissue, _geometry(), tmp_path / "ref" / f"ct_{n}.nii.gz")
        write_nifti(tissue, _geometry(), tmp_path / "pred" / f"ct_{n}.nii.gz")
    argv = ["evaluate", "--pred", str(tmp_path / "pred"), "--ref", str(tmp_path / "ref"), "--out", str(tmp_path / "o")]
    assert main([*argv, "--labels-from", str(one_channel_checkpoint)]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "labels tissue, 2 case(s); surfaces scored as voxels"
    assert json.loads((tmp_path / "o" / "summary.json").read_text())["regions"]["tissue"]["dice"]["mean"] == 1.0
    assert main([*argv, "--labels-from", str(one_channel_checkpoint), "--labels", "btcv"]) == 2
    assert capsys.readouterr().err.strip() == "medseg: error: give --labels or --labels-from, not both"


def test_an_organ_in_neither_map_is_not_scored_and_a_wrong_table_is_warned_of(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Organ tables: an organ absent from prediction and reference is left out of its mean (counted in
    ``empty_both``), not scored 1; a table whose labels are mostly in no map draws one warning."""
    pred_dir, ref_dir = tmp_path / "pred", tmp_path / "ref"
    write_nifti(_organs(0, (1, 2)), _geometry(), ref_dir / "a.nii.gz")
    write_nifti(_organs(0, (1, 2)), _geometry(), pred_dir / "a.nii.gz")
    write_nifti(_organs(1), _geometry(), ref_dir / "b.nii.gz")
    write_nifti(np.zeros(SHAPE, np.uint8), _geometry(), pred_dir / "b.nii.gz")
    summary = evaluate_folder(pred_dir=pred_dir, ref_dir=ref_dir, out_dir=tmp_path / "out", labels=ORGANS)
    assert summary["empty_both"] == "unscored"
    regions = summary["regions"]
    assert (regions["organ1"]["n"], regions["organ1"]["empty_both"], regions["organ1"]["dice"]["mean"]) == (2, 0, 0.5)
    # organ 3 is in case b's reference only: case a does not score it 1
    assert (regions["organ3"]["n"], regions["organ3"]["empty_both"], regions["organ3"]["dice"]["mean"]) == (1, 1, 0.0)
    scores = read_metrics_csv(tmp_path / "out" / "metrics.csv").scores
    assert sorted(scores["a"]) == ["organ1", "organ2"] and len(scores["b"]) == 5
    assert "warning" not in capsys.readouterr().err

    btcv = get_label_table("btcv")  # 13 organs, of which these maps hold values 1-5
    evaluate_folder(pred_dir=pred_dir, ref_dir=ref_dir, out_dir=tmp_path / "btcv", labels=btcv)
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warnings) == 1
    assert warnings[0].startswith("medseg: warning: 8 of the 13 labels of table btcv are in no prediction and no")


def test_brats_regions_empty_in_both_score_one(tmp_path: Path) -> None:
    """The BraTS challenges' rule: an empty region in both maps scores Dice 1 and counts."""
    geometry = _geometry()
    ref = np.zeros(SHAPE, np.uint8)
    ref[4:10, 4:10, 2:6] = 2  # oedema only: TC and ET empty in both
    write_nifti(ref, geometry, tmp_path / "ref" / "a.nii.gz")
    write_nifti(ref, geometry, tmp_path / "pred" / "a.nii.gz")
    summary = evaluate_folder(
        pred_dir=tmp_path / "pred", ref_dir=tmp_path / "ref", out_dir=tmp_path / "out", labels="brats2021"
    )
    assert summary["empty_both"] == "one"
    for region in ("WT", "TC", "ET"):
        stats = summary["regions"][region]
        assert (stats["n"], stats["empty_both"], stats["dice"]["mean"]) == (1, 0, 1.0)


def _msd_root(tmp_path: Path) -> Path:
    root = tmp_path / "Task_ct"
    for case in ("tr_0", "tr_1"):
        write_nifti(_organs(0), _geometry(), root / "labelsTr" / f"{case}.nii.gz")
    write_nifti(_organs(1), _geometry(), root / "labelsTs" / "ts_0.nii.gz")
    labels = {str(v): name for v, name in ORGANS.labels.items()}
    (root / "dataset.json").write_text(json.dumps({"name": "organs5", "labels": labels, "modality": {"0": "CT"}}))
    return root


def test_an_msd_root_is_scored_against_its_test_labels(tmp_path: Path) -> None:
    """Before: ``labelsTs/`` was ignored and the test prediction had "no reference"."""
    root = _msd_root(tmp_path)
    write_nifti(_organs(1), _geometry(), tmp_path / "pred" / "ts_0.nii.gz")
    summary = evaluate_folder(pred_dir=tmp_path / "pred", ref_dir=root, out_dir=tmp_path / "out")
    assert (summary["layout"], summary["cases"], summary["missing_predictions"]) == ("msd", ["ts_0"], [])
    assert summary["label_table"] == "organs5"


def test_an_msd_label_folder_takes_its_roots_dataset_json(tmp_path: Path) -> None:
    root = _msd_root(tmp_path)
    for case in ("tr_0", "tr_1"):
        write_nifti(_organs(0), _geometry(), tmp_path / "pred" / f"{case}.nii.gz")
    summary = evaluate_folder(pred_dir=tmp_path / "pred", ref_dir=root / "labelsTr", out_dir=tmp_path / "out")
    assert (summary["layout"], summary["label_table"], summary["cases"]) == ("flat", "organs5", ["tr_0", "tr_1"])
