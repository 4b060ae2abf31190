from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import scipy.ndimage as ndi

from medseg.batch import predict_folder
from medseg.inference import Predictor
from medseg.io import Geometry, Image, read_nifti, write_nifti


def test_keep_largest_component_leaves_one_piece_per_label(one_channel_checkpoint: Path) -> None:
    rng = np.random.default_rng(4)
    noise = ndi.gaussian_filter(rng.normal(size=(48, 40, 24)), 1.5).astype(np.float32)
    image = Image(noise[None] * 50, Geometry((48, 40, 24), np.diag([1.5, 1.5, 3.0, 1.0])))
    raw = Predictor.from_checkpoint(one_channel_checkpoint, device="cpu", backend="torch")
    raw_labels = raw.predict(image)
    assert ndi.label(raw_labels == 1)[1] > 1, "the untrained model must give several pieces"

    inference = dataclasses.replace(raw.inference, keep_largest_component=True)
    kept = Predictor.from_checkpoint(one_channel_checkpoint, device="cpu", backend="torch", inference=inference)
    labels = kept.predict(image)
    count = ndi.label(labels == 1, structure=np.ones((3, 3, 3)))[1]
    assert count == 1
    largest = np.bincount(ndi.label(raw_labels == 1, structure=np.ones((3, 3, 3)))[0].ravel())[1:].max()
    assert (labels == 1).sum() == largest


def test_saving_probabilities_keeps_the_post_processing(one_channel_checkpoint: Path, tmp_path: Path) -> None:
    """The label map written beside the probabilities is post-processed like the one written alone."""
    rng = np.random.default_rng(4)
    noise = ndi.gaussian_filter(rng.normal(size=(48, 40, 24)), 1.5).astype(np.float32) * 50
    geometry = Geometry((48, 40, 24), np.diag([1.5, 1.5, 3.0, 1.0]))
    scan = write_nifti(noise, geometry, tmp_path / "in" / "noise.nii.gz")
    raw = Predictor.from_checkpoint(one_channel_checkpoint, device="cpu", backend="torch")
    kept = Predictor(
        raw.checkpoint,
        device="cpu",
        backend="torch",
        inference=dataclasses.replace(raw.inference, keep_largest_component=True),
    )
    outputs = {}
    for save in (False, True):
        out = tmp_path / f"out-{save}"
        predict_folder(model=kept, input_path=scan, output_dir=out, save_probabilities=save, progress="none")
        outputs[save] = np.asarray(read_nifti(out / "noise.nii.gz").array)
        np.testing.assert_allclose(read_nifti(out / "noise.nii.gz").geometry.affine, geometry.affine)
    np.testing.assert_array_equal(outputs[True], outputs[False])
    assert ndi.label(outputs[True] == 1, structure=np.ones((3, 3, 3)))[1] == 1


def test_unknown_min_region_ml_name_fails_once_when_the_predictor_is_built(tiny_checkpoint: Path) -> None:
    """Not once per case of a batch: the Predictor refuses it before any case is read."""
    from medseg.checkpoint import load_checkpoint
    from medseg.config import InferenceConfig
    from medseg.errors import ConfigError

    config = load_checkpoint(tiny_checkpoint).config["inference"]
    inference = InferenceConfig(**{**config, "min_region_ml": {"XT": 0.5}})
    with pytest.raises(ConfigError, match=r"'XT' is not a region of brats2021 \(WT, TC, ET\)"):
        Predictor.from_checkpoint(tiny_checkpoint, device="cpu", backend="torch", inference=inference)
