from __future__ import annotations

import csv
import io
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib.image as mpimg
import numpy as np
import pytest

from medseg.cli import main
from medseg.errors import MedsegInputError
from medseg.evaluation import evaluate_folder, find_references, format_summary
from medseg.evaluation.files import read_metrics_csv
from medseg.evaluation.lesion_wise import LESION_RULES, lesion_wise_label_maps
from medseg.evaluation.metrics import SCORINGS, RegionScore, score_masks
from medseg.evaluation.plot import plot_scores
from medseg.io import Geometry, write_nifti
from medseg.labels import BRATS_RELEASES, LabelTable

if TYPE_CHECKING:
    from conftest import ReferenceMetrics

SHAPE = (24, 20, 12)
SPACING = (0.9, 1.1, 2.5)


def _geometry(shape: tuple[int, int, int] = SHAPE, spacing: tuple[float, ...] = SPACING) -> Geometry:
    """A non-identity grid: rotated 30 degrees about the superior axis, anisotropic, off-origin."""
    c, s = np.cos(np.pi / 6), np.sin(np.pi / 6)
    affine = np.eye(4)
    affine[:3, :3] = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]) @ np.diag(spacing)
    affine[:3, 3] = (-12.5, 30.25, -40.0)
    return Geometry(shape, affine)


def _tumour(rng: np.random.Generator, et: int, shape: tuple[int, int, int] = SHAPE) -> np.ndarray:
    """A BraTS-like label map: oedema shell around a core of necrosis and enhancing tumour."""
    centre = np.array(shape) / 2 + rng.uniform(-3, 3, size=3)
    idx = np.indices(shape).astype(float)
    r = np.sqrt(sum(((idx[i] - centre[i]) * SPACING[i]) ** 2 for i in range(3)))
    r = r + rng.normal(0, 0.8, size=shape)
    out = np.zeros(shape, np.uint8)
    out[r < 9] = 2
    out[r < 6] = et
    out[r < 3] = 1
    return out


