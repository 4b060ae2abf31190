"""``medseg evaluate`` on class label maps: Dice and HD95 per organ, names from dataset.json or a manifest."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from medseg.cli import main
from medseg.data.manifest import build_manifest, save_manifest
from medseg.errors import MedsegInputError
from medseg.evaluation import evaluate_folder
from medseg.evaluation.metrics import image_diagonal_mm
from medseg.io import Geometry, write_nifti

SHAPE = (20, 16, 10)
SPACING = (1.5, 1.5, 3.0)
LABELS = {"0": "background", "1": "liver", "2": "spleen", "3": "pancreas"}


def _geometry() -> Geometry:
    affine = np.diag([-SPACING[0], -SPACING[1], SPACING[2], 1.0])
    return Geometry(shape=SHAPE, affine=affine)


def _reference(case: int) -> np.ndarray:
    ref = np.zeros(SHAPE, dtype=np.uint8)
    ref[2:9, 2:9, 2:8] = 1  # liver
    ref[12:17, 3:8, 3:7] = 2  # spleen
    if case == 0:
        ref[10:12, 10:14, 4:6] = 3  # pancreas only in case 0
    return ref


def _msd(tmp_path: Path) -> tuple[Path, Path]:
    """MSD reference folder with dataset.json and two cases; predictions: case 0 perfect but for an
    empty spleen, case 1 perfect (no pancreas in either)."""
    ref_dir, pred_dir = tmp_path / "Task_ct", tmp_path / "pred"
    for case in (0, 1):
        ref = _reference(case)
        write_nifti(ref, _geometry(), ref_dir / "labelsTr" / f"ct_{case}.nii.gz")
        pred = ref.copy()
        if case == 0:
            pred[pred == 2] = 0
        write_nifti(pred, _geometry(), pred_dir / f"ct_{case}.nii.gz")
    meta = {
        "name": "toy_organs",
        "modality": {"0": "CT"},
        "labels": LABELS,
        "training": [{"image": f"./imagesTr/ct_{c}.nii.gz", "label": f"./labelsTr/ct_{c}.nii.gz"} for c in (0, 1)],
        "test": [],
    }
    (ref_dir / "dataset.json").write_text(json.dumps(meta))
    return pred_dir, ref_dir


def test_auto_reads_organ_names_from_dataset_json(tmp_path: Path) -> None:
    pred_dir, ref_dir = _msd(tmp_path)
    summary = evaluate_folder(pred_dir=pred_dir, ref_dir=ref_dir, out_dir=tmp_path / "out")
    assert summary["label_table"] == "toy_organs" and summary["layout"] == "msd"
    assert list(summary["regions"]) == ["liver", "spleen", "pancreas"]
    regions = summary["regions"]
    assert regions["liver"]["dice"]["mean"] == pytest.approx(1.0)
    assert regions["liver"]["hd95"]["mean"] == pytest.approx(0.0)
    assert regions["liver"]["nsd"]["mean"] == pytest.approx(1.0)
    # an organ missed in one case: Dice 0, HD95 = image diagonal, NSD 0 there (BraTS empty-mask rule)
    assert regions["spleen"]["dice"]["mean"] == pytest.approx(0.5)
    assert regions["spleen"]["hd95"]["mean"] == pytest.approx(image_diagonal_mm(SHAPE, SPACING) / 2)
    assert regions["spleen"]["nsd"]["mean"] == pytest.approx(0.5)
    # an organ absent from reference and prediction (case 1) is not scored there: only case 0 counts
    assert (regions["pancreas"]["n"], regions["pancreas"]["empty_both"]) == (1, 1)
    assert regions["pancreas"]["dice"]["mean"] == pytest.approx(1.0)
    assert regions["pancreas"]["hd95"]["mean"] == pytest.approx(0.0)
    assert regions["pancreas"]["nsd"]["mean"] == pytest.approx(1.0)
    with (tmp_path / "out" / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["case"], r["region"]) for r in rows[:3]] == [("ct_0", "liver"), ("ct_0", "spleen"), ("ct_0", "pancreas")]


def test_labels_from_a_dataset_json_path_or_a_manifest(tmp_path: Path) -> None:
    pred_dir, ref_dir = _msd(tmp_path)
    flat = tmp_path / "flat"
    flat.mkdir()
    for path in (ref_dir / "labelsTr").iterdir():
        (flat / path.name).write_bytes(path.read_bytes())
    by_json = evaluate_folder(
        pred_dir=pred_dir, ref_dir=flat, out_dir=tmp_path / "a", labels=str(ref_dir / "dataset.json")
    )
    assert by_json["layout"] == "flat" and list(by_json["regions"]) == ["liver", "spleen", "pancreas"]

    for case in (0, 1):  # a manifest needs the images its cases list
        write_nifti(np.zeros(SHAPE, np.int16), _geometry(), ref_dir / "imagesTr" / f"ct_{case}.nii.gz")
    manifest = save_manifest(build_manifest(ref_dir, layout="msd", num_folds=2), tmp_path / "manifest.json")
    by_manifest = evaluate_folder(pred_dir=pred_dir, ref_dir=flat, out_dir=tmp_path / "b", labels=str(manifest))
    assert by_manifest["regions"] == by_json["regions"]

    nnunet_json = tmp_path / "nnunet_dataset.json"
    nnunet_json.write_text(json.dumps({"labels": {v: int(k) for k, v in LABELS.items()}, "channel_names": {}}))
    by_nnunet = evaluate_folder(pred_dir=pred_dir, ref_dir=flat, out_dir=tmp_path / "c", labels=str(nnunet_json))
    assert by_nnunet["regions"] == by_json["regions"]


def test_cli_prints_one_row_per_organ(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    pred_dir, ref_dir = _msd(tmp_path)
    argv = ["evaluate", "--pred", str(pred_dir), "--ref", str(ref_dir), "--out", str(tmp_path / "o")]
    assert main([*argv, "--labels", "auto"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "labels toy_organs, 2 case(s); surfaces scored as voxels"
    assert [line.split()[0] for line in out[2:]] == ["liver", "spleen", "pancreas"]


def test_registered_btcv_table_scores_its_13_organs(tmp_path: Path) -> None:
    pred_dir, ref_dir = _msd(tmp_path)
    summary = evaluate_folder(pred_dir=pred_dir, ref_dir=ref_dir, out_dir=tmp_path / "o", labels="btcv")
    assert len(summary["regions"]) == 13
    assert list(summary["regions"])[:3] == ["spleen", "kidney_right", "kidney_left"]


def test_label_value_outside_dataset_json_is_one_line_naming_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture, without_progress: Callable[[str], str]
) -> None:
    pred_dir, ref_dir = _msd(tmp_path)
    bad = _reference(1)
    bad[0, 0, 0] = 7
    write_nifti(bad, _geometry(), pred_dir / "ct_1.nii.gz")
    argv = ["evaluate", "--pred", str(pred_dir), "--ref", str(ref_dir), "--out", str(tmp_path / "o")]
    assert main(argv) == 2
    err = without_progress(capsys.readouterr().err).strip().splitlines()
    assert len(err) == 1
    assert str(pred_dir / "ct_1.nii.gz") in err[0] and "label values [7] are not in label table toy_organs" in err[0]
    assert not (tmp_path / "o" / "summary.json").exists()


def test_unknown_labels_argument_and_bad_dataset_json(tmp_path: Path) -> None:
    pred_dir, ref_dir = _msd(tmp_path)
    with pytest.raises(MedsegInputError, match="unknown label table 'organs9'"):
        evaluate_folder(pred_dir=pred_dir, ref_dir=ref_dir, out_dir=tmp_path / "o", labels="organs9")
    (ref_dir / "dataset.json").write_text(json.dumps({"labels": {"1": "liver"}}))
    with pytest.raises(MedsegInputError, match="no background value 0") as err:
        evaluate_folder(pred_dir=pred_dir, ref_dir=ref_dir, out_dir=tmp_path / "o")
    assert err.value.path == ref_dir / "dataset.json"


def test_references_of_a_file_list_in_nrrd(tmp_path: Path) -> None:
    """A file list's label maps are read with medseg's image reader: NRRD references score as their NIfTI."""
    import SimpleITK as sitk

    from medseg.io.itk import sitk_from_image

    pred_dir, ref_dir = _msd(tmp_path)
    expected = evaluate_folder(pred_dir=pred_dir, ref_dir=ref_dir, out_dir=tmp_path / "a")
    cases = []
    for case in (0, 1):
        sitk.WriteImage(sitk_from_image(_reference(case), _geometry()), str(tmp_path / f"ct_{case}_label.nrrd"))
        cases.append({"id": f"ct_{case}", "images": [f"ct_{case}.nrrd"], "label": f"ct_{case}_label.nrrd"})
    table = {"name": "toy_organs", "kind": "classes", "labels": LABELS}
    manifest = {"format": "medseg-manifest", "root": ".", "labels": table, "channels": ["CT"], "cases": cases}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    summary = evaluate_folder(pred_dir=pred_dir, ref_dir=tmp_path / "manifest.json", out_dir=tmp_path / "b")
    assert summary["layout"] == "manifest" and summary["regions"] == expected["regions"]
