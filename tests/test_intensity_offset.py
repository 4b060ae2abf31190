"""``transforms.intensity_offset``: a set stored in shifted units (OpenKBP's HU + 1000) is read in true
units everywhere a model meets it: training, prediction and planning."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medseg.checkpoint import load_checkpoint, save_checkpoint
from medseg.inference import Predictor
from medseg.io import Geometry, Image
from medseg.planning import pooled_foreground


def _ct_checkpoint(source: Path, path: Path, offset: float) -> Path:
    """The one-channel test network as a CT model windowed at [-100, 200] HU, reading ``offset``."""
    checkpoint = load_checkpoint(source, training=False)
    config = checkpoint.config
    config["transforms"] |= {"intensity": "ct_window", "hu_window": [-100.0, 200.0], "intensity_offset": offset}
    return save_checkpoint(dataclasses.replace(checkpoint, config=config, source=None), path)


def test_prediction_reads_stored_values_plus_the_offset(one_channel_checkpoint: Path, tmp_path: Path) -> None:
    """A model with offset -1000 given a scan stored in HU + 1000 sees exactly what a model without
    offset sees given the same scan in HU; without the offset the stored values fall outside its window."""
    rng = np.random.default_rng(0)
    hu = rng.uniform(-150, 250, size=(32, 32, 16)).astype(np.float32)
    geometry = Geometry(hu.shape, np.diag([2.0, 2.0, 3.0, 1.0]))
    shifted = _ct_checkpoint(one_channel_checkpoint, tmp_path / "shifted.pt", -1000.0)
    plain = _ct_checkpoint(one_channel_checkpoint, tmp_path / "plain.pt", 0.0)
    stored = Image((hu + 1000)[None], geometry)  # (C, X, Y, Z)
    expected = Predictor.from_checkpoint(plain).predict_probabilities(Image(hu[None], geometry))
    got = Predictor.from_checkpoint(shifted).predict_probabilities(stored)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    unshifted = Predictor.from_checkpoint(plain).predict_probabilities(stored)
    assert np.abs(unshifted - expected).max() > 1e-3


def test_planning_window_is_in_the_offset_units(tmp_path: Path) -> None:
    image = np.full((8, 8, 8), 1000.0, np.float32)  # water stored as HU + 1000
    image[2:6, 2:6, 2:6] = np.linspace(1040, 1060, 64).reshape(4, 4, 4)
    label = np.zeros((8, 8, 8), np.uint8)
    label[2:6, 2:6, 2:6] = 1
    for name, array in (("ct", image), ("seg", label)):
        nib.save(nib.Nifti1Image(array, np.eye(4)), str(tmp_path / f"{name}.nii.gz"))
    case = ((tmp_path / "ct.nii.gz",), tmp_path / "seg.nii.gz")
    (stored,) = pooled_foreground([case])
    (in_hu,) = pooled_foreground([case], offset=-1000.0)
    assert in_hu.mean == pytest.approx(50.0, abs=1e-3) and stored.mean == pytest.approx(1050.0, abs=1e-3)
    assert (in_hu.p00_5, in_hu.p99_5) == pytest.approx((stored.p00_5 - 1000, stored.p99_5 - 1000))
