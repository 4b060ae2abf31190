"""Test-time mirroring (``inference.mirror_axes``) and ensembles of checkpoints (``--model A B ...``)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medseg.checkpoint import load_checkpoint, save_checkpoint
from medseg.cli import main
from medseg.config import InferenceConfig
from medseg.data.cases import InputCase
from medseg.errors import CheckpointError, ConfigError
from medseg.inference import Predictor, Windows, read_case
from medseg.io import Geometry, Image
from medseg.networks import build_network
from medseg.protocol import ModelDescription

MakeCheckpoint = Callable[..., Path]

SHAPE = (32, 32, 16)  # one_channel_checkpoint's window: one window covers the image

MIRROR_ALL = ["inference.mirror_axes=[0, 1, 2]"]  # what `medseg predict --mirror` sets


def _image(seed: int = 0) -> Image:
    """A one-channel image of positive noise (nonzero everywhere, so the foreground crop keeps it all) on a
    RAS grid (identity affine), so that flipping the array flips the world."""
    rng = np.random.default_rng(seed)
    array = rng.uniform(1.0, 2.0, (1, *SHAPE)).astype(np.float32)
    return Image(array, Geometry(SHAPE, np.eye(4)), Path("noise.nii.gz"), {})


def _log_odds(probs: np.ndarray) -> np.ndarray:
    return np.log(probs[1]) - np.log(probs[0])


def test_windows_average_every_mirror_combination() -> None:
    torch.manual_seed(0)
    network = torch.nn.Conv3d(2, 3, 3, padding=1)  # not equivariant to flips
    windows = Windows.for_network(
        InferenceConfig(roi_size=[16, 16, 16], mirror_axes=[0, 2]), "unet", {"channels": [4, 8], "strides": [2]}
    )
    x = torch.randn(1, 2, 16, 16, 16)
    with torch.no_grad():
        got = windows(x, network)
        expected = sum(network(x.flip(dims)).flip(dims) for dims in ([], [2], [4], [2, 4])) / 4
        plain = network(x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert (got - plain).abs().max() > 1e-2


@pytest.mark.parametrize("axes", [(0,), (0, 2)])
def test_mirroring_makes_the_prediction_flip_equivariant(one_channel_checkpoint: Path, axes: tuple[int, ...]) -> None:
    image = _image()
    flipped = Image(np.flip(image.array, [1 + a for a in axes]).copy(), image.geometry, image.path, {})
    mirrored = Predictor.from_checkpoint(
        one_channel_checkpoint, backend="torch", device="cpu", inference_overrides=MIRROR_ALL
    )
    plain = Predictor.from_checkpoint(one_channel_checkpoint, backend="torch", device="cpu")
    assert mirrored.inference.mirror_axes == [0, 1, 2] and plain.inference.mirror_axes == []

    def flip_back(probs: np.ndarray) -> np.ndarray:
        return np.flip(probs, [1 + a for a in axes])

    with_mirroring = mirrored.predict_probabilities(image)
    np.testing.assert_allclose(flip_back(mirrored.predict_probabilities(flipped)), with_mirroring, atol=1e-5)
    without = plain.predict_probabilities(image)
    assert np.abs(flip_back(plain.predict_probabilities(flipped)) - without).max() > 1e-3  # the network alone is not
    assert np.abs(with_mirroring - without).max() > 1e-3


def test_a_mirrored_ensemble_gives_the_same_world_space_labels_for_a_permuted_flipped_copy(
    tmp_path: Path, one_channel_checkpoint_at: MakeCheckpoint
) -> None:
    paths = [one_channel_checkpoint_at(tmp_path / f"fold{i}.pt", seed=i) for i in range(2)]
    predictor = Predictor.from_checkpoint(paths, backend="torch", device="cpu", inference_overrides=MIRROR_ALL)
    image = _image(3)
    # copy[a, b, c] = image[n - 1 - b, a, c]: the same world content, stored in another voxel order
    n = SHAPE[0]
    array = np.flip(image.array, 1).transpose(0, 2, 1, 3).copy()
    affine = np.array([[0.0, -1.0, 0.0, n - 1.0], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
    copy = Image(array, Geometry(SHAPE, affine), Path("copy.nii.gz"), {})
    labels = predictor.predict(image)
    assert labels.any() and not labels.all()  # both classes occur: the comparison below can fail
    np.testing.assert_array_equal(predictor.predict(copy), np.flip(labels, 0).transpose(1, 0, 2))


def test_mirroring_is_refused_for_a_model_trained_without_flips(
    tmp_path: Path, one_channel_checkpoint_at: MakeCheckpoint
) -> None:
    path = one_channel_checkpoint_at(tmp_path / "no_flips.pt")
    checkpoint = load_checkpoint(path, training=False)
    checkpoint.config["transforms"]["flip_prob"] = 0.0
    save_checkpoint(checkpoint, path)
    assert Predictor.from_checkpoint(path, backend="torch", device="cpu").inference.mirror_axes == []
    with pytest.raises(ConfigError, match=r"mirror_axes \[0\] needs a model trained with flips"):
        Predictor.from_checkpoint(
            path, backend="torch", device="cpu", inference_overrides=["inference.mirror_axes=[0]"]
        )


@pytest.mark.parametrize("flip_prob", [0.5, 0.0])
def test_info_says_whether_mirroring_is_available(
    tmp_path: Path, one_channel_checkpoint_at: MakeCheckpoint, flip_prob: float, capsys: pytest.CaptureFixture[str]
) -> None:
    path = one_channel_checkpoint_at(tmp_path / "model.pt")
    checkpoint = load_checkpoint(path, training=False)
    checkpoint.config["transforms"]["flip_prob"] = flip_prob
    save_checkpoint(checkpoint, path)
    assert main(["info", "--model", str(path), "--json"]) == 0
    info = ModelDescription.from_json(capsys.readouterr().out)
    assert info.mirroring is (flip_prob > 0)
    assert info.inference == dataclasses.asdict(InferenceConfig(**checkpoint.config["inference"]))
    assert info.labels == checkpoint.label_table and info.channels == tuple(checkpoint.channels)
    assert (info.network, info.layout, info.training_data) == (checkpoint.network, checkpoint.layout, None)
    assert main(["info", "--model", str(path)]) == 0
    expected = "available" if flip_prob > 0 else "refused (trained without flips)"
    first, preprocessing, second = capsys.readouterr().out.splitlines()
    assert first.endswith(f"test-time mirroring {expected}")
    # the checkpoint's defaults: BraTS-style z-score, no resampling, no crop (make_one_channel_checkpoint)
    assert (
        preprocessing
        == "preprocessing: orientation RAS; spacing as stored; intensity z-score over nonzero voxels; crop none"
    )
    assert info.preprocessing["intensity"] == "zscore_nonzero" and info.preprocessing["crop_foreground"] is False
    assert second.startswith("inference (medseg predict --set inference.KEY=VALUE changes one): roi_size=[")
    assert " min_component_ml={} mirror_axes=[]" in second


@pytest.mark.parametrize("backend", ["torch", "openvino"])
def test_an_ensemble_averages_its_members_logits(
    tmp_path: Path, one_channel_checkpoint_at: MakeCheckpoint, backend: str
) -> None:
    paths = [one_channel_checkpoint_at(tmp_path / f"fold{i}.pt", seed=i) for i in range(3)]
    image = _image(1)
    members = [Predictor.from_checkpoint(p, backend=backend, device="cpu").predict_probabilities(image) for p in paths]
    ensemble = Predictor.from_checkpoint(paths, backend=backend, device="cpu")
    assert [b.name for b in ensemble.backends] == [backend] * 3
    assert len(ensemble.checkpoints) == 3 and ensemble.checkpoint.source == paths[0]
    probs = ensemble.predict_probabilities(image)

    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-5)
    expected = np.mean([_log_odds(p) for p in members], axis=0)  # two classes: the log-odds are a logit difference
    np.testing.assert_allclose(_log_odds(probs), expected, atol=1e-3)
    assert min(np.abs(_log_odds(p) - expected).max() for p in members) > 1e-2  # no member alone gives it


def _other_network(source: Path, path: Path, **transforms: object) -> Path:
    """``source``'s one-channel model as a residual U-Net (another network, window divisor 4), with
    ``transforms`` changed."""
    checkpoint = load_checkpoint(source, training=False)
    torch.manual_seed(7)
    kwargs = {"channels": [4, 8, 16], "strides": [2, 2], "num_res_units": 1}
    network = build_network("resunet", in_channels=1, out_channels=2, kwargs=kwargs)
    checkpoint.network = {"name": "resunet", "kwargs": kwargs}
    checkpoint.state_dict = network.state_dict()
    checkpoint.config["network"] = dict(checkpoint.network)
    checkpoint.config["transforms"].update(transforms)
    return save_checkpoint(checkpoint, path)


@pytest.mark.parametrize("backend", ["torch", "openvino"])
def test_configurations_that_preprocess_alike_are_ensembled(
    one_channel_checkpoint: Path, tmp_path: Path, backend: str
) -> None:
    # another network, trained on other patches with other augmentation: the same preprocessed image
    other = _other_network(one_channel_checkpoint, tmp_path / "resunet.pt", patch_size=[48, 48, 48], flip_prob=0.2)
    image = _image(3)
    members = [
        Predictor.from_checkpoint(p, backend=backend, device="cpu").predict_probabilities(image)
        for p in (one_channel_checkpoint, other)
    ]
    ensemble = Predictor.from_checkpoint([one_channel_checkpoint, other], backend=backend, device="cpu")
    assert [w.divisor for w in ensemble.windows] == [2, 4]  # each network sizes its own windows
    expected = np.mean([_log_odds(p) for p in members], axis=0)
    np.testing.assert_allclose(_log_odds(ensemble.predict_probabilities(image)), expected, atol=1e-3)
    assert min(np.abs(_log_odds(p) - expected).max() for p in members) > 1e-2  # no member alone gives it


def test_checkpoints_that_preprocess_differently_are_not_ensembled(
    one_channel_checkpoint: Path, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    with pytest.raises(CheckpointError) as err:
        Predictor.from_checkpoint([one_channel_checkpoint, tiny_checkpoint], backend="torch", device="cpu")
    assert str(err.value) == (
        f"{tiny_checkpoint}: cannot be ensembled with {one_channel_checkpoint.name}: its input channels, labels,"
        " transforms.crop_foreground differ (an ensemble averages logits computed on the same preprocessed image)"
    )
    resampled = _other_network(one_channel_checkpoint, tmp_path / "resampled.pt", spacing=[2.0, 2.0, 2.0])
    with pytest.raises(CheckpointError, match=r"resampled.pt: cannot be ensembled .*: its transforms.spacing differ"):
        Predictor.from_checkpoint([one_channel_checkpoint, resampled], backend="torch", device="cpu")


def test_a_checkpoint_given_twice_is_not_an_ensemble(one_channel_checkpoint: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy.pt"
    copy.write_bytes(one_channel_checkpoint.read_bytes())
    with pytest.raises(CheckpointError) as err:
        Predictor.from_checkpoint([one_channel_checkpoint, copy], backend="torch", device="cpu")
    assert str(err.value) == (
        f"{copy}: has the same weights as {one_channel_checkpoint}: an ensemble member given twice"
    )


def test_predict_cli_takes_several_models_and_mirroring(
    tmp_path: Path, one_channel_checkpoint_at: MakeCheckpoint, capsys: pytest.CaptureFixture[str]
) -> None:
    folds = [one_channel_checkpoint_at(tmp_path / f"fold{i}.pt", seed=i) for i in range(2)]
    oblique = np.array([[0.0, -1.5, 0.0, 40.0], [1.2, 0.0, 0.0, -7.0], [0.0, 0.0, 2.0, 3.0], [0.0, 0.0, 0.0, 1.0]])
    nib.save(nib.Nifti1Image(_image(2).array[0], oblique), tmp_path / "case.nii.gz")  # permuted, flipped, anisotropic
    image = read_case(InputCase("case", (tmp_path / "case.nii.gz",)))
    args = ["predict", "--input", str(tmp_path / "case.nii.gz"), "--backend", "torch", "--progress", "none"]

    assert main([*args, "--output", str(tmp_path / "a"), "--model", str(folds[0]), str(folds[1]), "--mirror"]) == 0
    assert main([*args, "--output", str(tmp_path / "b"), "--model", str(folds[0]), "--model", str(folds[1])]) == 0
    assert main([*args, "--output", str(tmp_path / "c"), "--model", str(folds[0])]) == 0
    expected = Predictor.from_checkpoint(folds, backend="torch", device="cpu", inference_overrides=MIRROR_ALL).predict(
        image
    )
    written = nib.load(tmp_path / "a" / "case.nii.gz")
    np.testing.assert_array_equal(np.asarray(written.dataobj), expected)
    np.testing.assert_array_equal(written.affine, nib.load(tmp_path / "case.nii.gz").affine)  # the input's grid
    runs = {name: json.loads((tmp_path / name / "predict_run.json").read_text())["model"] for name in "abc"}
    assert len(set(runs.values())) == 3  # mirroring and each member are part of what a folder holds
    capsys.readouterr()

    assert main([*args, "--output", str(tmp_path / "b"), "--model", str(folds[0])]) == 2  # one fold of the two
    assert "holds predictions of another model" in capsys.readouterr().err
