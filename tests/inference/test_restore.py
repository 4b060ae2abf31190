"""The slab path of :mod:`medseg.inference.restore` gives the labels of MONAI's full inverse transforms."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from scipy import ndimage

from medseg.config import TransformConfig
from medseg.inference.predictor import complete_probabilities
from medseg.inference.restore import axis_maps, labels_on_input_grid
from medseg.keys import IMAGE
from medseg.labels import get_label_table
from medseg.postprocessing import outputs_to_labels
from medseg.transforms import inference_transforms

CT = {"intensity": "ct_window", "hu_window": [-175.0, 250.0], "foreground_threshold": -500.0}


def _affine(
    permutation: tuple[int, ...], signs: tuple[int, ...], spacing: tuple[float, ...], angle: float
) -> np.ndarray:
    """Voxel axis ``i`` along world axis ``permutation[i]`` (sign ``signs[i]``, ``spacing[i]`` mm), then
    rotated by ``angle`` radians about the world z axis."""
    affine = np.eye(4)
    affine[:3, :3] = 0
    for axis, (world, sign, mm) in enumerate(zip(permutation, signs, spacing, strict=True)):
        affine[world, axis] = sign * mm
    c, s = np.cos(angle), np.sin(angle)
    rotation = np.array([[c, -s, 0, 0], [s, c, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    affine = rotation @ affine
    affine[:3, 3] = [12.5, -40.0, 7.0]
    return affine


def _body(shape: tuple[int, int, int], rng: np.random.Generator, *, touching: bool) -> np.ndarray:
    """A CT of air with a box of water, away from the edges or touching the first one of each axis."""
    image = np.full((1, *shape), -1000.0, dtype=np.float32)
    box = tuple(slice(0 if touching else int(rng.integers(1, n // 3)), int(rng.integers(2 * n // 3, n))) for n in shape)
    image[(0, *box)] = 0.0
    return image


def _full_and_slab_labels(
    config: TransformConfig, image: np.ndarray, affine: np.ndarray, table_name: str, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Labels of random smooth probabilities on the preprocessed grid, through MONAI's inverse and through slabs."""
    table = get_label_table(table_name)
    regions = table.kind == "regions"
    transforms = inference_transforms(config)
    x = transforms({IMAGE: MetaTensor(torch.as_tensor(image), affine=torch.as_tensor(affine))})[IMAGE]
    rng = np.random.default_rng(seed)
    noise = ndimage.gaussian_filter(rng.normal(size=(table.num_outputs, *x.shape[1:])), (0, 1, 1, 1)) * 10
    logits = torch.as_tensor(noise, dtype=torch.float32)
    probs = torch.sigmoid(logits) if regions else torch.softmax(logits, 0)
    inverse = transforms.inverse(
        {IMAGE: MetaTensor(probs.clone(), affine=x.affine, applied_operations=x.applied_operations)}
    )
    full = complete_probabilities(torch.as_tensor(inverse[IMAGE]).float(), regions=regions)
    expected = outputs_to_labels(full, table)

    def decide(p: torch.Tensor) -> np.ndarray:
        return outputs_to_labels(complete_probabilities(p, regions=regions), table)

    def key(p: torch.Tensor) -> torch.Tensor:
        complete_probabilities(p, regions=regions)
        return ((p > 0.5) * 2 ** torch.arange(len(p)).view(-1, 1, 1, 1)).sum(0) if regions else p.argmax(0)

    maps = axis_maps(x, affine)
    assert maps is not None
    got = labels_on_input_grid(probs, maps, image.shape[1:], decide, key, slab_voxels=3000)  # several slabs
    return expected, got


@pytest.mark.parametrize(
    ("permutation", "signs"),
    [((0, 1, 2), (1, 1, 1)), ((0, 1, 2), (-1, -1, 1)), ((2, 0, 1), (1, -1, -1)), ((1, 2, 0), (-1, 1, 1))],
)
@pytest.mark.parametrize("angle", [0.0, 0.3])
def test_slabs_match_the_full_inverse_for_any_axis_order(
    permutation: tuple[int, ...], signs: tuple[int, ...], angle: float
) -> None:
    rng = np.random.default_rng(sum(permutation) + int(10 * angle))
    image = _body((41, 35, 22), rng, touching=False)
    config = TransformConfig(spacing=[3.2, 3.2, 4.0], crop_foreground=True, **CT)
    expected, got = _full_and_slab_labels(config, image, _affine(permutation, signs, (0.8, 1.1, 2.5), angle), "btcv", 1)
    assert len(np.unique(expected)) > 3  # several organs: the comparison is not trivially all background
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize(
    ("spacing", "crop", "touching", "table"),
    [
        (None, True, False, "btcv"),  # no resampling: the map is a permutation
        ([2.0, 1.7, 3.1], False, False, "btcv"),  # no crop: border padding at the volume's edge
        ([2.0, 1.7, 3.1], True, True, "btcv"),  # the crop touches the volume's edge
        ([2.0, 2.0, 2.0], True, False, "brats2021"),  # overlapping regions: thresholds, painted in order
    ],
)
def test_slabs_match_the_full_inverse(spacing: list[float] | None, crop: bool, touching: bool, table: str) -> None:
    rng = np.random.default_rng(7)
    image = _body((37, 30, 19), rng, touching=touching)
    config = TransformConfig(spacing=spacing, crop_foreground=crop, **CT)
    expected, got = _full_and_slab_labels(
        config, image, _affine((0, 1, 2), (-1, -1, 1), (0.9, 0.9, 1.3), 0.0), table, 3
    )
    assert len(np.unique(expected)) > 2
    np.testing.assert_array_equal(got, expected)


def test_spline_interpolation_is_left_to_the_full_inverse() -> None:
    config = TransformConfig(spacing=[2.0, 2.0, 2.0], interpolation="spline", crop_foreground=True, **CT)
    image = _body((20, 20, 12), np.random.default_rng(0), touching=False)
    x = inference_transforms(config)(
        {IMAGE: MetaTensor(torch.as_tensor(image), affine=torch.eye(4, dtype=torch.float64))}
    )
    assert axis_maps(x[IMAGE], np.eye(4)) is None
