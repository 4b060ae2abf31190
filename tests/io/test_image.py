"""The one grid check, the one label check and channel stacking of :mod:`medseg.io.image`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medseg.errors import MedsegInputError
from medseg.io import (
    Geometry,
    Image,
    check_label_map,
    grid_difference,
    read_geometry,
    read_image,
    require_same_grid,
    stack_channels,
    write_nifti,
)
from medseg.io.itk import sitk_from_image
from medseg.labels import BRATS2021, require_known_values

SHAPE = (6, 5, 4)


def _grid(
    shape: tuple[int, int, int] = SHAPE, *, spacing: tuple[float, ...] = (0.9, 1.1, 2.5), turn: float = 0.3
) -> Geometry:
    """An oblique, anisotropic, off-origin grid, rotated ``turn`` radians about the third axis."""
    c, s = np.cos(turn), np.sin(turn)
    affine = np.eye(4)
    affine[:3, :3] = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]) @ np.diag(spacing)
    affine[:3, 3] = (-12.5, 30.25, -40.0)
    return Geometry(shape, affine)


def test_grid_difference_names_the_first_that_differs() -> None:
    grid = _grid()
    assert grid_difference(grid, _grid()) is None
    nudged = Geometry(SHAPE, grid.affine + 2e-5)  # float32 rounding of a stored affine
    assert grid_difference(nudged, grid) is None and nudged.same_grid(grid)
    assert grid_difference(_grid((6, 5, 3)), grid) == "shape (6, 5, 3), not (6, 5, 4)"
    assert grid_difference(_grid(spacing=(0.9, 1.1, 3.0)), grid) == "spacing (0.9, 1.1, 3) mm, not (0.9, 1.1, 2.5) mm"
    shifted = grid.affine.copy()
    shifted[0, 3] += 1.0  # 1 mm to the right: 1 mm less along LPS x
    assert (
        grid_difference(Geometry(SHAPE, shifted), grid)
        == "origin (LPS) (11.5, -30.25, -40) mm, not (12.5, -30.25, -40) mm"
    )
    assert grid_difference(_grid(turn=0.31), grid).startswith("direction cosines differ by up to 0.0")
    assert not _grid(turn=0.31).same_grid(grid)
    assert grid_difference(Geometry(SHAPE, np.full((4, 4), np.nan)), grid) is not None


def test_require_same_grid_names_both_files(tmp_path: Path) -> None:
    require_same_grid(_grid(), _grid(), path=tmp_path / "b.nii.gz", reference_path=tmp_path / "a.nii.gz")
    with pytest.raises(MedsegInputError, match=r"not on the grid of .*a\.nii\.gz: spacing") as info:
        require_same_grid(
            _grid(spacing=(1.0, 1.0, 1.0)), _grid(), path=tmp_path / "b.nii.gz", reference_path=tmp_path / "a.nii.gz"
        )
    assert info.value.path == tmp_path / "b.nii.gz"


def test_stack_channels_on_the_first_grid() -> None:
    a = Image(np.zeros(SHAPE, np.int16), _grid(), Path("a.nii.gz"))
    b = Image(np.ones(SHAPE, np.uint8), _grid(), Path("b.nii.gz"))
    stacked = stack_channels([a, b])
    assert stacked.array.shape == (2, *SHAPE) and stacked.array.dtype == np.float32
    assert stacked.meta["channel_files"] == [Path("a.nii.gz"), Path("b.nii.gz")]
    four_d = Image(np.zeros((3, *SHAPE), np.float32), _grid(), Path("c.nii.gz"))
    assert stack_channels([four_d]).meta["channel_files"] == [Path("c.nii.gz")] * 3
    with pytest.raises(MedsegInputError, match="expected a 3-D image per channel file") as info:
        stack_channels([a, four_d])
    assert info.value.path == Path("c.nii.gz")
    with pytest.raises(MedsegInputError, match=r"not on the grid of a\.nii\.gz: shape") as info:
        stack_channels([a, Image(np.zeros((6, 5, 3)), _grid((6, 5, 3)), Path("d.nii.gz"))])
    assert info.value.path == Path("d.nii.gz")


def test_check_label_map_refuses_values_outside_the_table() -> None:
    labels = np.array([[[0, 1], [2, 4]]], np.uint8)
    assert check_label_map(labels, BRATS2021, path=None) == {0, 1, 2, 4}
    with pytest.raises(
        MedsegInputError, match=r"label values \[3\] are not in label table brats2021 \[0, 1, 2, 4\]"
    ) as info:
        check_label_map(labels + (labels == 2), BRATS2021, path="seg.nii.gz")
    assert info.value.path == Path("seg.nii.gz")
    with pytest.raises(MedsegInputError, match="non-integer values"):
        check_label_map(labels * 0.5, BRATS2021, path="seg.nii.gz")
    with pytest.raises(MedsegInputError, match=r"case 'a': labelled values \[7\] are not in label table brats2021"):
        require_known_values([0, 7], BRATS2021, path="m.json", what="case 'a': labelled values")


def test_read_geometry_is_the_grid_read_image_gives(tmp_path: Path) -> None:
    import SimpleITK as sitk

    grid = _grid()
    write_nifti(np.zeros(SHAPE, np.float32), grid, tmp_path / "a.nii.gz")
    sitk.WriteImage(sitk_from_image(np.zeros(SHAPE, np.float32), grid), str(tmp_path / "a.nrrd"))
    for name in ("a.nii.gz", "a.nrrd"):
        geometry = read_geometry(tmp_path / name)
        assert geometry.shape == read_image(tmp_path / name).geometry.shape
        np.testing.assert_allclose(geometry.affine, read_image(tmp_path / name).geometry.affine)
        assert geometry.same_grid(grid)
    with pytest.raises(MedsegInputError, match="file not found"):
        read_geometry(tmp_path / "b.nii.gz")