def _make_brats(
    root: Path, release: str, n: int, seed: int = 0, *, write_preds: bool = True
) -> tuple[Path, Path, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Write a BraTS-layout reference folder and a prediction folder; return case -> (pred, ref)."""
    rel = BRATS_RELEASES[release]
    et = rel.label_table.foreground_labels[-1]
    rng = np.random.default_rng(seed)
    ref_dir, pred_dir = root / "ref", root / "pred"
    pred_dir.mkdir(parents=True, exist_ok=True)
    geometry = _geometry()
    cases = {}
    for i in range(n):
        case = rel.case_id(i + 1)
        ref = _tumour(rng, et)
        pred = np.roll(ref, rng.integers(-2, 3), axis=int(rng.integers(0, 3)))
        if i == 0:
            pred[pred == et] = 1  # no enhancing tumour predicted: ET empty in the prediction only
        write_nifti(ref, geometry, ref_dir / case / rel.file_name(case, "seg"))
        write_nifti(np.zeros(SHAPE, np.float32), geometry, ref_dir / case / rel.file_name(case, rel.modalities[3]))
        if write_preds:
            write_nifti(pred, geometry, pred_dir / f"{case}.nii.gz")
        cases[case] = (pred, ref)
    return pred_dir, ref_dir, cases


def _expected(
    metrics: type[ReferenceMetrics],
    cases: dict[str, tuple[np.ndarray, np.ndarray]],
    regions: dict[str, tuple[int, ...]],
    tolerance: float = 1.0,
) -> dict:
    """Case -> region -> (Dice, HD95, NSD) of :class:`ReferenceMetrics`."""
    return {
        case: {name: metrics.scores(np.isin(p, v), np.isin(r, v), SPACING, tolerance) for name, v in regions.items()}
        for case, (p, r) in cases.items()
    }


@pytest.mark.parametrize("release", ["2021", "2023"])
def test_evaluate_brats_folder_matches_independent_metrics(
    tmp_path: Path, release: str, reference_metrics: type[ReferenceMetrics]
) -> None:
    pred_dir, ref_dir, cases = _make_brats(tmp_path, release, n=3)
    out = tmp_path / "eval"
    # the reference counts surface voxels: score as MONAI does (BraTS tables default to surface elements)
    summary = evaluate_folder(pred_dir=pred_dir, ref_dir=ref_dir, out_dir=out, scoring="voxels")

    table = BRATS_RELEASES[release].label_table
    assert summary["label_table"] == table.name
    assert summary["layout"] == f"brats{release}"
    assert summary["cases"] == sorted(cases)
    assert summary["missing_predictions"] == []
    expected = _expected(reference_metrics, cases, table.evaluation_sets())

    with (out / "metrics.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["case", "region", "dice", "hd95", "nsd", "nsd_tolerance_mm"]
    assert [(r["case"], r["region"]) for r in rows] == [(c, reg) for c in sorted(cases) for reg in ("WT", "TC", "ET")]
    for row in rows:
        dice, hd, nsd = expected[row["case"]][row["region"]]
        assert float(row["dice"]) == pytest.approx(dice, abs=1e-5)
        assert float(row["hd95"]) == pytest.approx(hd, abs=1e-4)
        assert float(row["nsd"]) == pytest.approx(nsd, abs=1e-5)
        assert row["nsd_tolerance_mm"] == "1"
    # the first case has no predicted ET: Dice 0, the image diagonal in mm, NSD 0
    first = sorted(cases)[0]
    diagonal = float(np.linalg.norm(np.array(SHAPE) * np.array(SPACING)))
    assert expected[first]["ET"] == (0.0, pytest.approx(diagonal), 0.0)
    assert 0.0 < expected[sorted(cases)[1]]["WT"][2] < 1.0  # a shifted map: part of its surface is off

    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk == summary
    assert summary["nsd_tolerance_mm"] == 1.0
    for region in ("WT", "TC", "ET"):
        stats = summary["regions"][region]
        assert stats["n"] == 3
        for index, metric in enumerate(("dice", "hd95", "nsd")):
            values = [expected[c][region][index] for c in cases]
            assert stats[metric]["mean"] == pytest.approx(np.mean(values), abs=1e-4)
            assert stats[metric]["std"] == pytest.approx(np.std(values), abs=1e-4)
            assert stats[metric]["median"] == pytest.approx(np.median(values), abs=1e-4)
    metrics = read_metrics_csv(out / "metrics.csv")
    assert metrics.nsd_tolerance_mm == 1.0
    assert metrics.scores[first]["ET"] == (0.0, pytest.approx(diagonal, abs=1e-4), 0.0)


@pytest.mark.parametrize(
    ("release", "scoring", "one_empty"), [("2021", "elements", None), ("2023", "brats2023", 374.0)]
)
def test_brats_tables_score_surface_elements_with_their_years_constant(
    tmp_path: Path, release: str, scoring: str, one_empty: float | None
) -> None:
    pred_dir, ref_dir, cases = _make_brats(tmp_path, release, n=2)
    out = tmp_path / "eval"
    summary = evaluate_folder(pred_dir=pred_dir, ref_dir=ref_dir, out_dir=out, lesion_rules="GLI")
    assert (summary["scoring"], summary["surface"], summary["one_empty_hd95_mm"]) == (scoring, "elements", one_empty)
    table = BRATS_RELEASES[release].label_table
    chosen = SCORINGS[scoring]
    scores = read_metrics_csv(out / "metrics.csv").scores
    for case, (pred, ref) in cases.items():
        for region, values in table.evaluation_sets().items():
            expected = score_masks(np.isin(pred, values), np.isin(ref, values), spacing=SPACING, scoring=chosen)
            assert scores[case][region].hd95 == pytest.approx(expected.hd95, abs=1e-5)
            assert scores[case][region].nsd == pytest.approx(expected.nsd, abs=1e-5)
    # the first case predicts no ET: whole-image and lesion-wise HD95 take the same constant
    first = sorted(cases)[0]
    constant = one_empty if one_empty is not None else float(np.linalg.norm(np.array(SHAPE) * np.array(SPACING)))
    assert scores[first]["ET"].hd95 == pytest.approx(constant, abs=1e-5)
    with (out / "lesion_metrics.csv").open(newline="") as f:
        lesion_rows = {(r["case"], r["region"]): r for r in csv.DictReader(f)}
    assert float(lesion_rows[(first, "ET")]["hd95"]) == pytest.approx(constant, abs=1e-5)

    with pytest.raises(MedsegInputError, match="unknown scoring 'hd'; choose one of voxels, elements, brats2023"):
        evaluate_folder(pred_dir=pred_dir, ref_dir=ref_dir, out_dir=tmp_path / "bad", scoring="hd")
    assert not (tmp_path / "bad").exists()


def _flat(tmp_path: Path, et: int) -> tuple[Path, Path]:
    """References as a flat folder of <case>.nii.gz: the layout does not name the release."""
    rng = np.random.default_rng(3)
    ref_dir, pred_dir = tmp_path / "ref", tmp_path / "pred"
    for case in ("a", "b"):
        ref = _tumour(rng, et)
        write_nifti(ref, _geometry(), ref_dir / f"{case}.nii.gz")
        write_nifti(ref, _geometry(), pred_dir / f"{case}.nii.gz")
    return pred_dir, ref_dir


@pytest.mark.parametrize("et", [4, 3])
def test_auto_labels_refuse_a_flat_folder_that_several_tables_fit(tmp_path: Path, et: int) -> None:
    """A flat folder's names say nothing: 1, 2, 4 fit BraTS 2021 (4 ET) and 2024 GLI (4 RC); 1, 2, 3 fit
    BraTS 2023 (1 NCR) and 2024 PED (1 ET). auto asks for the name rather than guess."""
    pred_dir, ref_dir = _flat(tmp_path, et)
    assert find_references(ref_dir).label_table is None
    with pytest.raises(MedsegInputError, match=r"cannot tell the label table.*name the table") as err:
        evaluate_folder(pred_dir=pred_dir, ref_dir=ref_dir, out_dir=tmp_path / "out")
    assert ("brats2021" in str(err.value)) == (et == 4) and "brats2024-" in str(err.value)
    table = "brats2021" if et == 4 else "brats2023"
    summary = evaluate_folder(pred_dir=pred_dir, ref_dir=ref_dir, out_dir=tmp_path / "out", labels=table)
    assert summary["label_table"] == table and summary["layout"] == "flat"
    assert summary["regions"]["ET"]["dice"]["mean"] == pytest.approx(1.0)


def _write_2023_named(root: Path, case: str, ref: np.ndarray, pred: np.ndarray) -> None:
    write_nifti(ref, _geometry(), root / "ref" / case / f"{case}-seg.nii.gz")
    write_nifti(pred, _geometry(), root / "pred" / f"{case}.nii.gz")


def test_auto_labels_of_2023_style_names_follow_the_case_ids_and_values(
    tmp_path: Path, reference_metrics: type[ReferenceMetrics]
) -> None:
    rng = np.random.default_rng(5)
    ref = _tumour(rng, 3)
    ref[:4, :4, :4] = 4  # a resection cavity, outside the tumour
    pred = np.roll(ref, 1, axis=0)
    _write_2023_named(tmp_path / "gli", "BraTS-GLI-00001-000", ref, pred)
    refs = find_references(tmp_path / "gli" / "ref")
    assert refs.label_table is None and refs.label_candidates == ("brats2023", "brats2024-gli")
    summary = evaluate_folder(
        pred_dir=tmp_path / "gli" / "pred", ref_dir=tmp_path / "gli" / "ref", out_dir=tmp_path / "o1"
    )
    assert summary["label_table"] == "brats2024-gli"
    assert list(summary["regions"]) == ["WT", "TC", "ET", "RC", "NETC", "SNFH"]
    for region, values in {"WT": (1, 2, 3), "RC": (4,), "NETC": (1,), "SNFH": (2,)}.items():
        dice = reference_metrics.dice(np.isin(pred, values), np.isin(ref, values))
        assert summary["regions"][region]["dice"]["mean"] == pytest.approx(dice, abs=1e-5)
    # PED cases labelled 1, 2, 3: BraTS 2023's (1 NCR) or 2024's (1 ET)? auto asks
    ped = _tumour(rng, 3)
    _write_2023_named(tmp_path / "ped", "BraTS-PED-00001-000", ped, ped)
    with pytest.raises(MedsegInputError, match="brats2023, brats2024-ped all fit") as err:
        evaluate_folder(pred_dir=tmp_path / "ped" / "pred", ref_dir=tmp_path / "ped" / "ref", out_dir=tmp_path / "o2")
    assert err.value.path is not None
    named = evaluate_folder(
        pred_dir=tmp_path / "ped" / "pred",
        ref_dir=tmp_path / "ped" / "ref",
        out_dir=tmp_path / "o2",
        labels="brats2024-ped",
    )
    assert list(named["regions"]) == ["WT", "TC", "ET", "CC", "NETC", "ED"]
    assert named["regions"]["CC"]["dice"]["mean"] == pytest.approx(1.0)


def test_explicit_labels_override_and_are_checked(tmp_path: Path) -> None:
    pred_dir, ref_dir = _flat(tmp_path, et=4)
    with pytest.raises(MedsegInputError, match=r"label values \[4\] are not in label table brats2023") as err:
        evaluate_folder(pred_dir=pred_dir, ref_dir=ref_dir, out_dir=tmp_path / "out", labels="brats2023")
    assert err.value.path == ref_dir / "a.nii.gz"
    summary = evaluate_folder(pred_dir=pred_dir, ref_dir=ref_dir, out_dir=tmp_path / "out", labels="brats2021")
    assert summary["label_table"] == "brats2021"
    with pytest.raises(MedsegInputError, match="unknown label table"):
        evaluate_folder(pred_dir=pred_dir, ref_dir=ref_dir, out_dir=tmp_path / "out2", labels="brats2099")


def test_missing_prediction_is_scored_as_empty_with_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture, without_progress: Callable[[str], str]
) -> None:
    pred_dir, ref_dir, cases = _make_brats(tmp_path, "2021", n=3)
    missing = sorted(cases)[1]
    (pred_dir / f"{missing}.nii.gz").unlink()
    summary = evaluate_folder(pred_dir=pred_dir, ref_dir=ref_dir, out_dir=tmp_path / "out")
    err = without_progress(capsys.readouterr().err)
    assert err.count("\n") == 1 and "warning" in err and missing in err
    assert summary["missing_predictions"] == [missing]
    assert summary["cases"] == sorted(cases)
    scores = read_metrics_csv(tmp_path / "out" / "metrics.csv").scores
    diagonal = float(np.linalg.norm(np.array(SHAPE) * np.array(SPACING)))
    for region in ("WT", "TC", "ET"):
        assert scores[missing][region].dice == 0.0
        assert scores[missing][region].hd95 == pytest.approx(diagonal, abs=1e-4)
        assert scores[missing][region].nsd == 0.0
    assert summary["regions"]["WT"]["n"] == 3
    assert "1 without prediction" in format_summary(summary)


def _bad_input(tmp_path: Path, kind: str) -> tuple[Path, Path, Path]:
    """Build one kind of bad input; return (pred_dir, ref_dir, the file the error must name)."""
    pred_dir, ref_dir, cases = _make_brats(tmp_path, "2021", n=2)
    case = sorted(cases)[1]
    pred_path = pred_dir / f"{case}.nii.gz"
    pred, _ = cases[case]
    if kind == "shape":
        write_nifti(pred[:, :, :-1], _geometry((SHAPE[0], SHAPE[1], SHAPE[2] - 1)), pred_path)
        return pred_dir, ref_dir, pred_path
    if kind == "affine":
        geometry = _geometry()
        affine = geometry.affine.copy()
        affine[:3, 3] += (0.0, 0.5, 0.0)
        write_nifti(pred, Geometry(SHAPE, affine), pred_path)
        return pred_dir, ref_dir, pred_path
    if kind == "values":
        bad = pred.copy()
        bad[0, 0, 0] = 3  # a 2023 label in a 2021 dataset
        write_nifti(bad, _geometry(), pred_path)
        return pred_dir, ref_dir, pred_path
    if kind == "orphan":
        orphan = pred_dir / "BraTS2021_09999.nii.gz"
        write_nifti(pred, _geometry(), orphan)
        return pred_dir, ref_dir, orphan
    if kind == "no_predictions":
        for p in pred_dir.iterdir():
            p.unlink()
        return pred_dir, ref_dir, pred_dir
    if kind == "no_references":
        empty = tmp_path / "empty_ref"
        empty.mkdir()
        return pred_dir, empty, empty
    if kind == "corrupt":
        pred_path.write_bytes(b"not a nifti file")
        return pred_dir, ref_dir, pred_path
    if kind == "looped_prediction":  # not taken for a missing prediction, scored as empty
        pred_path.unlink()
        pred_path.symlink_to(pred_path.name)
        return pred_dir, ref_dir, pred_path
    if kind == "dangling_reference":  # not taken for a case without a reference
        seg = ref_dir / case / BRATS_RELEASES["2021"].file_name(case, "seg")
        seg.unlink()
        seg.symlink_to("moved_away.nii.gz")
        return pred_dir, ref_dir, seg
    raise AssertionError(kind)


BAD_KINDS = {
    "shape": r"not on the grid of .*: shape \(24, 20, 11\), not \(24, 20, 12\)",
    "affine": r"not on the grid of .*: origin \(LPS\)",
    "values": r"label values \[3\] are not in label table brats2021",
    "orphan": "prediction has no reference",
    "no_predictions": "no predictions",
    "no_references": "no reference label maps found",
    "corrupt": "cannot read NIfTI",
    "looped_prediction": "file not found: a symbolic link that loops",
    "dangling_reference": "file not found: a symbolic link to moved_away.nii.gz, which does not exist",
}


@pytest.mark.parametrize("kind", list(BAD_KINDS))
def test_bad_input_names_the_file_and_writes_nothing(tmp_path: Path, kind: str) -> None:
    pred_dir, ref_dir, culprit = _bad_input(tmp_path, kind)
    out = tmp_path / "out"
    with pytest.raises(MedsegInputError, match=BAD_KINDS[kind]) as err:
        evaluate_folder(pred_dir=pred_dir, ref_dir=ref_dir, out_dir=out)
    assert err.value.path == culprit
    assert str(culprit) in str(err.value)
    assert not out.exists()


def test_mixed_brats_releases_are_rejected(tmp_path: Path) -> None:
    pred_dir, ref_dir, _ = _make_brats(tmp_path, "2021", n=1)
    rel = BRATS_RELEASES["2023"]
    case = rel.case_id(1)
    write_nifti(np.zeros(SHAPE, np.uint8), _geometry(), ref_dir / case / rel.file_name(case, "seg"))
    with pytest.raises(MedsegInputError, match="mixes BraTS releases 2021 and 2023"):
        evaluate_folder(pred_dir=pred_dir, ref_dir=ref_dir, out_dir=tmp_path / "out")


def test_class_label_maps_in_msd_layout(tmp_path: Path, reference_metrics: type[ReferenceMetrics]) -> None:
    table = LabelTable(name="organs", labels={0: "background", 1: "liver", 2: "spleen"}, kind="classes")
    ref = np.zeros(SHAPE, np.uint8)
    ref[2:12, 2:12, 2:8] = 1
    ref[14:22, 12:18, 4:10] = 2
    pred = ref.copy()
    pred[14:22, 12:18, 4:10] = 0
    pred[15:21, 13:17, 5:9] = 2
    write_nifti(ref, _geometry(), tmp_path / "msd" / "labelsTr" / "ct_001.nii.gz")
    write_nifti(pred, _geometry(), tmp_path / "pred" / "ct_001.nii.gz")
    summary = evaluate_folder(
        pred_dir=tmp_path / "pred", ref_dir=tmp_path / "msd", out_dir=tmp_path / "out", labels=table
    )
    assert summary["layout"] == "msd"
    assert list(summary["regions"]) == ["liver", "spleen"]
    assert summary["regions"]["liver"]["dice"]["mean"] == pytest.approx(1.0)
    dice, hd, nsd = reference_metrics.scores(pred == 2, ref == 2, SPACING)
    assert summary["regions"]["spleen"]["dice"]["mean"] == pytest.approx(dice, abs=1e-5)
    assert summary["regions"]["spleen"]["hd95"]["mean"] == pytest.approx(hd, abs=1e-4)
    assert summary["regions"]["spleen"]["nsd"]["mean"] == pytest.approx(nsd, abs=1e-5)


def test_format_summary_is_an_aligned_table(tmp_path: Path) -> None:
    pred_dir, ref_dir, _ = _make_brats(tmp_path, "2023", n=2)
    text = format_summary(evaluate_folder(pred_dir=pred_dir, ref_dir=ref_dir, out_dir=tmp_path / "out"))
    lines = text.splitlines()
    assert lines[0] == "labels brats2023, 2 case(s); surfaces scored as brats2023"
    assert lines[1].split()[:2] == ["region", "Dice"]
    assert [line.split()[0] for line in lines[2:]] == ["WT", "TC", "ET"]
    assert len({len(line) for line in lines[1:]}) == 1  # columns aligned
    assert all(" ± " in line for line in lines[2:])


def test_cli_evaluate_in_process(
    tmp_path: Path, capsys: pytest.CaptureFixture, without_progress: Callable[[str], str]
) -> None:
    pred_dir, ref_dir, _ = _make_brats(tmp_path, "2021", n=2)
    out = tmp_path / "out"
    assert main(["evaluate", "--pred", str(pred_dir), "--ref", str(ref_dir), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "WT" in captured.out and "HD95" in captured.out and "NSD 1 mm" in captured.out
    assert (out / "metrics.csv").is_file() and (out / "summary.json").is_file()
    assert mpimg.imread(out / "metrics.png").shape[:2] == (400, 1020)  # 4 inches high, 3 + 2.4 per region wide

    bad_pred, bad_ref, culprit = _bad_input(tmp_path / "bad", "affine")
    bad_out = tmp_path / "bad_out"
    code = main(["evaluate", "--pred", str(bad_pred), "--ref", str(bad_ref), "--out", str(bad_out)])
    captured = capsys.readouterr()
    assert code == 2
    assert without_progress(captured.err).count("\n") == 1
    assert str(culprit) in captured.err and "not on the grid of" in captured.err
    assert not bad_out.exists()


def test_cli_evaluate_nsd_tolerance(
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    without_progress: Callable[[str], str],
    reference_metrics: type[ReferenceMetrics],
) -> None:
    pred_dir, ref_dir, cases = _make_brats(tmp_path, "2023", n=2)
    out = tmp_path / "out"
    argv = ["evaluate", "--pred", str(pred_dir), "--ref", str(ref_dir), "--scoring", "voxels", "--out", str(out)]
    assert main([*argv, "--nsd-tolerance", "0.5"]) == 0
    assert without_progress(capsys.readouterr().err) == (
        "medseg: warning: NSD tolerance 0.5 mm is below the voxel size of 2 case(s) (smallest voxel side 0.9 mm):"
        " only surface voxels that coincide count as agreeing; consider an --nsd-tolerance of at least the voxel"
        " size\n"
    )
    assert main([*argv, "--nsd-tolerance", "2.5"]) == 0
    captured = capsys.readouterr()
    assert "NSD 2.5 mm" in captured.out and without_progress(captured.err) == ""
    metrics = read_metrics_csv(out / "metrics.csv")
    assert metrics.nsd_tolerance_mm == 2.5
    assert json.loads((out / "summary.json").read_text())["nsd_tolerance_mm"] == 2.5
    regions = BRATS_RELEASES["2023"].label_table.evaluation_sets()
    expected = _expected(reference_metrics, cases, regions, tolerance=2.5)
    at_one_mm = _expected(reference_metrics, cases, regions, tolerance=1.0)
    for case, regions in metrics.scores.items():
        for region, score in regions.items():
            assert score.nsd == pytest.approx(expected[case][region][2], abs=1e-5)
    assert any(expected[c]["WT"][2] != pytest.approx(at_one_mm[c]["WT"][2]) for c in cases)

    for bad in ("-1", "nan"):
        assert main([*argv[:-1], str(tmp_path / f"bad{bad}"), "--nsd-tolerance", bad]) == 2
        err = capsys.readouterr().err
        assert err == f"medseg: error: the NSD tolerance must be a finite number of mm >= 0, got {float(bad)}\n"
        assert not (tmp_path / f"bad{bad}").exists()


def test_cli_evaluate_lesion_wise(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    pred_dir, ref_dir, cases = _make_brats(tmp_path, "2023", n=3)
    speck = np.zeros(SHAPE, np.uint8)
    speck[0, 0, 0] = 2  # a one-voxel oedema far from the tumour: a WT false positive
    first = sorted(cases)[0]
    write_nifti(np.maximum(cases[first][0], speck), _geometry(), pred_dir / f"{first}.nii.gz")
    out = tmp_path / "out"
    argv = ["evaluate", "--pred", str(pred_dir), "--ref", str(ref_dir), "--out", str(out)]
    assert main([*argv, "--lesion-wise", "GLI"]) == 0
    printed = capsys.readouterr().out.splitlines()

    table = BRATS_RELEASES["2023"].label_table
    rules = LESION_RULES["GLI"]
    with (out / "lesion_metrics.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["case"], r["region"]) for r in rows] == [(c, reg) for c in sorted(cases) for reg in ("WT", "TC", "ET")]
    for row in rows:
        pred, ref = cases[row["case"]]
        if row["case"] == first:
            pred = np.maximum(pred, speck)
        expected = lesion_wise_label_maps(pred, ref, table=table, spacing=SPACING, rules=rules)[row["region"]]
        assert float(row["dice"]) == pytest.approx(expected.dice, abs=1e-6)
        assert float(row["hd95"]) == pytest.approx(expected.hd95, abs=1e-5)
        assert (int(row["tp"]), int(row["fn"]), int(row["fp"])) == (expected.tp, expected.fn, expected.fp)
        assert float(row["f1"]) == pytest.approx(2 * expected.tp / (2 * expected.tp + expected.fp + expected.fn))
        assert row["rules"] == "GLI"
    by_key = {(r["case"], r["region"]): r for r in rows}
    assert by_key[(first, "WT")]["fp"] == "1"  # the speck
    assert by_key[(first, "ET")]["fn"] == "1"  # this case's prediction has no ET at all

    lesion_wise = json.loads((out / "summary.json").read_text())["lesion_wise"]
    assert (lesion_wise["rules"], lesion_wise["dilation"], lesion_wise["min_volume_mm3"]) == ("GLI", 3, 50.0)
    for region, stats in lesion_wise["regions"].items():
        region_rows = [r for r in rows if r["region"] == region]
        assert stats["n"] == 3
        assert stats["dice"]["mean"] == pytest.approx(np.mean([float(r["dice"]) for r in region_rows]), abs=1e-5)
        assert stats["fp"] == sum(int(r["fp"]) for r in region_rows)
        assert stats["f1"]["mean"] == pytest.approx(np.mean([float(r["f1"]) for r in region_rows]), abs=1e-5)
    assert "lesion-wise, BraTS GLI rules (dilation 3, lesions > 50 mm³)" in printed
    assert printed[-4].split() == [
        "region",
        "Dice",
        "mean",
        "±",
        "sd",
        "HD95",
        "mm",
        "mean",
        "±",
        "sd",
        "F1",
        "mean",
        "±",
        "sd",
        "TP",
        "FN",
        "FP",
    ]

    # evaluating again without lesion-wise scores removes the earlier run's file
    assert main(argv) == 0
    assert not (out / "lesion_metrics.csv").exists()
    assert "lesion_wise" not in json.loads((out / "summary.json").read_text())
    capsys.readouterr()
    assert main([*argv, "--lesion-wise", "GBM"]) == 2
    assert (
        capsys.readouterr().err == "medseg: error: unknown lesion rules 'GBM'; choose one of GLI, SSA, MEN, PED, MET,"
        " brats2024-gli, brats2024-ped, brats2024-met, brats2024-men-rt, brats2025-met, brats2025-gli, brats2025-ped,"
        " brats2025-men, brats2025-men-rt, brats2025-goat\n"
    )


def test_worker_processes_give_the_same_files(
    tmp_path: Path, capsys: pytest.CaptureFixture, without_progress: Callable[[str], str]
) -> None:
    pred_dir, ref_dir, _ = _make_brats(tmp_path, "2021", n=3)
    outputs = {}
    for workers in (1, 2):
        out = tmp_path / f"out{workers}"
        argv = ["evaluate", "--pred", str(pred_dir), "--ref", str(ref_dir), "--out", str(out)]
        assert main([*argv, "--lesion-wise", "GLI", "--workers", str(workers)]) == 0
        outputs[workers] = [(out / name).read_text() for name in ("metrics.csv", "lesion_metrics.csv", "summary.json")]
    assert outputs[1] == outputs[2]

    bad_pred, bad_ref, culprit = _bad_input(tmp_path / "bad", "affine")
    capsys.readouterr()
    argv = ["evaluate", "--pred", str(bad_pred), "--ref", str(bad_ref), "--out", str(tmp_path / "bad_out")]
    assert main([*argv, "--workers", "2"]) == 2  # raised in a worker, reported as in this process
    err = without_progress(capsys.readouterr().err)  # the other worker's case may be done first
    assert err.count("\n") == 1 and str(culprit) in err and "origin" in err
    assert main([*argv, "--workers", "0"]) == 2
    assert capsys.readouterr().err == "medseg: error: workers must be >= 1, got 0\n"


def test_score_plot_draws_the_scores_one_box_per_region(tmp_path: Path) -> None:
    spleen = RegionScore(0.8, 4.0, 0.7)
    good = {f"case{i}": {"liver": RegionScore(0.9 + i / 100, 2.0 + i, 0.95), "spleen": spleen} for i in range(5)}
    bad = {case: {"liver": RegionScore(0.2, 40.0, 0.95), "spleen": spleen} for case in good}
    worse_nsd = {case: {"liver": RegionScore(0.9, 2.0, 0.1), "spleen": spleen} for case in good}
    same_nsd = {case: {"liver": RegionScore(0.9, 2.0, 0.95), "spleen": spleen} for case in good}
    a, b, c, d = (
        mpimg.imread(plot_scores({name: scores}, tmp_path / f"{name}.png", nsd_tolerance_mm=1.0))
        for name, scores in (("good", good), ("bad", bad), ("worse_nsd", worse_nsd), ("same_nsd", same_nsd))
    )
    assert a.shape[:2] == b.shape[:2] == (400, 780)  # two regions
    assert np.abs(a - b).sum() > 100  # the liver's box and dots moved
    # only the right-hand third (the NSD panel) differs when only the NSD does
    diff = np.abs(c - d).sum(axis=(0, 2))
    assert diff[: 2 * 780 // 3].sum() == 0 and diff[2 * 780 // 3 :].sum() > 100


def test_scoring_shows_progress_on_a_terminal(tmp_path: Path, terminal_stderr: Callable[[], io.StringIO]) -> None:
    pred_dir, ref_dir, _ = _make_brats(tmp_path, "2021", n=2)
    terminal = terminal_stderr()
    evaluate_folder(pred_dir=pred_dir, ref_dir=ref_dir, out_dir=tmp_path / "out")
    assert "scoring: 100%" in terminal.getvalue() and "2/2" in terminal.getvalue()


def test_only_predicted_leaves_references_without_prediction_out(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    pred_dir, ref_dir, cases = _make_brats(tmp_path, "2021", n=3)
    missing = sorted(cases)[1]
    (pred_dir / f"{missing}.nii.gz").unlink()
    out = tmp_path / "out"
    code = main(["evaluate", "--pred", str(pred_dir), "--ref", str(ref_dir), "--out", str(out), "--only-predicted"])
    assert code == 0
    captured = capsys.readouterr()
    assert "medseg: note: scoring the 2 predicted case(s); 1 reference(s) without a prediction are left out" in (
        captured.err
    )
    assert "2 case(s); 1 reference(s) without prediction left out" in captured.out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["cases"] == [c for c in sorted(cases) if c != missing]
    assert summary["missing_predictions"] == [] and summary["left_out"] == [missing]
    assert set(read_metrics_csv(out / "metrics.csv").scores) == set(summary["cases"])
    assert summary["regions"]["WT"]["n"] == 2
    # the same scores as an evaluation of a reference folder that holds only the predicted cases
    alone = tmp_path / "alone"
    shutil.copytree(ref_dir, alone, ignore=shutil.ignore_patterns(f"{missing}*"))
    full = evaluate_folder(pred_dir=pred_dir, ref_dir=alone, out_dir=tmp_path / "out_alone")
    assert full["regions"] == summary["regions"]


def test_a_full_disk_names_the_file_and_keeps_the_others(
    tmp_path: Path, capsys: pytest.CaptureFixture, full_disk: Callable[..., None]
) -> None:
    pred_dir, ref_dir, _ = _make_brats(tmp_path, "2021", n=2)
    out = tmp_path / "out"
    full_disk("metrics.csv")
    assert main(["evaluate", "--pred", str(pred_dir), "--ref", str(ref_dir), "--out", str(out)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[-1] == (
        f"medseg: error: {out / 'metrics.csv'}: cannot write: No space left on device;"
        " written: metrics.png, summary.json"
    )
    assert "Traceback" not in "".join(err)
    assert sorted(p.name for p in out.iterdir()) == ["metrics.png", "summary.json"]
    assert json.loads((out / "summary.json").read_text())["cases"] == sorted(p.name[:-7] for p in pred_dir.iterdir())


def test_file_names_that_are_not_utf8_are_scored(tmp_path: Path) -> None:
    pred_dir, ref_dir = _flat(tmp_path, et=4)
    latin1 = os.fsdecode(b"caf\xe9.nii.gz")
    for folder in (pred_dir, ref_dir):
        (folder / "a.nii.gz").rename(folder / latin1)
    summary = evaluate_folder(pred_dir=pred_dir, ref_dir=ref_dir, out_dir=tmp_path / "out", labels="brats2021")
    assert summary["cases"] == ["b", "caf\udce9"]
    rows = list(csv.DictReader((tmp_path / "out" / "metrics.csv").open(encoding="utf-8")))
    assert sorted({row["case"] for row in rows}) == ["b", "caf\\udce9"]  # the byte as a backslash escape
