"""Predictor: foreground crop before the windows, output on the input grid with background outside the crop."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from medseg.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from medseg.config import Config, InferenceConfig, TransformConfig
from medseg.data.cases import InputCase
from medseg.errors import ConfigError
from medseg.inference import Predictor, read_case
from medseg.io import Geometry, Image
from medseg.labels import LabelTable
from medseg.networks import build_network


def _first_case(root: Path) -> Image:
    case_dir = sorted(p for p in root.iterdir() if p.is_dir())[0]
    files = tuple(next(case_dir.glob(f"*_{c}.nii.gz")) for c in ("t1", "t1ce", "t2", "flair"))
    return read_case(InputCase(case_dir.name, files))


def _box(mask: np.ndarray) -> tuple[slice, ...]:
    nz = np.argwhere(mask)
    return tuple(slice(lo, hi + 1) for lo, hi in zip(nz.min(0), nz.max(0), strict=True))


class CountingBackend:
    """Wraps a backend and records the spatial shape of every window batch."""

    def __init__(self, inner: object) -> None:
        self.inner, self.name, self.device, self.shapes = inner, "counting", torch.device("cpu"), []

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.shapes += [tuple(x.shape[2:])] * x.shape[0]
        return self.inner(x)  # type: ignore[operator]


def _count_windows(predictor: Predictor, inner: object | None = None) -> CountingBackend:
    """Make ``predictor`` run ``inner`` (default: its own backend) through a :class:`CountingBackend`."""
    counting = CountingBackend(predictor.backends[0] if inner is None else inner)
    predictor.backends = [counting]
    return counting


def test_output_on_input_grid_with_background_outside_crop(tiny_checkpoint: Path, brats_root: Path) -> None:
    image = _first_case(brats_root)
    # move the brain off-centre in a bigger grid, so that the crop really cuts a lot away
    big = np.zeros((4, 80, 64, 48), np.float32)
    big[:, 20:68, 10:58, 4:44] = image.array
    image = Image(big, Geometry(shape=(80, 64, 48), affine=image.geometry.affine), image.path, {})
    predictor = Predictor.from_checkpoint(tiny_checkpoint, backend="torch", device="cpu")
    assert predictor.inference.crop_foreground and predictor.inference.tiling == "tight"
    counting = _count_windows(predictor)
    probs = predictor.predict_probabilities(image)
    labels = predictor.predict(image)
    assert probs.shape == (3, 80, 64, 48) and labels.shape == (80, 64, 48)
    outside = np.ones(labels.shape, bool)
    outside[_box((big != 0).any(0))] = False
    assert outside.sum() > 0.5 * outside.size
    assert np.all(probs[:, outside] == 0) and np.all(labels[outside] == 0)
    # the windows only covered the brain's box, not the whole grid
    covered = sum(np.prod(s) for s in counting.shapes)
    assert covered < np.prod(labels.shape)


class PointwiseBackend:
    """A stand-in network whose output at a voxel depends on that voxel only: logits = 2 * first channels."""

    name, device = "pointwise", torch.device("cpu")

    def __init__(self, outputs: int) -> None:
        self.outputs = outputs

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return 2.0 * x[:, : self.outputs]


def test_crop_puts_the_prediction_back_in_place(tiny_checkpoint: Path, brats_root: Path) -> None:
    """With a pointwise network, cropping changes nothing inside the foreground box and gives
    background outside it: the crop and its inverse are exact."""
    image = _first_case(brats_root)
    ckpt = load_checkpoint(tiny_checkpoint)
    cropped = Predictor(ckpt, backend="torch", device="cpu")
    ckpt.config["transforms"]["crop_foreground"] = False
    full = Predictor(
        ckpt, backend="torch", device="cpu", inference=dataclasses.replace(cropped.inference, crop_foreground=False)
    )
    cropped.backends = full.backends = [PointwiseBackend(3)]
    a, b = cropped.predict_probabilities(image), full.predict_probabilities(image)
    assert a.shape == b.shape == (3, *image.geometry.shape)
    box = _box((image.array != 0).any(0))
    np.testing.assert_allclose(a[(slice(None), *box)], b[(slice(None), *box)], atol=1e-5)
    outside = np.ones(image.geometry.shape, bool)
    outside[box] = False
    assert outside.any() and np.all(a[:, outside] == 0) and np.all(b[:, outside] == 0.5)


def test_monai_tiling_is_selectable(tiny_checkpoint: Path, brats_root: Path) -> None:
    image = _first_case(brats_root)
    ckpt = load_checkpoint(tiny_checkpoint)
    monai = Predictor(
        ckpt,
        backend="torch",
        device="cpu",
        inference=InferenceConfig(**{**ckpt.config["inference"], "tiling": "monai"}),
    )
    tight = Predictor(ckpt, backend="torch", device="cpu")
    assert tight.inference.tiling == "tight" and monai.inference.tiling == "monai"
    monai.backends = tight.backends = [PointwiseBackend(3)]
    np.testing.assert_allclose(monai.predict_probabilities(image), tight.predict_probabilities(image), atol=1e-5)


def _ct_checkpoint(
    path: Path, threshold: float, spacing: list[float] | None = None, interpolation: str = "linear"
) -> Path:
    torch.manual_seed(0)
    kwargs = {"channels": [4, 8], "strides": [2]}
    model = build_network("unet", in_channels=1, out_channels=2, kwargs=kwargs)
    config = Config().to_dict()
    config["data"]["layout"] = "nnunet"
    config["network"] = {"name": "unet", "kwargs": kwargs}
    config["transforms"]["foreground_threshold"] = threshold
    config["transforms"]["spacing"] = spacing
    config["transforms"]["interpolation"] = interpolation
    config["inference"]["roi_size"] = [16, 16, 16]
    config["inference"]["min_overlap"] = 4
    checkpoint = Checkpoint(
        network=config["network"],
        channels=["ct"],
        label_table=LabelTable("body", {0: "background", 1: "body"}),
        config=config,
        state_dict=model.state_dict(),
    )
    return save_checkpoint(checkpoint, path)


@pytest.mark.skipif(
    "foreground_threshold" not in {f.name for f in dataclasses.fields(TransformConfig)},
    reason="transforms.foreground_threshold not available",
)
def test_ct_threshold_crop(tmp_path: Path) -> None:
    """CT: air is -1000 HU, not 0; ``transforms.foreground_threshold`` crops to the body."""
    ckpt = _ct_checkpoint(tmp_path / "ct.pt", threshold=-500.0)
    ct = np.full((1, 40, 36, 30), -1000.0, np.float32)
    ct[0, 5:25, 8:30, 3:20] = 40.0
    image = Image(ct, Geometry(shape=(40, 36, 30), affine=np.eye(4)), tmp_path / "ct.nii.gz", {})
    predictor = Predictor.from_checkpoint(ckpt, backend="torch", device="cpu")
    counting = _count_windows(predictor)
    probs = predictor.predict_probabilities(image)
    labels = predictor.predict(image)
    assert probs.shape == (2, 40, 36, 30) and labels.shape == (40, 36, 30)
    outside = np.ones(labels.shape, bool)
    outside[5:25, 8:30, 3:20] = False
    assert np.all(labels[outside] == 0)
    assert np.allclose(probs[0][outside], 1.0) and np.all(probs[1][outside] == 0)  # softmax: background 1
    assert all(s[0] <= 32 and s[1] <= 32 and s[2] <= 32 for s in counting.shapes)
    assert sum(np.prod(s) for s in counting.shapes) < 40 * 36 * 30 * 2


@pytest.mark.parametrize("interpolation", ["linear", "spline"])
def test_class_probabilities_sum_to_one_across_the_crop_edge(tmp_path: Path, interpolation: str) -> None:
    """Resampled back from a coarser grid, voxels at the crop's edge mix the crop's softmax with the
    zeros its inverse pads with: the missing share is background, so every voxel still sums to 1
    (a cubic spline overshoots there: clipped and renormalised)."""
    ckpt = _ct_checkpoint(tmp_path / "ct.pt", threshold=-500.0, spacing=[1.7, 1.7, 1.7], interpolation=interpolation)
    ct = np.full((1, 40, 36, 30), -1000.0, np.float32)
    ct[0, 5:25, 8:30, 3:20] = 40.0
    image = Image(ct, Geometry(shape=(40, 36, 30), affine=np.eye(4)), tmp_path / "ct.nii.gz", {})
    probs = Predictor.from_checkpoint(ckpt, backend="torch", device="cpu").predict_probabilities(image)
    assert probs.shape == (2, 40, 36, 30)
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-5)
    assert probs.min() >= 0.0 and probs.max() <= 1.0


def test_empty_image_is_all_background(tmp_path: Path) -> None:
    ckpt = _ct_checkpoint(tmp_path / "ct.pt", threshold=-500.0)
    image = Image(np.full((1, 20, 20, 20), -1000.0, np.float32), Geometry((20, 20, 20), np.eye(4)), tmp_path, {})
    predictor = Predictor.from_checkpoint(ckpt, backend="torch", device="cpu")
    assert np.all(predictor.predict(image) == 0)


def test_window_voxel_budget_bounds_every_window(tiny_checkpoint: Path, brats_root: Path) -> None:
    """``inference.max_window_voxels`` reshapes the windows, not the result: with a pointwise network
    the bounded and unbounded Predictors agree, and no window holds more voxels than the budget."""
    image = _first_case(brats_root)
    ckpt = load_checkpoint(tiny_checkpoint, training=False)
    budget = 32 * 32 * 16
    bounded = Predictor(
        ckpt,
        backend="torch",
        device="cpu",
        inference=InferenceConfig(**{**ckpt.config["inference"], "max_window_voxels": budget}),
    )
    unbounded = Predictor(ckpt, backend="torch", device="cpu")
    assert bounded.windows[0].max_voxels == budget
    assert unbounded.windows[0].max_voxels is None  # the U-Net has no default budget
    counting = _count_windows(bounded, PointwiseBackend(3))
    whole = _count_windows(unbounded, PointwiseBackend(3))
    np.testing.assert_allclose(bounded.predict_probabilities(image), unbounded.predict_probabilities(image), atol=1e-5)
    assert max(np.prod(s) for s in whole.shapes) > budget  # without the budget one window would be larger
    assert len(counting.shapes) > len(whole.shapes)
    assert all(np.prod(s) <= budget for s in counting.shapes)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"max_window_voxels": 16**3 - 1}, "max_window_voxels"),
        ({"roi_size": [30, 32, 16]}, "multiple of 4"),
        ({"max_window": [16, 32, 16]}, "must give one size >= roi_size"),
    ],
)
def test_window_settings_given_to_a_predictor_are_checked(
    tiny_checkpoint: Path, override: dict[str, object], message: str
) -> None:
    """The checks training runs on its config also guard settings handed straight to a Predictor."""
    ckpt = load_checkpoint(tiny_checkpoint, training=False)
    inference = InferenceConfig(**{**ckpt.config["inference"], **override})
    with pytest.raises(ConfigError, match=message):
        Predictor(ckpt, backend="torch", device="cpu", inference=inference)


@pytest.mark.parametrize("crop", [False, True])
def test_the_predictor_leaves_the_callers_image_as_it_was(one_channel_checkpoint: Path, crop: bool) -> None:
    # the intensity normalisation works in place: on the caller's array it z-scored the image it was given
    array = np.random.default_rng(0).uniform(1.0, 2.0, (1, 32, 32, 16)).astype(np.float32)
    image = Image(array.copy(), Geometry((32, 32, 16), np.eye(4)), None, {})
    predictor = Predictor.from_checkpoint(
        one_channel_checkpoint, backend="torch", device="cpu", inference_overrides=[f"inference.crop_foreground={crop}"]
    )
    predictor.predict(image)
    predictor.predict_with_uncertainty(image)
    np.testing.assert_array_equal(image.array, array)
