"""medseg compare: paired per-region comparison of evaluation folders, p-values checked against an exact
Wilcoxon signed-rank test computed here by enumerating every sign assignment."""

from __future__ import annotations

import csv
import itertools
import shutil
from pathlib import Path

import matplotlib.image as mpimg
import nibabel as nib
import numpy as np
import pytest

from medseg.cli import main
from medseg.errors import MedsegInputError
from medseg.evaluation.comparison import compare_evaluations, distinct_names

REGIONS = ("liver", "spleen")


Scores = dict[str, dict[str, tuple[float, float, float]]]


def _write_metrics(folder: Path, scores: Scores, tolerance: float = 1.0) -> Path:
    """A ``metrics.csv`` as ``medseg evaluate`` writes it: case -> region -> (dice, hd95, nsd)."""
    folder.mkdir(parents=True)
    with (folder / "metrics.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["case", "region", "dice", "hd95", "nsd", "nsd_tolerance_mm"])
        for case, regions in scores.items():
            for region, values in regions.items():
                writer.writerow([case, region, *(f"{v:.6f}" for v in values), tolerance])
    return folder


def _exact_wilcoxon(differences: np.ndarray) -> float:
    """Two-sided exact signed-rank p-value for differences without zeros or tied magnitudes."""
    ranks = np.argsort(np.argsort(np.abs(differences))) + 1
    observed = ranks[differences > 0].sum()
    signs = np.array(list(itertools.product([0, 1], repeat=len(ranks))))  # every assignment of + to the ranks
    sums = signs @ ranks
    return min(1.0, 2 * min(np.mean(sums <= observed), np.mean(sums >= observed)))


def _random_scores(rng: np.random.Generator, cases: int) -> Scores:
    return {
        f"case{i}": {
            r: (float(rng.uniform(0.5, 0.95)), float(rng.uniform(1, 30)), float(rng.uniform(0.3, 0.9))) for r in REGIONS
        }
        for i in range(cases)
    }


def test_means_differences_and_p_values(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    scores = {name: _random_scores(rng, 7) for name in ("a", "b", "c")}
    folders = [_write_metrics(tmp_path / name, s) for name, s in scores.items()]
    rows = compare_evaluations(eval_dirs=folders, out_dir=tmp_path / "out")

    assert [(r.region, r.metric, r.model) for r in rows] == [
        (region, metric, model) for region in REGIONS for metric in ("dice", "hd95", "nsd") for model in "abc"
    ]
    for row in rows:
        column = ("dice", "hd95", "nsd").index(row.metric)
        values = {m: np.array([round(s[c][row.region][column], 6) for c in s]) for m, s in scores.items()}
        difference = values[row.model] - values["a"]
        assert row.mean == pytest.approx(values[row.model].mean(), abs=1e-9)
        assert row.difference == pytest.approx(difference.mean(), abs=1e-9)
        if row.model == "a":
            assert row.p_value is None and row.difference == 0
        else:
            assert row.p_value == pytest.approx(_exact_wilcoxon(difference), abs=1e-12)
    assert min(r.p_value for r in rows if r.p_value is not None) < 0.999  # not all trivially 1

    written = list(csv.DictReader((tmp_path / "out" / "comparison.csv").open()))
    assert len(written) == len(rows) and {w["cases"] for w in written} == {"7"}
    assert float(written[1]["p_value"]) == pytest.approx(rows[1].p_value, rel=1e-5) and written[0]["p_value"] == ""
    assert mpimg.imread(tmp_path / "out" / "comparison.png").shape[0] == 400


def test_equal_scores_have_p_value_one(tmp_path: Path) -> None:
    scores = _random_scores(np.random.default_rng(1), 4)
    rows = compare_evaluations(
        eval_dirs=[_write_metrics(tmp_path / "x" / "eval", scores), _write_metrics(tmp_path / "y" / "eval", scores)],
        out_dir=tmp_path / "out",
    )
    assert {r.model for r in rows} == {"x/eval", "y/eval"}  # the folder names alone would repeat
    assert all(r.p_value == 1.0 and r.difference == 0 for r in rows if r.model == "y/eval")


def test_distinct_names_grow_until_they_differ(tmp_path: Path) -> None:
    assert distinct_names([tmp_path / "a", tmp_path / "b"]) == ["a", "b"]
    assert distinct_names([tmp_path / "r1" / "eval", tmp_path / "r2" / "eval"]) == ["r1/eval", "r2/eval"]
    with pytest.raises(MedsegInputError, match="given twice"):
        distinct_names([tmp_path / "a", tmp_path / "a"])


def _write_lesions(folder: Path, scores: Scores, rules: str = "GLI") -> None:
    """A ``lesion_metrics.csv`` beside a folder's ``metrics.csv``: its Dice and HD95 as lesion-wise scores."""
    with (folder / "lesion_metrics.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["case", "region", "dice", "hd95", "tp", "fn", "fp", "rules"])
        for case, regions in scores.items():
            for region, (dice, hd95, _) in regions.items():
                writer.writerow([case, region, f"{dice:.6f}", f"{hd95:.6f}", 1, 0, 0, rules])


def test_lesion_wise_scores_are_compared_when_every_folder_has_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = np.random.default_rng(3)
    scores = {name: _random_scores(rng, 6) for name in ("a", "b")}
    folders = [_write_metrics(tmp_path / name, s) for name, s in scores.items()]
    _write_lesions(folders[0], scores["a"])
    rows = compare_evaluations(eval_dirs=folders, out_dir=tmp_path / "out")
    assert {r.metric for r in rows} == {"dice", "hd95", "nsd"}
    assert capsys.readouterr().err == (
        f"medseg: warning: lesion-wise scores not compared: {folders[1]} has no lesion_metrics.csv\n"
    )

    _write_lesions(folders[1], scores["b"])
    rows = compare_evaluations(eval_dirs=folders, out_dir=tmp_path / "out")
    lesion_rows = [r for r in rows if r.metric.startswith("lesion_")]
    assert [(r.region, r.metric, r.model) for r in lesion_rows] == [
        (region, metric, model) for region in REGIONS for metric in ("lesion_dice", "lesion_hd95") for model in "ab"
    ]
    plain = {(r.region, r.metric, r.model): r for r in rows if not r.metric.startswith("lesion_")}
    for r in lesion_rows:  # the lesion files hold the same numbers as the metrics files
        same = plain[(r.region, r.metric.removeprefix("lesion_"), r.model)]
        assert (r.mean, r.difference, r.p_value) == (same.mean, same.difference, same.p_value)

    _write_lesions(folders[1], scores["b"], rules="MET")
    assert main(["compare", *map(str, folders), "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err == (
        f"medseg: error: {folders[1] / 'lesion_metrics.csv'}: lesion-wise scores under MET rules,"
        f" {folders[0]} under GLI\n"
    )


def test_bad_requests_are_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(2)
    scores = _random_scores(rng, 3)
    a = _write_metrics(tmp_path / "a", scores)
    fewer = _write_metrics(tmp_path / "fewer", {k: v for k, v in scores.items() if k != "case1"})
    other_regions = _write_metrics(tmp_path / "organs", {c: {"liver": v["liver"]} for c, v in scores.items()})
    uneven = _write_metrics(tmp_path / "uneven", {**scores, "case2": {"liver": scores["case2"]["liver"]}})
    (tmp_path / "empty").mkdir()
    wider = _write_metrics(tmp_path / "wider", scores, tolerance=3.0)
    same = ": compare evaluations of the same regions"
    cases = [
        ([str(a)], "give two or more evaluation folders to compare"),
        ([str(a), str(fewer)], f"{fewer}: lacks case(s) case1 of {a}: compare evaluations of the same cases"),
        ([str(a), str(other_regions)], f"{other_regions}: case case0 has regions liver, in {a} liver, spleen{same}"),
        ([str(uneven), str(a)], f"{a}: case case2 has regions liver, spleen, in {uneven} liver{same}"),
        ([str(a), str(tmp_path / "empty")], f"{tmp_path / 'empty' / 'metrics.csv'}: metrics file not found"),
        ([str(a), str(tmp_path / "nowhere")], f"{tmp_path / 'nowhere'}: evaluation folder not found"),
        ([str(a), str(fewer), "--names", "one"], "give one distinct name per folder: 2 folders, names ['one']"),
        ([str(a), str(wider)], f"{wider}: NSD at 3 mm, {a} at 1 mm: evaluate both with the same --nsd-tolerance"),
    ]
    for args, message in cases:
        assert main(["compare", *args, "--out", str(tmp_path / "out")]) == 2
        assert capsys.readouterr().err == f"medseg: error: {message}\n"


def test_compare_two_real_evaluations(brats_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """One prediction is the reference itself, the other calls every ET voxel NCR: TC and WT are unchanged."""
    exact, no_et = tmp_path / "exact", tmp_path / "no_et"
    for folder in (exact, no_et):
        folder.mkdir()
    for case in sorted(p for p in brats_root.iterdir() if p.is_dir()):
        seg = case / f"{case.name}_seg.nii.gz"
        shutil.copy(seg, exact / f"{case.name}.nii.gz")
        image = nib.load(seg)
        labels = np.asarray(image.dataobj).copy()
        labels[labels == 4] = 1
        nib.save(nib.Nifti1Image(labels, image.affine, image.header), no_et / f"{case.name}.nii.gz")
    for folder in (exact, no_et):
        evaluate = ["evaluate", "--pred", str(folder), "--ref", str(brats_root), "--out", str(folder) + "-eval"]
        assert main([*evaluate, "--lesion-wise", "GLI"]) == 0
    capsys.readouterr()

    out = tmp_path / "comparison"
    args = ["compare", str(exact) + "-eval", str(no_et) + "-eval", "--out", str(out), "--names", "exact", "no-ET"]
    assert main(args) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0] == "paired over the cases, against exact (Wilcoxon signed-rank, two-sided)"
    rows = {(r["region"], r["metric"], r["model"]): r for r in csv.DictReader((out / "comparison.csv").open())}
    assert float(rows[("WT", "dice", "no-ET")]["difference"]) == 0 and rows[("WT", "dice", "no-ET")]["p_value"] == "1"
    assert float(rows[("TC", "dice", "no-ET")]["difference"]) == 0
    has_et = [np.any(np.asarray(nib.load(p).dataobj) == 4) for p in sorted(exact.glob("*.nii.gz"))]
    assert float(rows[("ET", "dice", "exact")]["mean"]) == 1.0
    assert float(rows[("ET", "dice", "no-ET")]["mean"]) == pytest.approx(1 - np.mean(has_et))  # empty ET scores 0
    assert any(line.startswith("ET ") and "no-ET" not in line for line in table)
    assert float(rows[("TC", "nsd", "no-ET")]["difference"]) == 0
    assert float(rows[("ET", "nsd", "no-ET")]["mean"]) == pytest.approx(1 - np.mean(has_et))
    assert [line.split()[1] for line in table[1:]] == ["metric", *["Dice", "HD95", "NSD"] * 3, *["lesion-wise"] * 6]
    # lesion-wise: the same for WT and TC; ET lesions all missed, so 0 where the reference has ET
    assert float(rows[("WT", "lesion_dice", "exact")]["mean"]) == 1.0
    assert float(rows[("TC", "lesion_hd95", "no-ET")]["difference"]) == 0
    assert float(rows[("ET", "lesion_dice", "no-ET")]["mean"]) == pytest.approx(1 - np.mean(has_et))
    assert rows[("ET", "lesion_dice", "no-ET")]["p_value"] != ""


def test_partially_labelled_cases_are_paired_where_both_score_the_region(tmp_path: Path) -> None:
    # case2 does not annotate the spleen (e.g. an organ not contoured): its spleen is compared over case0 and case1
    rng = np.random.default_rng(4)
    scores = {name: _random_scores(rng, 3) for name in ("a", "b")}
    for model in scores.values():
        del model["case2"]["spleen"]
    folders = [_write_metrics(tmp_path / name, s) for name, s in scores.items()]
    rows = compare_evaluations(eval_dirs=folders, out_dir=tmp_path / "out")
    spleen = next(r for r in rows if (r.region, r.metric, r.model) == ("spleen", "dice", "b"))
    liver = next(r for r in rows if (r.region, r.metric, r.model) == ("liver", "dice", "b"))
    assert (spleen.cases, liver.cases) == (2, 3)
    expected = np.mean([scores["b"][c]["spleen"][0] - scores["a"][c]["spleen"][0] for c in ("case0", "case1")])
    assert spleen.difference == pytest.approx(expected)
    written = list(csv.DictReader((tmp_path / "out" / "comparison.csv").open()))
    assert {(r["region"], r["cases"]) for r in written} == {("liver", "3"), ("spleen", "2")}
