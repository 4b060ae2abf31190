"""Training reads cases with the reader prediction uses: a case stored as NRRD, MHA or a DICOM series loads
with the same voxels and the same geometry as the NIfTI of it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from monai import transforms as mt

from medseg.config import TransformConfig
from medseg.data.manifest import check_manifest, load_manifest
from medseg.errors import MedsegInputError
from medseg.io import Geometry, Image, read_image, write_nifti
from medseg.io.itk import sitk_from_image
from medseg.keys import IMAGE, LABEL
from medseg.labels import LabelTable
from medseg.transforms import intensity_offset_transforms, load_transforms, spatial_transforms, validation_pipeline

DICOM_DIR = Path(__file__).resolve().parent / "data" / "dicom_mr_oblique"
SHAPE = (14, 12, 7)
TABLE = LabelTable("organs", {0: "background", 1: "liver", 2: "spleen"})
CONFIG = TransformConfig(intensity_offset=-1000, crop_foreground=True, foreground_threshold=-500.0)


def _oblique_case(folder: Path) -> tuple[Image, Image]:
    """An int16 CT-like image (stored as HU + 1000) and a uint8 label map on an oblique, anisotropic,
    left-handed grid, written as NIfTI and read back (so that every format below starts from the same
    float32-rounded affine)."""
    rng = np.random.default_rng(0)
    c, s = np.cos(0.4), np.sin(0.4)
    affine = np.eye(4)
    affine[:3, :3] = np.array([[-c, s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]) @ np.diag([0.8, 1.1, 3.0])
    affine[:3, 3] = (91.5, -120.25, 33.0)
    image = rng.integers(0, 1400, size=SHAPE).astype(np.int16)
    image[:2] = 0  # air outside the body, cropped away
    label = np.zeros(SHAPE, np.uint8)
    label[4:9, 3:8, 2:5] = 1
    label[9:12, 8:11, 1:3] = 2
    write_nifti(image, Geometry(SHAPE, affine), folder / "ct.nii.gz")
    write_nifti(label, Geometry(SHAPE, affine), folder / "ct_seg.nii.gz")
    return read_image(folder / "ct.nii.gz"), read_image(folder / "ct_seg.nii.gz")


def _write_itk(image: Image, path: Path) -> str:
    sitk.WriteImage(sitk_from_image(image.array, image.geometry), str(path))
    return str(path)


def _loaded(item: dict) -> dict:
    """The deterministic steps before normalisation, in training's order, keeping MetaTensors (with their affine)."""
    keys = [IMAGE, LABEL]
    steps = [*load_transforms(keys), *intensity_offset_transforms(CONFIG), *spatial_transforms(CONFIG, keys)]
    return mt.Compose(steps)(item)


def _assert_same(actual: dict, expected: dict) -> None:
    for key in (IMAGE, LABEL):
        assert actual[key].dtype == torch.float32
        torch.testing.assert_close(actual[key].as_tensor(), expected[key].as_tensor(), rtol=0, atol=0)
        torch.testing.assert_close(actual[key].affine, expected[key].affine, rtol=0, atol=1e-6)


@pytest.mark.parametrize(("image_ending", "label_ending"), [(".nrrd", ".mha"), (".mha", ".nrrd")])
def test_nrrd_and_mha_cases_load_as_their_nifti(tmp_path: Path, image_ending: str, label_ending: str) -> None:
    image, label = _oblique_case(tmp_path)
    nifti = {IMAGE: [str(tmp_path / "ct.nii.gz")], LABEL: str(tmp_path / "ct_seg.nii.gz")}
    itk = {
        IMAGE: [_write_itk(image, tmp_path / f"ct{image_ending}")],
        LABEL: _write_itk(label, tmp_path / f"seg{label_ending}"),
    }
    expected = _loaded(nifti)
    assert expected[IMAGE].shape[1:] == (12, 12, 7)  # the offset came before the body crop, which took the air
    assert float(expected[IMAGE].min()) == -1000
    _assert_same(_loaded(itk), expected)
    pipeline = validation_pipeline(CONFIG, TABLE)
    actual, target = pipeline(itk), pipeline(nifti)
    for key in (IMAGE, LABEL):
        torch.testing.assert_close(torch.as_tensor(actual[key]), torch.as_tensor(target[key]))


def test_a_dicom_series_loads_as_its_nifti(tmp_path: Path) -> None:
    series = read_image(DICOM_DIR)
    write_nifti(series.array, series.geometry, tmp_path / "mr.nii.gz")
    label = np.zeros(series.geometry.shape, np.uint8)
    label[40:80, 40:80, 5:10] = 1
    write_nifti(label, series.geometry, tmp_path / "mr_seg.nii.gz")  # float32 affine: within the grid tolerance
    keys = [IMAGE, LABEL]
    load = mt.Compose(load_transforms(keys))
    from_dicom = load({IMAGE: [str(DICOM_DIR)], LABEL: str(tmp_path / "mr_seg.nii.gz")})
    from_nifti = load({IMAGE: [str(tmp_path / "mr.nii.gz")], LABEL: str(tmp_path / "mr_seg.nii.gz")})
    torch.testing.assert_close(from_dicom[IMAGE].as_tensor(), from_nifti[IMAGE].as_tensor(), rtol=0, atol=0)
    torch.testing.assert_close(from_dicom[IMAGE].affine, from_nifti[IMAGE].affine, rtol=0, atol=1e-4)
    assert from_dicom[IMAGE].meta["filename_or_obj"] == str(DICOM_DIR)


def test_a_file_list_of_nrrd_and_mha_is_consistent_and_off_grid_files_are_named(tmp_path: Path) -> None:
    image, label = _oblique_case(tmp_path)
    manifest = {
        "format": "medseg-manifest",
        "labels": TABLE.to_dict(),
        "channels": ["CT"],
        "cases": [{"id": "ct", "images": [_write_itk(image, tmp_path / "ct.nrrd")], "label": "seg.mha"}],
    }
    _write_itk(label, tmp_path / "seg.mha")
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    assert check_manifest(load_manifest(tmp_path / "manifest.json"), root=tmp_path) == []

    moved = Geometry(SHAPE, label.geometry.affine + np.diag([0.0, 0.0, 0.5, 0.0]))  # 3.5 mm slices, not 3 mm
    _write_itk(Image(label.array, moved), tmp_path / "seg.mha")
    problems = check_manifest(load_manifest(tmp_path / "manifest.json"), root=tmp_path)
    assert len(problems) == 1 and problems[0].startswith(f"{tmp_path / 'seg.mha'}: not on the grid of")
    with pytest.raises(MedsegInputError, match="spacing") as info:
        load_transforms([IMAGE, LABEL])[0]({IMAGE: [str(tmp_path / "ct.nrrd")], LABEL: str(tmp_path / "seg.mha")})
    assert info.value.path == tmp_path / "seg.mha"
