"""Prediction lands on exactly the input grid, whatever the voxel order of the input file."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medseg.cli import main
from medseg.inference import Predictor
from medseg.io import Geometry, Image, read_nifti

CASE = "BraTS2021_00002"


def _case_image(root: Path) -> Image:
    folder = root / CASE
    files = [folder / f"{CASE}_{m}.nii.gz" for m in ("t1", "t1ce", "t2", "flair")]
    channels = [read_nifti(p) for p in files]
    return Image(np.stack([c.array for c in channels]), channels[0].geometry, files[0])


def test_predict_writes_on_the_input_grid(brats_root: Path, tiny_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "pred"
    assert main(["predict", "--model", str(tiny_checkpoint), "--input", str(brats_root), "--output", str(out),
                 "--progress", "none"]) == 0  # fmt: skip
    for case_dir in sorted(p for p in brats_root.iterdir() if p.is_dir()):
        ref = nib.load(case_dir / f"{case_dir.name}_t1.nii.gz")
        pred = nib.load(out / f"{case_dir.name}.nii.gz")
        assert pred.shape == ref.shape
        np.testing.assert_allclose(pred.affine, ref.affine, atol=1e-6)
        assert set(np.unique(np.asanyarray(pred.dataobj))) <= {0, 1, 2, 4}
        assert pred.get_data_dtype() == np.uint8


@pytest.mark.parametrize("order", [(0, 1, 2), (2, 0, 1), (1, 2, 0)])
@pytest.mark.parametrize("flip", [(), (0,), (1, 2)])
def test_voxel_order_does_not_change_the_world_space_result(
    brats_root: Path, tiny_checkpoint: Path, order: tuple[int, int, int], flip: tuple[int, ...]
) -> None:
    """The same scan stored with permuted/flipped axes (affine adjusted) must give the same
    segmentation in world space: the label map permuted and flipped the same way."""
    predictor = Predictor.from_checkpoint(tiny_checkpoint, device="cpu")
    image = _case_image(brats_root)
    reference = predictor.predict(image)

    # nibabel orientation: row i sends input axis i to output axis ornt[i, 0], flipped if ornt[i, 1] == -1
    ornt = np.array([[order[i], -1 if i in flip else 1] for i in range(3)], dtype=float)
    array = np.stack([nib.orientations.apply_orientation(c, ornt) for c in image.array])
    affine = image.geometry.affine @ nib.orientations.inv_ornt_aff(ornt, image.geometry.shape)
    shape = array.shape[1:]
    moved = Image(np.ascontiguousarray(array), Geometry(shape, affine))

    labels = predictor.predict(moved)
    assert labels.shape == shape
    expected = nib.orientations.apply_orientation(reference, ornt)
    assert reference.any(), "the tiny model predicts nothing; the test would be vacuous"
    np.testing.assert_array_equal(labels, expected)
