"""Label-map and probability writers: round trips on every input kind, seg.nrrd and DICOM-SEG contents."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from medseg.errors import MedsegInputError
from medseg.io import (
    Image,
    read_dicom_series,
    read_image,
    read_nifti,
    write_label_map,
    write_nifti,
    write_probabilities,
)
from medseg.labels import BRATS2021, LabelTable

TABLE = LabelTable(
    name="kmeans",
    labels={0: "background", 1: "csf", 2: "grey matter", 3: "white matter", 4: "fat", 5: "muscle", 6: "other"},
    colors={1: (0, 0, 255), 2: (128, 128, 128), 3: (255, 255, 255), 5: (200, 50, 50)},
)
OPENKBP = LabelTable(
    name="OpenKBP",
    labels={
        0: "background",
        1: "Brainstem",
        2: "SpinalCord",
        3: "RightParotid",
        4: "LeftParotid",
        5: "Esophagus",
        6: "Larynx",
        7: "Mandible",
    },
)
SOURCE_KINDS = ("nifti", "nrrd", "mha", "dicom")


def _slice_pattern(shape: tuple[int, int, int]) -> np.ndarray:
    """A label map whose every slice k is different: label 1 + k % 3 in a box shifted by k, label 6 on even k."""
    labels = np.zeros(shape, dtype=np.uint8)
    for k in range(shape[2]):
        labels[20 + 3 * k : 60 + 3 * k, 100 - 2 * k : 130 - k, k] = 1 + k % 3
        if k % 2 == 0:
            labels[150 + k : 170 + k, 10 : 20 + k, k] = 6
    return labels


@pytest.fixture(scope="module")
def shuffled_dicom(tmp_path_factory: pytest.TempPathFactory, dicom_files: list[Path]) -> Path:
    """The real series under random file names, so that name order is not slice order."""
    folder = tmp_path_factory.mktemp("shuffled")
    for new_index, old_index in enumerate(np.random.default_rng(7).permutation(len(dicom_files))):
        shutil.copy(dicom_files[old_index], folder / f"x{new_index:02d}.dcm")
    return folder


@pytest.fixture(scope="module", params=SOURCE_KINDS)
def source(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    t1_nifti: Path,
    kmeans_nifti: Path,
    shuffled_dicom: Path,
) -> tuple[Image, np.ndarray]:
    """(input image, label map on its grid) for each input kind."""
    import SimpleITK as sitk

    kind = request.param
    if kind == "dicom":
        image = read_dicom_series(shuffled_dicom)
        return image, _slice_pattern(image.geometry.shape)
    labels = np.asarray(read_image(kmeans_nifti).array)
    if kind == "nifti":
        return read_image(kmeans_nifti), labels
    path = tmp_path_factory.mktemp(kind) / f"t1.{kind}"
    sitk.WriteImage(sitk.ReadImage(str(t1_nifti)), str(path))
    return read_image(path), labels


@pytest.mark.parametrize("suffix", [".nii.gz", ".seg.nrrd"])
def test_label_map_round_trip(tmp_path: Path, source: tuple[Image, np.ndarray], suffix: str) -> None:
    image, labels = source
    out = write_label_map(labels, image.geometry, tmp_path / f"labels{suffix}", table=TABLE, reference=image)
    back = read_image(out)
    assert back.geometry.shape == image.geometry.shape
    np.testing.assert_allclose(back.geometry.affine, image.geometry.affine, atol=1e-5)
    np.testing.assert_array_equal(back.array, labels)
    assert not list(tmp_path.glob(".*"))  # no temporary files left behind


def test_label_map_round_trip_through_simpleitk(tmp_path: Path, source: tuple[Image, np.ndarray]) -> None:
    """An independent reader (ITK) sees the same LPS grid in our NIfTI and seg.nrrd files."""
    import SimpleITK as sitk

    image, labels = source
    for suffix in (".nii.gz", ".seg.nrrd"):
        out = write_label_map(labels, image.geometry, tmp_path / f"labels{suffix}", table=TABLE, reference=image)
        itk = sitk.ReadImage(str(out))
        np.testing.assert_allclose(itk.GetSpacing(), image.geometry.spacing, atol=1e-5)
        np.testing.assert_allclose(itk.GetOrigin(), image.geometry.origin, atol=1e-5)
        np.testing.assert_allclose(np.reshape(itk.GetDirection(), (3, 3)), image.geometry.direction, atol=1e-5)
        np.testing.assert_array_equal(np.transpose(sitk.GetArrayFromImage(itk), (2, 1, 0)), labels)


def test_nifti_keeps_reference_qform_sform_codes(tmp_path: Path, kmeans_nifti: Path) -> None:
    import nibabel as nib

    image = read_image(kmeans_nifti)
    out = write_label_map(image.array, image.geometry, tmp_path / "l.nii.gz", table=TABLE, reference=image)
    header = nib.load(str(out)).header
    assert (int(header["qform_code"]), int(header["sform_code"])) == (2, 1)
    assert header.get_data_dtype() == np.uint8


@pytest.mark.parametrize("table", [TABLE, OPENKBP], ids=["kmeans", "openkbp"])
def test_seg_nrrd_header_fields(tmp_path: Path, t1_nifti: Path, kmeans_nifti: Path, table: LabelTable) -> None:
    import nrrd

    image = read_image(t1_nifti)
    labels = np.asarray(read_image(kmeans_nifti).array)
    labels[labels == 4] = 0  # one label of the table absent from the array
    out = write_label_map(labels, image.geometry, tmp_path / "l.seg.nrrd", table=table)
    header = nrrd.read_header(str(out))
    assert header["space"] == "left-posterior-superior"
    assert header["dimension"] == 3 and list(header["sizes"]) == [128, 128, 62]
    lps = image.geometry.direction @ np.diag(image.geometry.spacing)
    np.testing.assert_allclose(header["space directions"], lps.T, atol=1e-6)
    np.testing.assert_allclose(header["space origin"], image.geometry.origin, atol=1e-6)
    for n, segment in enumerate(table.segments()):
        value = segment.value
        assert header[f"Segment{n}_Name"] == segment.display_name
        assert header[f"Segment{n}_LabelValue"] == str(value)
        assert header[f"Segment{n}_Layer"] == "0"
        assert header[f"Segment{n}_ID"] == f"Segment_{value}"
        assert header[f"Segment{n}_Tags"] == f"TerminologyEntry:{segment.concept.slicer_terminology()}|"
        color = [float(c) for c in header[f"Segment{n}_Color"].split()]
        np.testing.assert_allclose(color, np.array(segment.color) / 255, atol=1e-5)
        where = np.argwhere(labels == value)
        if len(where):
            lo, hi = where.min(axis=0), where.max(axis=0)
            expected = [int(x) for pair in zip(lo, hi, strict=True) for x in pair]
        else:
            expected = [0, -1, 0, -1, 0, -1]
        assert [int(x) for x in header[f"Segment{n}_Extent"].split()] == expected
    back = read_image(out)
    assert back.meta["label_table"].labels == {0: "background", **{s.value: s.display_name for s in table.segments()}}
    assert [s["tags"]["TerminologyEntry"] for s in back.meta["segments"]] == [
        s.concept.slicer_terminology() for s in table.segments()
    ]
    assert back.meta["label_table"].colors == {s.value: s.color for s in table.segments()}


def test_seg_nrrd_codes_sided_organs(tmp_path: Path, t1_nifti: Path) -> None:
    image = read_image(t1_nifti)
    out = write_label_map(
        np.zeros(image.geometry.shape, np.uint8), image.geometry, tmp_path / "o.seg.nrrd", table=OPENKBP
    )
    segments = {s["name"]: s for s in read_image(out).meta["segments"]}
    assert sorted(segments) == sorted(s.display_name for s in OPENKBP.segments())
    assert "~SCT^45289007^Parotid gland~SCT^7771000^Left~" in segments["Left parotid"]["tags"]["TerminologyEntry"]
    assert "~SCT^119238007^Brain Stem~^^~" in segments["Brainstem"]["tags"]["TerminologyEntry"]


def _frame_checks(seg_path: Path, image: Image, labels: np.ndarray, table: LabelTable) -> int:
    """Check every DICOM-SEG frame against the label map slice it references; return the frame count."""
    import pydicom

    seg = pydicom.dcmread(str(seg_path))
    sources = [pydicom.dcmread(str(p), stop_before_pixels=True) for p in image.meta["dicom_files"]]
    k_of_uid = {str(ds.SOPInstanceUID): k for k, ds in enumerate(sources)}
    value_of_segment = dict(enumerate(table.foreground_labels, start=1))
    pixels = seg.pixel_array.reshape(int(seg.NumberOfFrames), int(seg.Rows), int(seg.Columns))
    for f, frame in enumerate(seg.PerFrameFunctionalGroupsSequence):
        uid = str(frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
        k = k_of_uid[uid]
        segment = int(frame.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        expected = (labels[:, :, k] == value_of_segment[segment]).T  # (rows, columns) = (Y, X)
        np.testing.assert_array_equal(pixels[f].astype(bool), expected, err_msg=f"frame {f} -> slice {k}")
        position = [float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient]
        np.testing.assert_allclose(position, [float(v) for v in sources[k].ImagePositionPatient], atol=1e-4)
    return len(seg.PerFrameFunctionalGroupsSequence)


@pytest.mark.parametrize("table", [TABLE, BRATS2021, OPENKBP], ids=["kmeans", "brats2021", "openkbp"])
def test_dicom_seg_references_the_right_slices(tmp_path: Path, shuffled_dicom: Path, table: LabelTable) -> None:
    import highdicom as hd

    image = read_dicom_series(shuffled_dicom)
    labels = _slice_pattern(image.geometry.shape)
    if table is BRATS2021:  # non-contiguous values {1, 2, 4}: segment numbers 1..3 must still map back
        labels = np.array([0, 1, 2, 4, 0, 0, 2], dtype=np.uint8)[labels]
    out = write_label_map(labels, image.geometry, tmp_path / "seg.dcm", table=table, reference=image)
    seg = hd.seg.segread(str(out))
    assert seg.number_of_segments == len(table.foreground_labels)
    _check_segment_descriptions(seg, table)
    algorithm = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmName == "medseg"
    assert str(seg.SeriesInstanceUID) != image.meta["series_uid"]
    assert str(seg.FrameOfReferenceUID) == image.meta["frame_of_reference_uid"]
    referenced = {
        str(i.ReferencedSOPInstanceUID) for s in seg.ReferencedSeriesSequence for i in s.ReferencedInstanceSequence
    }
    assert referenced == set(image.meta["sop_instance_uids"])
    non_empty = sum(int((labels[:, :, k] == v).any()) for k in range(labels.shape[2]) for v in table.foreground_labels)
    assert _frame_checks(out, image, labels, table) == non_empty


def _check_segment_descriptions(seg: Any, table: LabelTable) -> None:
    """Each segment of a DICOM-SEG is labelled, coloured and coded as the table's segment of the same number."""
    import highdicom as hd

    segments = table.segments()
    assert len(seg.SegmentSequence) == len(segments)
    for item, segment in zip(seg.SegmentSequence, segments, strict=True):
        concept = segment.concept
        assert str(item.SegmentLabel) == segment.display_name
        assert item.TrackingID == f"label {segment.value}"
        for sequence, code in (
            (item.SegmentedPropertyCategoryCodeSequence, concept.category),
            (item.SegmentedPropertyTypeCodeSequence, concept.type),
        ):
            assert (sequence[0].CodingSchemeDesignator, sequence[0].CodeValue, sequence[0].CodeMeaning) == (
                code.scheme,
                code.value,
                code.meaning,
            )
        modifiers = item.SegmentedPropertyTypeCodeSequence[0].get("SegmentedPropertyTypeModifierCodeSequence", [])
        got = [(m.CodingSchemeDesignator, m.CodeValue, m.CodeMeaning) for m in modifiers]
        want = [(concept.modifier.scheme, concept.modifier.value, concept.modifier.meaning)] if concept.modifier else []
        assert got == want
        rgb = hd.color.CIELabColor.from_dicom_value(tuple(item.RecommendedDisplayCIELabValue)).to_rgb()
        np.testing.assert_allclose(rgb, segment.color, atol=2)


