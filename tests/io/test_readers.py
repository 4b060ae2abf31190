"""read_image and the reader registry: NIfTI, NRRD and MHA against SimpleITK, and damaged files."""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from medseg.errors import MedsegInputError
from medseg.io import Geometry, read_image, reader_for
from medseg.io.itk import sitk_from_image


def _sitk_geometry(image: Any) -> Geometry:
    return Geometry.from_itk(
        shape=image.GetSize(), spacing=image.GetSpacing(), origin=image.GetOrigin(), direction=image.GetDirection()
    )


def _sitk_array(image: Any) -> np.ndarray:
    import SimpleITK as sitk

    return np.transpose(sitk.GetArrayFromImage(image), (2, 1, 0))


@pytest.mark.parametrize(
    ("name", "reader"),
    [
        ("a.nii", "nifti"),
        ("a.NII.GZ", "nifti"),
        ("a.nrrd", "itk"),
        ("a.seg.nrrd", "seg_nrrd"),
        ("a.mha", "itk"),
        ("a.mhd", "itk"),
    ],
)
def test_registry_picks_reader_by_longest_ending(name: str, reader: str) -> None:
    assert reader_for(Path(name)).name == reader


def test_unknown_ending_and_missing_file(tmp_path: Path) -> None:
    odd = tmp_path / "scan.png"
    odd.write_bytes(b"x")
    with pytest.raises(MedsegInputError, match="unknown image format") as info:
        read_image(odd)
    assert info.value.path == odd
    with pytest.raises(MedsegInputError, match="not found"):
        read_image(tmp_path / "absent.nii.gz")


@pytest.mark.parametrize("fixture", ["t1_nifti", "kmeans_nifti"])
def test_permuted_nifti_matches_simpleitk(fixture: str, request: pytest.FixtureRequest) -> None:
    import SimpleITK as sitk

    path = request.getfixturevalue(fixture)
    image = read_image(path)
    reference = sitk.ReadImage(str(path))
    expected = _sitk_geometry(reference)
    assert image.geometry.shape == expected.shape == (128, 128, 62)
    np.testing.assert_allclose(image.geometry.affine, expected.affine, atol=1e-5)
    np.testing.assert_allclose(image.geometry.origin, reference.GetOrigin(), atol=1e-5)
    np.testing.assert_allclose(image.geometry.direction.ravel(), reference.GetDirection(), atol=1e-5)
    # The direction is a permutation with a flip: not the identity, so a transpose bug would show.
    assert not np.allclose(image.geometry.direction, np.eye(3))
    np.testing.assert_array_equal(image.array, _sitk_array(reference))
    assert image.array.dtype == _sitk_array(reference).dtype  # stored type kept (uint8 labels stay uint8)


@pytest.mark.parametrize("suffix", [".nrrd", ".mha", ".mhd"])
def test_itk_formats_written_by_simpleitk_read_back(tmp_path: Path, t1_nifti: Path, suffix: str) -> None:
    import SimpleITK as sitk

    original = sitk.ReadImage(str(t1_nifti))
    path = tmp_path / f"t1{suffix}"
    sitk.WriteImage(original, str(path))
    image = read_image(path)
    np.testing.assert_allclose(image.geometry.affine, read_image(t1_nifti).geometry.affine, atol=1e-5)
    np.testing.assert_array_equal(image.array, _sitk_array(original))


def test_oblique_geometry_survives_nrrd_via_simpleitk(tmp_path: Path) -> None:
    """An arbitrary oblique, anisotropic grid: our Geometry -> SimpleITK -> NRRD file -> read_image."""
    rotation = np.linalg.qr(np.random.default_rng(1).normal(size=(3, 3)))[0]
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([0.7, 1.3, 2.9])
    affine[:3, 3] = [12.5, -40.25, 7.0]
    geometry = Geometry((5, 6, 7), affine)
    array = np.arange(5 * 6 * 7, dtype=np.int16).reshape(5, 6, 7)
    import SimpleITK as sitk

    path = tmp_path / "oblique.nrrd"
    sitk.WriteImage(sitk_from_image(array, geometry), str(path))
    image = read_image(path)
    np.testing.assert_allclose(image.geometry.affine, affine, atol=1e-5)
    np.testing.assert_array_equal(image.array, array)


