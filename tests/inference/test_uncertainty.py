"""Uncertainty per voxel and per case (``medseg predict --save-uncertainty``), on models whose answers are known:
constant logits give entropies and mutual information in closed form."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medseg.cli import main
from medseg.inference import Predictor
from medseg.inference.uncertainty import CASE_SCORES, boundary_band, case_scores, entropy, pass_statistics
from medseg.io import Geometry, Image
from medseg.protocol import CaseFinished, parse_event_line

MakeCheckpoint = Callable[..., Path]
SHAPE = (20, 24, 12)
# a grid that is neither RAS nor isotropic: the predictor reorients, and must map its answer back
AFFINE = np.array([[-1.5, 0.0, 0.0, 30.0], [0.0, 0.0, 2.0, -10.0], [0.0, -3.0, 0.0, 5.0], [0.0, 0.0, 0.0, 1.0]])


def _binary_entropy(p: float) -> float:
    return -p * math.log(p) - (1 - p) * math.log(1 - p)


def _sigmoid(a: float) -> float:
    return 1 / (1 + math.exp(-a))


def _write_case(folder: Path) -> Path:
    """A one-channel case of positive noise (the foreground crop keeps all of it) on :data:`AFFINE`."""
    folder.mkdir(parents=True, exist_ok=True)
    data = np.random.default_rng(0).uniform(1.0, 2.0, SHAPE).astype(np.float32)
    path = folder / "case1_0000.nii.gz"
    nib.save(nib.Nifti1Image(data, AFFINE), path)
    return path


def test_entropy_of_classes_and_of_independent_regions() -> None:
    p = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64).view(1, 3, 1, 1, 1)
    expected = -sum(q * math.log(q) for q in (0.2, 0.3, 0.5))
    assert float(entropy(p, regions=False)) == pytest.approx(expected)
    assert float(entropy(p, regions=True)) == pytest.approx(sum(_binary_entropy(q) for q in (0.2, 0.3, 0.5)))
    certain = torch.tensor([1.0, 0.0]).view(1, 2, 1, 1, 1)
    assert float(entropy(certain, regions=False)) == 0.0 and float(entropy(certain, regions=True)) == 0.0


def test_pass_statistics_split_total_uncertainty_into_disagreement() -> None:
    a = torch.tensor([0.0, 2.0]).view(1, 2, 1, 1, 1)
    b = torch.tensor([0.0, -1.0]).view(1, 2, 1, 1, 1)
    logits, maps = pass_statistics([a, b], regions=False)
    p1, p2 = _sigmoid(2.0), _sigmoid(-1.0)  # softmax of (0, a) gives class 1 sigmoid(a)
    total = _binary_entropy((p1 + p2) / 2)
    torch.testing.assert_close(logits, (a + b) / 2)
    assert float(maps[0, 0]) == pytest.approx(total, rel=1e-6)
    assert float(maps[0, 1]) == pytest.approx(total - (_binary_entropy(p1) + _binary_entropy(p2)) / 2, rel=1e-5)
    _, agreeing = pass_statistics([a, a.clone(), a.clone()], regions=False)
    assert float(agreeing[0, 1]) == pytest.approx(0.0, abs=1e-7)
    assert float(agreeing[0, 0]) == pytest.approx(_binary_entropy(p1), rel=1e-6)


def test_the_boundary_band_holds_both_sides_within_its_width() -> None:
    mask = np.zeros((15, 9, 9), dtype=bool)
    mask[5:10] = True  # a slab 5 voxels thick across the image, 2 mm voxels across it
    band = boundary_band(mask, spacing=(2.0, 1.0, 1.0), band_mm=4.0)
    # along the middle line: inside, voxels within 4 mm of the nearest outside voxel (rows 5, 6 and 8, 9; row 7
    # is 6 mm from the slab's faces and 5 mm from the image's edge); outside, those within 4 mm of the slab
    assert np.flatnonzero(band[:, 4, 4]).tolist() == [3, 4, 5, 6, 8, 9, 10, 11]
    assert band[7, 0, 4] and band[7, 4, 8]  # the image's edge is the slab's surface too
    # a band narrower than a voxel still holds the two layers that touch across the surface
    thin = boundary_band(mask, spacing=(2.0, 1.0, 1.0), band_mm=0.5)
    assert np.flatnonzero(thin[:, 4, 4]).tolist() == [4, 5, 9, 10]
    assert not boundary_band(np.zeros((4, 4, 4), dtype=bool), spacing=(1, 1, 1), band_mm=2.0).any()


def test_case_scores_are_means_that_more_background_or_a_larger_organ_does_not_raise() -> None:
    def case(size: int, organ: int) -> tuple[np.ndarray, np.ndarray]:
        labels = np.zeros((size, 10, 10), dtype=np.uint8)
        labels[2 : 2 + organ, 2:8, 2:8] = 1  # a box of organ x 6 x 6 voxels
        near = boundary_band(labels != 0, spacing=(1, 1, 1), band_mm=1.0)
        entropy_map = np.where(near, 0.6, 0.0)  # sure away from the surface, unsure along it
        information = np.where(near, 0.1, 0.0)
        return np.stack([entropy_map, information]).astype(np.float32), labels

    small = case_scores(*case(20, 4), spacing=(1, 1, 1), band_mm=1.0)
    assert list(small) == list(CASE_SCORES)
    assert small["entropy_boundary"] == pytest.approx(0.6) and small["mutual_information_boundary"] == pytest.approx(
        0.1
    )
    # the box's surface layer: 4 x 6 x 6 voxels less the 2 x 4 x 4 inside it
    assert small["entropy_foreground"] == pytest.approx(0.6 * (144 - 32) / 144, abs=1e-6)
    padded = case_scores(*case(60, 4), spacing=(1, 1, 1), band_mm=1.0)  # three times the background
    assert padded == small
    larger = case_scores(*case(60, 30), spacing=(1, 1, 1), band_mm=1.0)  # a larger organ
    assert larger["entropy_boundary"] == pytest.approx(0.6)
    assert larger["entropy_foreground"] == pytest.approx(0.6 * (1080 - 448) / 1080, abs=1e-6)
    assert case_scores(*case(20, 0), spacing=(1, 1, 1), band_mm=1.0) == {}  # nothing predicted: no score


@pytest.mark.parametrize("mirror", [False, True])
def test_an_ensemble_of_constant_models_has_its_closed_form_uncertainty_on_the_input_grid(
    tmp_path: Path, constant_checkpoint_at: MakeCheckpoint, mirror: bool
) -> None:
    models = [constant_checkpoint_at(tmp_path / f"m{i}.pt", logits=(0.0, a)) for i, a in enumerate((2.0, -1.0))]
    image_path = _write_case(tmp_path / "in")
    data = np.asarray(nib.load(image_path).dataobj)[None]
    image = Image(data, Geometry(SHAPE, AFFINE), image_path, {})
    overrides = ["inference.mirror_axes=[0, 2]"] if mirror else []
    prediction = Predictor.from_checkpoint(
        models, backend="torch", device="cpu", inference_overrides=overrides
    ).predict_with_uncertainty(image)
    p1, p2 = _sigmoid(2.0), _sigmoid(-1.0)
    total = _binary_entropy((p1 + p2) / 2)
    information = total - (_binary_entropy(p1) + _binary_entropy(p2)) / 2
    assert prediction.uncertainty is not None and prediction.uncertainty.shape == (2, *SHAPE)
    np.testing.assert_allclose(prediction.uncertainty[0], total, rtol=1e-5)
    np.testing.assert_allclose(prediction.uncertainty[1], information, rtol=1e-4)
    np.testing.assert_allclose(prediction.probabilities[1], _sigmoid(0.5), rtol=1e-5)  # from the mean logits
    single = Predictor.from_checkpoint(models[0], backend="torch", device="cpu").predict_with_uncertainty(image)
    assert single.uncertainty is not None
    np.testing.assert_allclose(single.uncertainty[0], _binary_entropy(p1), rtol=1e-5)
    np.testing.assert_allclose(single.uncertainty[1], 0.0, atol=1e-6)  # one pass cannot disagree with itself


def test_predict_save_uncertainty_writes_the_maps_scores_and_events_and_resumes(
    tmp_path: Path, constant_checkpoint_at: MakeCheckpoint, capsys: pytest.CaptureFixture[str]
) -> None:
    models = [str(constant_checkpoint_at(tmp_path / f"m{i}.pt", logits=(0.0, a))) for i, a in enumerate((2.0, -1.0))]
    _write_case(tmp_path / "in")
    out = tmp_path / "out"
    args = ["predict", "--model", *models, "--input", str(tmp_path / "in"), "--output", str(out)]
    assert main([*args, "--save-uncertainty", "--progress", "json"]) == 0
    p1, p2 = _sigmoid(2.0), _sigmoid(-1.0)
    total = _binary_entropy((p1 + p2) / 2)
    information = total - (_binary_entropy(p1) + _binary_entropy(p2)) / 2

    maps = nib.load(out / "case1_uncertainty.nii.gz")
    assert maps.shape == (*SHAPE, 2)
    np.testing.assert_allclose(maps.affine, AFFINE, atol=1e-5)
    np.testing.assert_allclose(np.asarray(maps.dataobj)[..., 0], total, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(maps.dataobj)[..., 1], information, rtol=1e-4)

    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert list(rows[0])[-4:] == list(CASE_SCORES)
    expected = {
        "entropy_foreground": total,
        "entropy_boundary": total,
        "mutual_information_foreground": information,
        "mutual_information_boundary": information,
    }
    assert {k: float(rows[0][k]) for k in CASE_SCORES} == pytest.approx(expected, rel=1e-4)
    events = [parse_event_line(line) for line in capsys.readouterr().out.splitlines()]
    done = [e for e in events if isinstance(e, CaseFinished)]
    assert len(done) == 1 and done[0].uncertainty == pytest.approx(expected, rel=1e-4)
    assert json.loads(done[0].to_line())["uncertainty"] == done[0].uncertainty

    assert main([*args, "--save-uncertainty", "--progress", "none"]) == 0  # resumed: scores from the files
    again = list(csv.DictReader((out / "summary.csv").open()))
    assert again[0]["status"] == "skipped" and {k: again[0][k] for k in CASE_SCORES} == {
        k: rows[0][k] for k in CASE_SCORES
    }
    assert main([*args, "--progress", "none"]) == 0  # without the flag: the columns of before
    plain = list(csv.DictReader((out / "summary.csv").open()))
    assert not set(CASE_SCORES) & set(plain[0])
