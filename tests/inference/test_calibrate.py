"""Temperature scaling: the fit recovers known temperatures, ``medseg calibrate`` finds the closed-form one of a
model that answers the same everywhere, stores it in the checkpoint, the Predictor applies it when asked, and
``medseg evaluate`` shows the expected calibration error before and after."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medseg.checkpoint import load_checkpoint, save_checkpoint
from medseg.cli import main
from medseg.data.cases import discover_cases
from medseg.errors import CheckpointError
from medseg.inference import Predictor, read_case
from medseg.inference.calibration import CalibrationParams, calibrate, fit_temperature, negative_log_likelihood
from medseg.inference.predictor import Windows
from medseg.inference.quality import uncertainty_threshold
from medseg.inference.uncertainty import case_scores
from medseg.io import Geometry, Image

MakeCheckpoint = Callable[..., Path]
SHAPE = (16, 16, 8)
AFFINE = np.diag([1.5, 1.5, 3.0, 1.0])
SURE = 4.0  # the constant model's class-1 logit: it says tissue with probability sigmoid(4) = 0.982
SHARE = 0.75  # ... where three voxels in four are tissue: the temperature that says 0.75 is 4 / logit(0.75)


@pytest.mark.parametrize("regions", [False, True])
@pytest.mark.parametrize("true_temperature", [0.5, 2.5])
def test_the_fit_recovers_the_temperature_that_made_the_labels(regions: bool, true_temperature: float) -> None:
    g = torch.Generator().manual_seed(0)
    logits = 3.0 * torch.randn(200_000, 3, generator=g, dtype=torch.float64)
    if regions:
        targets = torch.rand(logits.shape, generator=g, dtype=torch.float64) < torch.sigmoid(logits / true_temperature)
        targets = targets.double()
    else:
        targets = torch.multinomial(torch.softmax(logits / true_temperature, 1), 1, generator=g)[:, 0]
    fitted = fit_temperature(logits, targets, regions=regions)
    assert fitted == pytest.approx(true_temperature, rel=0.03)
    nll = negative_log_likelihood(logits, targets, regions=regions, temperature=fitted)
    assert nll < negative_log_likelihood(logits, targets, regions=regions) - 0.01
    assert nll <= negative_log_likelihood(logits, targets, regions=regions, temperature=fitted * 1.1)


def _write_cases(tmp_path: Path) -> tuple[Path, Path]:
    """One case of positive noise and its reference: tissue on three voxels in four (a stripe pattern)."""
    images, refs = tmp_path / "images", tmp_path / "refs"
    images.mkdir()
    refs.mkdir()
    data = np.random.default_rng(0).uniform(1.0, 2.0, SHAPE).astype(np.float32)
    nib.save(nib.Nifti1Image(data, AFFINE), images / "case1_0000.nii.gz")
    reference = np.ones(SHAPE, dtype=np.uint8)
    reference[::4] = 0
    nib.save(nib.Nifti1Image(reference, AFFINE), refs / "case1.nii.gz")
    (refs / "dataset.json").write_text(json.dumps({"name": "tissue", "labels": {"0": "background", "1": "tissue"}}))
    return images, refs


def test_calibrate_finds_the_closed_form_temperature_and_the_predictor_applies_it(
    tmp_path: Path, constant_checkpoint_at: MakeCheckpoint
) -> None:
    model = constant_checkpoint_at(tmp_path / "model.pt", logits=(0.0, SURE))
    images, refs = _write_cases(tmp_path)
    out = tmp_path / "calibrated.pt"
    result = calibrate(
        model=model, ref_dir=refs, out=out, input_path=images, device="cpu", backend="torch",
        params=CalibrationParams(voxels_per_case=10**6),
    )  # fmt: skip
    expected = SURE / math.log(SHARE / (1 - SHARE))
    assert result.temperature == pytest.approx(expected, rel=1e-3)
    assert result.voxels == math.prod(SHAPE) and result.cases == ("case1",)
    sure = 1 / (1 + math.exp(-SURE))
    assert result.ece_before["tissue"] == pytest.approx(sure - SHARE, rel=1e-4)  # one bin: the gap
    assert result.ece_after["tissue"] == pytest.approx(0.0, abs=1e-3)
    assert result.nll_after < result.nll_before

    stored = load_checkpoint(out, training=False)
    assert stored.temperature == pytest.approx(result.temperature)
    assert stored.calibration is not None and stored.calibration["cases"] == ["case1"]
    assert stored.weights_sha256 == load_checkpoint(model).weights_sha256
    assert load_checkpoint(model).calibration is None

    array = np.asarray(nib.load(images / "case1_0000.nii.gz").dataobj)[None]
    image = Image(array, Geometry(SHAPE, AFFINE), images / "case1_0000.nii.gz", {})
    scaled = Predictor.from_checkpoint(
        out, backend="torch", device="cpu", inference_overrides=["inference.temperature_scaling=true"]
    )
    plain = Predictor.from_checkpoint(out, backend="torch", device="cpu")
    assert scaled.temperatures == [pytest.approx(expected, rel=1e-3)] and plain.temperatures == [1.0]
    np.testing.assert_allclose(scaled.predict_probabilities(image)[1], SHARE, atol=1e-3)
    np.testing.assert_allclose(plain.predict_probabilities(image)[1], sure, atol=1e-5)
    np.testing.assert_array_equal(scaled.predict(image), plain.predict(image))  # the labels do not change


def test_calibrate_and_evaluate_from_the_command_line_show_the_ece_before_and_after(
    tmp_path: Path, constant_checkpoint_at: MakeCheckpoint, capsys: pytest.CaptureFixture[str]
) -> None:
    model = constant_checkpoint_at(tmp_path / "model.pt", logits=(0.0, SURE))
    images, refs = _write_cases(tmp_path)
    out = tmp_path / "calibrated.pt"
    calibrate_args = ["calibrate", "--model", str(model), "--input", str(images), "--ref", str(refs)]
    assert main([*calibrate_args, "--out", str(out), "--device", "cpu", "--voxels-per-case", "1000"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("temperature ") and "fitted on 1000 voxels of 1 case(s)" in printed
    assert "ECE tissue (15 bins)" in printed and "inference.temperature_scaling=true" in printed

    scores = {}
    for name, extra in (("before", []), ("after", ["--set", "inference.temperature_scaling=true"])):
        predict = ["predict", "--model", str(out), "--input", str(images), "--output", str(tmp_path / name)]
        assert main([*predict, "--save-probabilities", "--progress", "none", "--device", "cpu", *extra]) == 0
        evaluate = ["evaluate", "--pred", str(tmp_path / name), "--ref", str(refs), "--out", str(tmp_path / f"e{name}")]
        assert main(evaluate) == 0
        summary = json.loads((tmp_path / f"e{name}" / "summary.json").read_text())
        scores[name] = summary["calibration"]["regions"]["tissue"]["ece"]
        assert summary["regions"]["tissue"]["dice"]["mean"] == pytest.approx(2 * SHARE / (1 + SHARE))
    sure = 1 / (1 + math.exp(-SURE))
    assert scores["before"] == pytest.approx(sure - SHARE, rel=1e-4)
    assert scores["after"] < 0.03  # fitted on a sample of 1000 voxels: close to the share, not exactly it


def test_checkpoints_without_a_calibration_load_and_refuse_temperature_scaling(
    tmp_path: Path, constant_checkpoint_at: MakeCheckpoint
) -> None:
    path = constant_checkpoint_at(tmp_path / "old.pt", logits=(0.0, 1.0))
    data = torch.load(path, weights_only=True)
    del data["calibration"]  # as a medseg from before calibration wrote it
    torch.save(data, path)
    assert load_checkpoint(path).calibration is None and load_checkpoint(path).temperature is None
    assert Predictor.from_checkpoint(path, backend="torch", device="cpu").temperatures == [1.0]
    with pytest.raises(CheckpointError, match=r"old.pt: has no fitted temperature .* run medseg calibrate"):
        Predictor.from_checkpoint(
            path, backend="torch", device="cpu", inference_overrides=["inference.temperature_scaling=true"]
        )
    data["calibration"] = {"temperature": -1.0}
    torch.save(data, path)
    with pytest.raises(CheckpointError, match=r"its calibration holds no positive temperature"):
        load_checkpoint(path)


def test_calibrate_takes_the_uncertainty_as_trained_from_the_passes_of_the_logits(
    tmp_path: Path, one_channel_checkpoint_at: MakeCheckpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An untrained U-Net (answers that vary from voxel to voxel), four mirrored passes, a foreground crop and
    resampling to 2 mm: one run of the passes gives the logits and the uncertainty as two runs did, bit for bit,
    and ``calibrate`` runs the passes twice per case (as trained, then with the temperature), not three times."""
    model = one_channel_checkpoint_at(tmp_path / "model.pt", seed=3)
    checkpoint = load_checkpoint(model, training=False)
    checkpoint.config["transforms"].update(spacing=[2.0, 2.0, 2.0], crop_foreground=True)
    save_checkpoint(checkpoint, model)
    images, refs = tmp_path / "images", tmp_path / "refs"
    images.mkdir()
    refs.mkdir()
    rng = np.random.default_rng(1)
    for case in ("a", "b"):
        data = np.zeros(SHAPE, np.float32)
        data[2:14, 3:15, 1:7] = rng.uniform(1.0, 2.0, (12, 12, 6))  # zero around it: the crop keeps the box
        nib.save(nib.Nifti1Image(data, AFFINE), images / f"{case}_0000.nii.gz")
        nib.save(nib.Nifti1Image((data > 1.5).astype(np.uint8), AFFINE), refs / f"{case}.nii.gz")
    (refs / "dataset.json").write_text(json.dumps({"name": "tissue", "labels": {"0": "background", "1": "tissue"}}))
    overrides = ["inference.mirror_axes=[0, 2]"]

    predictor = Predictor.from_checkpoint(model, backend="torch", device="cpu", inference_overrides=overrides)
    cases = [read_case(c) for c in discover_cases(images, channels=predictor.channels)]
    logits, inside, prediction = predictor.predict_logits_with_uncertainty(cases[0])
    separate_logits, separate_inside = predictor.predict_logits(cases[0])
    separate = predictor.predict_with_uncertainty(cases[0])
    assert prediction.uncertainty is not None and separate.uncertainty is not None
    np.testing.assert_array_equal(logits, separate_logits)
    np.testing.assert_array_equal(inside, separate_inside)
    np.testing.assert_array_equal(prediction.probabilities, separate.probabilities)
    np.testing.assert_array_equal(prediction.uncertainty, separate.uncertainty)
    assert 0 < inside.sum() < inside.size and prediction.uncertainty[1].max() > 0  # cropped; the passes disagree

    passes = []
    single_pass = Windows.single_pass

    def counted(self: Windows, x: torch.Tensor, network: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        passes.append(x.shape)
        return single_pass(self, x, network)

    monkeypatch.setattr(Windows, "single_pass", counted)
    out = tmp_path / "calibrated.pt"
    result = calibrate(
        model=model, ref_dir=refs, out=out, input_path=images, device="cpu", backend="torch",
        inference_overrides=overrides,
    )  # fmt: skip
    assert len(passes) == 2 * 2 * predictor.passes_per_case == 16  # two cases, four passes, twice
    monkeypatch.undo()

    scaled = Predictor.from_checkpoint(
        out, backend="torch", device="cpu", inference_overrides=[*overrides, "inference.temperature_scaling=true"]
    )
    band_mm = predictor.inference.uncertainty_band_mm
    expected = {}
    for name, which in (("as_trained", predictor), ("temperature_scaling", scaled)):
        scores = []
        for image in cases:  # as the old calibrate did: a prediction with uncertainty of its own per case
            found = which.predict_with_uncertainty(image)
            assert found.uncertainty is not None
            labels = which.labels_from_probabilities(found.probabilities, image)
            assert labels.any()  # a score to threshold
            scores.append(case_scores(found.uncertainty, labels, spacing=image.geometry.spacing, band_mm=band_mm))
        expected[name] = uncertainty_threshold(scores)
    assert result.uncertain_above == expected
    assert expected["as_trained"] != expected["temperature_scaling"]
