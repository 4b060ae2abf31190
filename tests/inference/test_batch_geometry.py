"""Geometry round trip through ``medseg predict`` for every input kind: outputs lie on the input's grid."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medseg.cli import main
from medseg.inference import Predictor
from medseg.inference.batch import predict_folder
from medseg.io import read_dicom_series, read_image

DATA = Path(__file__).resolve().parents[1] / "data"
T1 = DATA / "itk_kmeans_t1" / "KmeansTest_T1UCharRaw.nii.gz"


@pytest.fixture(scope="module")
def predictor(one_channel_checkpoint: Path) -> Predictor:
    return Predictor.from_checkpoint(one_channel_checkpoint, device="cpu")


def test_dicom_series_to_nifti_and_dicom_seg(predictor: Predictor, tmp_path: Path) -> None:
    import pydicom

    source = tmp_path / "series"
    shutil.copytree(DATA / "dicom_mr_oblique", source)
    image = read_dicom_series(source)
    nifti = predict_folder(model=predictor, input_path=source, output_dir=tmp_path / "nii", progress="none")
    seg = predict_folder(
        model=predictor, input_path=source, output_dir=tmp_path / "seg", fmt="dicom-seg", progress="none"
    )
    assert nifti.ok == seg.ok == 1
    out = nib.load(str(tmp_path / "nii" / "series.nii.gz"))
    assert out.shape == image.geometry.shape
    np.testing.assert_allclose(out.affine, image.geometry.affine, atol=1e-5)
    labels = np.asarray(out.dataobj)
    assert labels.any(), "the test needs some foreground to compare frames"

    ds = pydicom.dcmread(str(tmp_path / "seg" / "series.dcm"))
    assert str(ds.Modality) == "SEG" and str(ds.FrameOfReferenceUID) == image.meta["frame_of_reference_uid"]
    k_of_uid = {uid: k for k, uid in enumerate(image.meta["sop_instance_uids"])}
    pixels = ds.pixel_array.reshape(int(ds.NumberOfFrames), int(ds.Rows), int(ds.Columns))
    positions = [
        [float(v) for v in pydicom.dcmread(str(f), stop_before_pixels=True).ImagePositionPatient]
        for f in image.meta["dicom_files"]
    ]
    covered = set()
    for f, frame in enumerate(ds.PerFrameFunctionalGroupsSequence):
        k = k_of_uid[str(frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)]
        np.testing.assert_array_equal(pixels[f].astype(bool), (labels[:, :, k] == 1).T)
        np.testing.assert_allclose(
            [float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient], positions[k], atol=1e-4
        )
        covered.add(k)
    assert covered == {k for k in range(labels.shape[2]) if (labels[:, :, k] == 1).any()}
    assert sorted(p.name for p in source.iterdir()) == sorted(p.name for p in (DATA / "dicom_mr_oblique").iterdir())


def test_permuted_direction_nifti_keeps_its_affine(one_channel_checkpoint: Path, tmp_path: Path) -> None:
    argv = ["predict", "--model", str(one_channel_checkpoint), "--input", str(T1), "--output", str(tmp_path)]
    code = main([*argv, "--progress", "none", "--device", "cpu"])
    assert code == 0
    source = nib.load(str(T1))
    out = nib.load(str(tmp_path / "KmeansTest_T1UCharRaw.nii.gz"))
    assert out.shape == source.shape
    np.testing.assert_allclose(out.affine, source.affine, atol=1e-6)
    assert int(out.header["sform_code"]) == int(source.header["sform_code"])
    assert int(out.header["qform_code"]) == int(source.header["qform_code"])


def test_qform_and_sform_that_disagree_are_copied_so_every_reader_overlays_the_output(
    predictor: Predictor, tmp_path: Path
) -> None:
    import SimpleITK as sitk

    source = nib.load(str(T1))
    qform = np.array([[0.0, 0.0, 1.5, -20.0], [1.2, 0.0, 0.0, 5.0], [0.0, 1.2, 0.0, -7.0], [0, 0, 0, 1]])
    sform = qform.copy()
    sform[:3, 1] += [0.3, 0.0, 0.0]  # sheared (a registration output): nibabel takes it, ITK the qform
    sform[:3, 3] += [4.0, -2.0, 1.0]
    image = nib.Nifti1Image(np.asanyarray(source.dataobj), None)
    image.set_qform(qform, code=1)
    image.set_sform(sform, code=2)
    nib.save(image, tmp_path / "sheared.nii.gz")
    assert predict_folder(model=predictor, input_path=tmp_path / "sheared.nii.gz", output_dir=tmp_path / "out",
                          progress="none").ok == 1  # fmt: skip

    out = nib.load(str(tmp_path / "out" / "sheared.nii.gz"))
    written = nib.load(str(tmp_path / "sheared.nii.gz"))
    np.testing.assert_allclose(out.header.get_sform(), written.header.get_sform(), atol=1e-5)
    np.testing.assert_allclose(out.header.get_qform(), written.header.get_qform(), atol=1e-5)
    assert (int(out.header["sform_code"]), int(out.header["qform_code"])) == (2, 1)
    itk_in, itk_out = sitk.ReadImage(str(tmp_path / "sheared.nii.gz")), sitk.ReadImage(str(out.get_filename()))
    for get in ("GetOrigin", "GetSpacing", "GetDirection"):
        np.testing.assert_allclose(getattr(itk_out, get)(), getattr(itk_in, get)(), atol=1e-5)


@pytest.fixture(scope="module")
def t1_labels(predictor: Predictor, tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    """The prediction on the NIfTI original of the NRRD/MHA copies."""
    out = tmp_path_factory.mktemp("t1_reference")
    assert predict_folder(model=predictor, input_path=T1, output_dir=out, progress="none").ok == 1
    return read_image(out / "KmeansTest_T1UCharRaw.nii.gz").array


@pytest.mark.parametrize("ending", [".nrrd", ".mha"])
def test_nrrd_and_mha_inputs(predictor: Predictor, t1_labels: np.ndarray, tmp_path: Path, ending: str) -> None:
    import SimpleITK as sitk

    source = tmp_path / "in" / f"t1{ending}"
    source.parent.mkdir()
    sitk.WriteImage(sitk.ReadImage(str(T1)), str(source))
    for fmt, name in (("nifti", "t1.nii.gz"), ("seg.nrrd", "t1.seg.nrrd")):
        summary = predict_folder(
            model=predictor, input_path=source.parent, output_dir=tmp_path / fmt, fmt=fmt, progress="none"
        )
        assert summary.ok == 1, summary.results
        out = read_image(tmp_path / fmt / name)
        image = read_image(source)
        assert out.geometry.shape == image.geometry.shape
        np.testing.assert_allclose(out.geometry.affine, image.geometry.affine, atol=1e-5)
        assert np.mean(out.array == t1_labels) > 0.999