def test_dicom_seg_needs_a_dicom_reference_on_the_same_grid(tmp_path: Path, kmeans_nifti: Path) -> None:
    image = read_image(kmeans_nifti)
    with pytest.raises(ValueError, match="DICOM"):
        write_label_map(image.array, image.geometry, tmp_path / "s.dcm", table=TABLE, reference=image)
    with pytest.raises(ValueError, match="reference"):
        write_label_map(image.array, image.geometry, tmp_path / "s.dcm", table=TABLE)


def test_write_rejects_bad_labels_and_formats(tmp_path: Path, kmeans_nifti: Path) -> None:
    image = read_image(kmeans_nifti)
    small = LabelTable(name="small", labels={0: "background", 1: "csf"})
    with pytest.raises(MedsegInputError, match="not in label table"):
        write_label_map(image.array, image.geometry, tmp_path / "l.nii.gz", table=small)
    with pytest.raises(ValueError, match="format"):
        write_label_map(image.array, image.geometry, tmp_path / "l.png", table=TABLE)
    with pytest.raises(ValueError, match="does not match the file ending"):
        write_label_map(image.array, image.geometry, tmp_path / "l.nii.gz", table=TABLE, fmt="seg.nrrd")
    with pytest.raises(ValueError, match="does not match grid"):
        write_label_map(image.array[:-1], image.geometry, tmp_path / "l.nii.gz", table=TABLE)
    assert not any(tmp_path.iterdir())


