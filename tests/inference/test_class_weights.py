"""``inference.class_weights``: the label decision of a class model weighs each output's probability."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from medseg.errors import ConfigError
from medseg.inference import Predictor
from medseg.io import Geometry, Image

SHAPE = (20, 24, 12)
AFFINE = np.array([[-1.5, 0.0, 0.0, 30.0], [0.0, 0.0, 2.0, -10.0], [0.0, -3.0, 0.0, 5.0], [0.0, 0.0, 0.0, 1.0]])


def _image() -> Image:
    data = np.random.default_rng(0).uniform(1.0, 2.0, SHAPE).astype(np.float32)[None]
    return Image(data, Geometry(SHAPE, AFFINE), None, {})


def test_class_weights_move_the_label_decision_not_the_probabilities(
    tmp_path: Path, constant_checkpoint_at: Callable[..., Path]
) -> None:
    # logits (1, 0) everywhere: tissue has probability 1 / (1 + e) and loses the plain argmax; a weight w on
    # tissue wins it where w / (1 + e) > e / (1 + e), i.e. w > e = 2.718...
    model = constant_checkpoint_at(tmp_path / "constant.pt", logits=(1.0, 0.0))
    image = _image()
    plain = Predictor.from_checkpoint(model, device="cpu")
    below = Predictor.from_checkpoint(model, device="cpu", inference_overrides=["inference.class_weights=[1, 2.6]"])
    above = Predictor.from_checkpoint(model, device="cpu", inference_overrides=["inference.class_weights=[1, 2.8]"])
    probabilities = plain.predict_probabilities(image)
    assert probabilities[1] == pytest.approx(1 / (1 + math.e), abs=1e-5)
    for predictor, label in ((plain, 0), (below, 0), (above, 1)):
        assert np.all(predictor.predict(image) == label)
        assert np.all(predictor.labels_from_probabilities(probabilities, image) == label)
        np.testing.assert_array_equal(predictor.predict_probabilities(image), probabilities)


def test_class_weights_need_one_weight_per_class_output(
    tmp_path: Path, constant_checkpoint_at: Callable[..., Path], tiny_checkpoint: Path
) -> None:
    model = constant_checkpoint_at(tmp_path / "constant.pt", logits=(1.0, 0.0))
    with pytest.raises(ConfigError, match=r"1 weight\(s\) for the 2 outputs of tissue \(background, tissue\)"):
        Predictor.from_checkpoint(model, device="cpu", inference_overrides=["inference.class_weights=[2]"])
    with pytest.raises(ConfigError, match=r"inference.class_weights must be > 0 \(each\)"):
        Predictor.from_checkpoint(model, device="cpu", inference_overrides=["inference.class_weights=[1, 0]"])
    with pytest.raises(ConfigError, match=r"class_weights is for class label tables; .* has regions"):
        Predictor.from_checkpoint(tiny_checkpoint, device="cpu", inference_overrides=["inference.class_weights=[1]"])
