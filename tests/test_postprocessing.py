from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import scipy.ndimage as ndi

from medseg.inference import Predictor
from medseg.io import Geometry, Image


def test_keep_largest_component_leaves_one_piece_per_label(one_channel_checkpoint: Path) -> None:
    rng = np.random.default_rng(4)
    noise = ndi.gaussian_filter(rng.normal(size=(48, 40, 24)), 1.5).astype(np.float32)
    image = Image(noise[None] * 50, Geometry((48, 40, 24), np.diag([1.5, 1.5, 3.0, 1.0])))
    raw = Predictor.from_checkpoint(one_channel_checkpoint, device="cpu", backend="torch")
    assert ndi.label(raw.predict(image) == 1)[1] > 1, "the untrained model must give several pieces"

    inference = dataclasses.replace(raw.inference, keep_largest_component=True)
    kept = Predictor.from_checkpoint(one_channel_checkpoint, device="cpu", backend="torch", inference=inference)
    labels = kept.predict(image)
    count = ndi.label(labels == 1, structure=np.ones((3, 3, 3)))[1]
    assert count == 1
    largest = np.bincount(ndi.label(raw.predict(image) == 1, structure=np.ones((3, 3, 3)))[0].ravel())[1:].max()
    assert (labels == 1).sum() == largest