def test_writers_refuse_to_overwrite_their_input(tmp_path: Path, kmeans_nifti: Path, dicom_files: list[Path]) -> None:
    copy = tmp_path / "labels.nii.gz"
    shutil.copy(kmeans_nifti, copy)
    image = read_image(copy)
    before = copy.read_bytes()
    with pytest.raises(MedsegInputError, match="refusing to overwrite"):
        write_label_map(image.array, image.geometry, copy, table=TABLE, reference=image)
    with pytest.raises(MedsegInputError, match="refusing to overwrite"):
        write_nifti(image.array, image.geometry, tmp_path / "." / "labels.nii.gz", reference=image)
    assert copy.read_bytes() == before
    folder = tmp_path / "series"
    folder.mkdir()
    for f in dicom_files:
        shutil.copy(f, folder / f.name)
    series = read_dicom_series(folder)
    labels = np.zeros(series.geometry.shape, dtype=np.uint8)
    with pytest.raises(MedsegInputError, match="refusing to overwrite"):
        write_label_map(labels, series.geometry, folder / "brain_003.dcm", table=TABLE, reference=series)
    with pytest.raises(MedsegInputError, match="refusing to overwrite"):
        write_label_map(labels, series.geometry, folder / "seg.dcm", table=TABLE, reference=series)


def test_probabilities_are_4d_float32_nifti(tmp_path: Path, kmeans_nifti: Path) -> None:
    image = read_image(kmeans_nifti)
    probs = np.random.default_rng(0).random((3, *image.geometry.shape))
    out = write_probabilities(probs, image.geometry, tmp_path / "p.nii.gz", reference=image)
    back = read_nifti(out, dtype=None)
    assert back.array.dtype == np.float32 and back.array.shape == probs.shape
    np.testing.assert_allclose(back.array, probs, atol=1e-7)
    np.testing.assert_allclose(back.geometry.affine, image.geometry.affine, atol=1e-5)
    with pytest.raises(ValueError, match="C, X, Y, Z"):
        write_probabilities(probs[0], image.geometry, tmp_path / "q.nii.gz")
