"""Moving a label map onto another grid voxel for voxel (``voxel_map``, ``onto_grid``), checked against
nibabel's own reorientation: the same voxels in any axis order or direction, a box of a grid, and the
grids that hold other voxels, which are refused as ``require_same_grid`` refuses them."""

from __future__ import annotations

import itertools

import nibabel as nib
import numpy as np
import pytest

from medseg.errors import MedsegInputError
from medseg.io import Geometry, Image, onto_grid, voxel_map

SHAPE = (7, 5, 4)


def _grid() -> Geometry:
    """Oblique (rotated 20 degrees about S), anisotropic, off-origin."""
    c, s = np.cos(np.pi / 9), np.sin(np.pi / 9)
    affine = np.eye(4)
    affine[:3, :3] = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]) @ np.diag([0.9, 1.3, 2.5])
    affine[:3, 3] = (10.0, -4.5, 33.0)
    return Geometry(SHAPE, affine)


def _labels() -> np.ndarray:
    return np.arange(np.prod(SHAPE), dtype=np.int32).reshape(SHAPE)  # every voxel its own value


ORIENTATIONS = [
    np.array([[axis, flip] for axis, flip in zip(order, flips, strict=True)], dtype=float)
    for order in itertools.permutations(range(3))
    for flips in itertools.product((1.0, -1.0), repeat=3)
]


@pytest.mark.parametrize(
    "transform", ORIENTATIONS, ids=lambda t: "".join(f"{int(a)}{'+' if f > 0 else '-'}" for a, f in t)
)
def test_every_axis_order_and_direction_comes_back_exactly(transform: np.ndarray) -> None:
    grid, labels = _grid(), _labels()
    stored = nib.orientations.apply_orientation(labels, transform)
    affine = grid.affine @ nib.orientations.inv_ornt_aff(transform, labels.shape)
    image = Image(stored, Geometry(stored.shape, affine))
    placed, mapping = onto_grid(image, grid, reference_path="ref.nii.gz")
    np.testing.assert_array_equal(placed, labels)
    assert mapping.is_identity == (transform[:, 0].tolist() == [0, 1, 2] and (transform[:, 1] > 0).all())
    assert mapping.offsets == (0, 0, 0)


def test_a_box_of_the_grid_is_placed_only_when_partial() -> None:
    grid, labels = _grid(), _labels()
    box = labels[2:6, 1:4, 1:3]
    affine = grid.affine.copy()
    affine[:3, 3] = grid.affine[:3, :3] @ [2, 1, 1] + grid.affine[:3, 3]
    flipped = nib.orientations.apply_orientation(box, np.array([[0, 1], [1, 1], [2, -1]], dtype=float))
    flipped_affine = affine @ nib.orientations.inv_ornt_aff(np.array([[0, 1], [1, 1], [2, -1]], float), box.shape)
    image = Image(flipped, Geometry(flipped.shape, flipped_affine), path="seg.dcm")
    assert voxel_map(image.geometry, grid) is not None
    with pytest.raises(MedsegInputError, match=r"seg\.dcm: not on the grid of ref\.nii\.gz: shape \(4, 3, 2\)"):
        onto_grid(image, grid, reference_path="ref.nii.gz")
    placed, mapping = onto_grid(image, grid, reference_path="ref.nii.gz", partial=True)
    expected = np.zeros_like(labels)
    expected[2:6, 1:4, 1:3] = box
    np.testing.assert_array_equal(placed, expected)
    assert mapping.offsets == (2, 1, 1) and mapping.flips == (False, False, True)


@pytest.mark.parametrize(
    ("change", "difference"),
    [
        (lambda a: a @ np.diag([1.0, 1.0, 1.2, 1.0]), "spacing"),  # other slice thickness
        (lambda a: np.vstack([a[:3] + np.outer([0.0, 0.0, 0.4], [0, 0, 0, 1]), a[3:]]), "origin"),  # 0.4 mm off
        (lambda a: a @ np.array([[1, 0, 0, 3], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], float), "origin"),  # outside
    ],
    ids=["spacing", "fraction_of_a_voxel", "whole_voxels_outside"],
)
def test_other_voxels_are_refused_as_by_require_same_grid(change: object, difference: str) -> None:
    grid = _grid()
    image = Image(_labels(), Geometry(SHAPE, change(grid.affine)), path="pred.nii.gz")  # type: ignore[operator]
    assert voxel_map(image.geometry, grid) is None
    with pytest.raises(MedsegInputError, match=rf"pred\.nii\.gz: not on the grid of ref\.nii\.gz: {difference}"):
        onto_grid(image, grid, reference_path="ref.nii.gz", partial=True)