def test_vector_image_becomes_channels_first(tmp_path: Path) -> None:
    import SimpleITK as sitk

    data = np.random.default_rng(0).random((4, 3, 2, 5)).astype(np.float32)  # (Z, Y, X, C)
    path = tmp_path / "vec.mha"
    sitk.WriteImage(sitk.GetImageFromArray(data, isVector=True), str(path))
    image = read_image(path)
    assert image.array.shape == (5, 2, 3, 4)
    np.testing.assert_array_equal(image.array, np.transpose(data, (3, 2, 1, 0)))


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha", ".seg.nrrd"])
def test_truncated_file_raises_input_error_with_path(tmp_path: Path, t1_nifti: Path, suffix: str) -> None:
    import SimpleITK as sitk

    whole = tmp_path / f"whole{suffix}"
    if suffix == ".nii":
        whole.write_bytes(gzip.decompress(t1_nifti.read_bytes()))
    else:
        sitk.WriteImage(sitk.ReadImage(str(t1_nifti)), str(whole))
    broken = tmp_path / f"broken{suffix}"
    broken.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(MedsegInputError) as info:
        read_image(broken)
    assert info.value.path == broken


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha", ".seg.nrrd"])
def test_garbage_file_raises_input_error_with_path(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"garbage{suffix}"
    path.write_bytes(b"this is not an image\n" * 10)
    with pytest.raises(MedsegInputError) as info:
        read_image(path)
    assert info.value.path == path


def _nifti_with_sform(path: Path, affine: np.ndarray) -> Path:
    """A NIfTI whose header carries ``affine`` as its only transform (nibabel's constructor would refuse a
    degenerate one: it derives a qform from it)."""
    import nibabel as nib

    header = nib.Nifti1Header()
    header.set_data_shape((4, 5, 6))
    header.set_data_dtype(np.float32)
    header.set_sform(affine, code=1)
    header.set_qform(None, code=0)
    nib.save(nib.Nifti1Image(np.ones((4, 5, 6), np.float32), None, header=header), path)
    return path


@pytest.mark.parametrize(
    ("columns", "reason"),
    [
        ([[0, 0, 0], [0, 2, 0], [0, 0, 2]], "zero-length"),
        ([[2, 2, 0], [0, 0, 0], [0, 0, 2]], "parallel"),
        ([[2, 2.001, 0], [0, 0.001, 0], [0, 0, 2]], "parallel"),
    ],
    ids=["zero_axis", "repeated_axis", "nearly_parallel_axes"],
)
def test_degenerate_affine_is_refused_naming_the_file(tmp_path: Path, columns: list[list[float]], reason: str) -> None:
    affine = np.eye(4)
    affine[:3, :3] = columns
    path = _nifti_with_sform(tmp_path / "bad.nii.gz", affine)
    with pytest.raises(MedsegInputError, match=reason) as info:
        read_image(path)
    assert info.value.path == path


def test_sheared_oblique_affine_is_read(tmp_path: Path) -> None:
    affine = np.eye(4)
    affine[:3, :3] = [[1.0, 0.5, 0.0], [0.0, 0.866, 0.0], [0.0, 0.0, 3.0]]  # axes 60 degrees apart: unusual, valid
    image = read_image(_nifti_with_sform(tmp_path / "sheared.nii.gz", affine))
    np.testing.assert_allclose(image.geometry.affine, affine, atol=1e-6)


def _nifti(path: Path, data: np.ndarray) -> Path:
    import nibabel as nib

    nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    return path


def test_complex_nifti_is_refused_naming_the_file_and_type(tmp_path: Path) -> None:
    path = _nifti(tmp_path / "complex.nii.gz", np.full((4, 5, 6), 1 + 2j, np.complex64))
    with pytest.raises(MedsegInputError, match=r"complex-valued NIfTI \(complex64\)") as info:
        read_image(path)
    assert info.value.path == path


def test_rgb_nifti_is_refused_naming_the_file(tmp_path: Path) -> None:
    rgb = np.zeros((4, 5, 6), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    path = _nifti(tmp_path / "rgb.nii.gz", rgb)
    with pytest.raises(MedsegInputError, match="RGB/RGBA NIfTI is not a scalar image") as info:
        read_image(path)
    assert info.value.path == path


def test_training_loader_refuses_complex_nifti(tmp_path: Path) -> None:
    from medseg.transforms import load_transforms

    path = _nifti(tmp_path / "complex.nii.gz", np.full((4, 5, 6), 1 + 2j, np.complex64))
    with pytest.raises(MedsegInputError, match=r"complex-valued NIfTI \(complex64\)") as info:
        load_transforms(["image"])[0]({"image": str(path)})
    assert info.value.path == path


@pytest.mark.parametrize(
    ("suffix", "reason"),
    [
        (".nii", r"header declares 35181150961663 voxels of 2 bytes but the file holds 480 bytes"),
        (".nii.gz", r"header declares 35181150961663 voxels of 2 bytes but the file holds \d+ bytes \(gzip: at most"),
    ],
)
def test_header_declaring_more_voxels_than_the_file_holds(tmp_path: Path, suffix: str, reason: str) -> None:
    import nibabel as nib

    header = nib.Nifti1Header()
    header.set_data_dtype(np.int16)
    header.set_data_shape((32767, 32767, 32767))
    raw = header.binaryblock + bytes(4) + bytes(128)  # a 352-byte header, then 64 voxels
    path = tmp_path / f"huge{suffix}"
    path.write_bytes(gzip.compress(raw) if suffix == ".nii.gz" else raw)
    with pytest.raises(MedsegInputError, match=reason) as info:
        read_image(path)
    assert info.value.path == path
