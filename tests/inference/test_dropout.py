"""Monte Carlo dropout passes (``inference.dropout_samples``): seeded, only the dropout layers drop, their
disagreement becomes mutual information; refused for networks without dropout and on OpenVINO."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from medseg.checkpoint import load_checkpoint, save_checkpoint
from medseg.errors import ConfigError
from medseg.inference import Predictor
from medseg.inference.backends.torch_backend import TorchBackend, dropout_layers
from medseg.io import Geometry, Image
from medseg.networks import build_network
from medseg.networks.registry import get_network_spec, network_names

MakeCheckpoint = Callable[..., Path]
SHAPE = (32, 32, 16)


def _with_dropout(path: Path, one_channel_checkpoint_at: MakeCheckpoint, rate: float = 0.3) -> Path:
    """The one-channel U-Net (random weights) built with dropout ``rate`` (the weights do not change)."""
    one_channel_checkpoint_at(path)
    checkpoint = load_checkpoint(path, training=False)
    checkpoint.network["kwargs"]["dropout"] = rate
    checkpoint.config["network"]["kwargs"]["dropout"] = rate
    return save_checkpoint(checkpoint, path)


def _image() -> Image:
    array = np.random.default_rng(0).uniform(1.0, 2.0, (1, *SHAPE)).astype(np.float32)
    return Image(array, Geometry(SHAPE, np.eye(4)), None, {})


def _predictor(checkpoint: Path, *overrides: str, backend: str = "auto") -> Predictor:
    return Predictor.from_checkpoint(checkpoint, device="cpu", backend=backend, inference_overrides=list(overrides))


def test_a_dropout_pass_is_the_network_with_only_its_dropout_layers_in_training_mode(
    tmp_path: Path, one_channel_checkpoint_at: MakeCheckpoint
) -> None:
    checkpoint = load_checkpoint(_with_dropout(tmp_path / "d.pt", one_channel_checkpoint_at), training=False)
    backend = TorchBackend(checkpoint.build_model(), device=torch.device("cpu"))
    x = torch.from_numpy(_image().array[None])
    assert len(dropout_layers(backend.model)) == 2  # one per convolution block; the output layer has none
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    with backend.dropout_active(7):
        sampled = backend(x)
    assert torch.equal(torch.random.get_rng_state(), before)  # the caller's generator is left as it was
    assert not any(m.training for m in backend.model.modules())  # eval mode again
    # by hand: the same seed, the dropout layers alone in training mode (instance norm unchanged)
    reference = checkpoint.build_model().eval()
    for layer in dropout_layers(reference):
        layer.train()
    torch.manual_seed(7)
    with torch.no_grad():
        expected = reference(x)
    torch.testing.assert_close(sampled, expected)
    assert not torch.allclose(sampled, backend(x))  # dropout changed the answer


def test_dropout_samples_add_seeded_passes_that_disagree(
    tmp_path: Path, one_channel_checkpoint_at: MakeCheckpoint
) -> None:
    checkpoint = _with_dropout(tmp_path / "d.pt", one_channel_checkpoint_at)
    image = _image()
    single = _predictor(checkpoint).predict_with_uncertainty(image)
    assert single.uncertainty is not None and float(single.uncertainty[1].max()) == 0.0  # one pass: no disagreement
    sampled = _predictor(checkpoint, "inference.dropout_samples=4")
    assert sampled.passes_per_case == 5 and all(isinstance(b, TorchBackend) for b in sampled.backends)  # auto: torch
    first = sampled.predict_with_uncertainty(image)
    again = _predictor(checkpoint, "inference.dropout_samples=4").predict_with_uncertainty(image)
    assert first.uncertainty is not None and again.uncertainty is not None
    assert float(first.uncertainty[1].mean()) > 1e-4  # the samples disagree: mutual information
    np.testing.assert_array_equal(first.uncertainty, again.uncertainty)  # the same seed, the same answer
    np.testing.assert_array_equal(first.probabilities, sampled.predict_with_uncertainty(image).probabilities)
    other = _predictor(checkpoint, "inference.dropout_samples=4", "inference.dropout_seed=1")
    assert not np.array_equal(other.predict_with_uncertainty(image).uncertainty, first.uncertainty)
    # the label map averages the dropout passes too: predict() agrees with the probabilities' labels
    labels = sampled.labels_from_probabilities(first.probabilities, image)
    np.testing.assert_array_equal(sampled.predict(image), labels)


def test_dropout_samples_are_refused_without_dropout_or_on_openvino(
    tmp_path: Path, one_channel_checkpoint: Path, one_channel_checkpoint_at: MakeCheckpoint
) -> None:
    # MONAI builds Dropout(p=0) layers when dropout is off: they do not count
    with pytest.raises(ConfigError, match=r"needs a network with dropout, and the unet of .*one_channel.pt has none"):
        _predictor(one_channel_checkpoint, "inference.dropout_samples=2")
    checkpoint = _with_dropout(tmp_path / "d.pt", one_channel_checkpoint_at)
    with pytest.raises(ConfigError, match="needs the torch backend"):
        _predictor(checkpoint, "inference.dropout_samples=2", backend="openvino")
    with pytest.raises(ConfigError, match="dropout_samples"):
        _predictor(checkpoint, "inference.dropout_samples=-1")


@pytest.mark.parametrize("name", network_names())
def test_every_network_with_a_dropout_setting_drops_when_it_is_set(name: str) -> None:
    # what the predict guide lists: the networks whose kwargs set a dropout rate, and the dynunet, which has none
    rates = [key for key in get_network_spec(name).defaults if key.startswith("dropout")]
    assert bool(rates) == (name != "dynunet")
    with_dropout = build_network(name, in_channels=1, out_channels=2, kwargs=dict.fromkeys(rates, 0.3))
    assert bool(dropout_layers(with_dropout)) == bool(rates)
    # at the defaults only MONAI's VNet drops: its two shallowest up-transitions drop their skip input at 0.5
    # whatever dropout_prob says
    without = [m.p for m in dropout_layers(build_network(name, in_channels=1, out_channels=2))]
    assert without == ([0.5, 0.5] if name == "vnet" else [])
