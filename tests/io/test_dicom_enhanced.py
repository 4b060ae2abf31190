"""Enhanced (multi-frame) DICOM: read onto the same grid and values as the classic series it was made from.

The enhanced files are made here: by highdicom's legacy conversion (an independent writer) from the real
oblique MR series and from a synthetic CT series, and by :func:`_enhanced` (frames in any order, geometry
in the shared or the per-frame functional groups, several temporal positions or stacks).
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from medseg.errors import MedsegInputError
from medseg.io import list_dicom_series, read_dicom_series, read_image, write_label_map


def _save(ds: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(str(path), enforce_file_format=True)
    return path


def _legacy_converted(slices: list[Any], modality: str) -> Any:
    import highdicom as hd

    convert = {"MR": hd.legacy.LegacyConvertedEnhancedMRImage, "CT": hd.legacy.LegacyConvertedEnhancedCTImage}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # highdicom notes on optional attributes
        return convert[modality](
            slices, series_instance_uid=hd.UID(), series_number=7, sop_instance_uid=hd.UID(), instance_number=1
        )


def _item(**elements: Any) -> Any:
    from pydicom.dataset import Dataset

    ds = Dataset()
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    return ds


def _enhanced(
    slices: Sequence[Any],
    *,
    order: Sequence[int] | None = None,
    shared_geometry: bool = True,
    temporal: Sequence[int] | None = None,
    stacks: Sequence[str] | None = None,
) -> Any:
    """An Enhanced MR Image dataset holding ``slices`` (classic datasets) as frames in ``order``: position
    per frame; orientation, pixel spacing and rescale shared (``shared_geometry``) or per frame; optional
    TemporalPositionIndex and StackID per frame (in ``order``)."""
    from pydicom.uid import EnhancedMRImageStorage, generate_uid

    order = list(range(len(slices))) if order is None else list(order)
    first = slices[0]
    ds = copy.deepcopy(first)
    for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "SliceThickness",
                    "RescaleSlope", "RescaleIntercept", "RescaleType", "InstanceNumber"):  # fmt: skip
        if keyword in ds:
            delattr(ds, keyword)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = EnhancedMRImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.NumberOfFrames = len(order)

    def geometry(src: Any) -> dict[str, Any]:
        return {
            "PlaneOrientationSequence": [_item(ImageOrientationPatient=src.ImageOrientationPatient)],
            "PixelMeasuresSequence": [_item(PixelSpacing=src.PixelSpacing, SliceThickness=src.SliceThickness)],
            "PixelValueTransformationSequence": [
                _item(
                    RescaleSlope=src.get("RescaleSlope", 1),
                    RescaleIntercept=src.get("RescaleIntercept", 0),
                    RescaleType=src.get("RescaleType", "US"),
                )
            ],
        }

    if shared_geometry:
        ds.SharedFunctionalGroupsSequence = [_item(**geometry(first))]
    frames = []
    for n, index in enumerate(order):
        src = slices[index]
        content: dict[str, Any] = {}
        if temporal is not None:
            content["TemporalPositionIndex"] = temporal[n]
        if stacks is not None:
            content["StackID"] = stacks[n]
        groups = {"PlanePositionSequence": [_item(ImagePositionPatient=src.ImagePositionPatient)]}
        if content:
            groups["FrameContentSequence"] = [_item(**content)]
        frames.append(_item(**groups, **({} if shared_geometry else geometry(src))))
    ds.PerFrameFunctionalGroupsSequence = frames
    ds.PixelData = b"".join(slices[i].PixelData for i in order)
    return ds


@pytest.fixture(scope="module")
def classic(dicom_dir: Path) -> Any:
    return read_dicom_series(dicom_dir)


@pytest.fixture(scope="module")
def mr_slices(oblique_datasets: list[Any]) -> list[Any]:
    return oblique_datasets


def _assert_same(image: Any, reference: Any) -> None:
    assert image.array.dtype == reference.array.dtype
    np.testing.assert_array_equal(image.array, reference.array)
    np.testing.assert_allclose(image.geometry.affine, reference.geometry.affine, atol=1e-6)


def test_legacy_converted_enhanced_mr_reads_as_the_classic_series(
    tmp_path: Path, classic: Any, mr_slices: list[Any]
) -> None:
    path = _save(_legacy_converted(mr_slices, "MR"), tmp_path / "enhanced" / "MR.dcm")
    (info,) = list_dicom_series(tmp_path)
    assert info.num_slices == 20 and info.files == (path,)
    image = read_image(path)
    _assert_same(image, classic)
    assert image.meta["dicom_files"] == [path] * 20
    assert sorted(image.meta["dicom_frame_numbers"]) == list(range(1, 21))


def test_legacy_converted_enhanced_ct_keeps_the_rescale(tmp_path: Path, ct_slices: Callable[..., list[Any]]) -> None:
    volume = (np.arange(4 * 24 * 20).reshape(4, 24, 20) * 13 % 4000).astype(np.uint16)
    slices = ct_slices(volume, seed="enhanced-ct")
    for k, ds in enumerate(slices):
        _save(ds, tmp_path / "classic" / f"CT{k}")
    reference = read_dicom_series(tmp_path / "classic")
    np.testing.assert_array_equal(reference.array, np.transpose(volume.astype(np.int16) - 1024, (2, 1, 0)))
    _save(_legacy_converted(slices, "CT"), tmp_path / "enhanced" / "CT.dcm")
    _assert_same(read_dicom_series(tmp_path / "enhanced"), reference)


@pytest.mark.parametrize("shared_geometry", [True, False], ids=["shared", "per-frame"])
def test_frames_in_any_order_with_shared_or_per_frame_geometry(
    tmp_path: Path, classic: Any, mr_slices: list[Any], shared_geometry: bool
) -> None:
    order = np.random.default_rng(3).permutation(20)
    _save(_enhanced(mr_slices, order=order, shared_geometry=shared_geometry), tmp_path / "IM0001")
    image = read_dicom_series(tmp_path)
    _assert_same(image, classic)
    assert image.meta["dicom_frame_numbers"] == [int(np.flatnonzero(order == k)[0]) + 1 for k in range(20)]


def test_simpleitk_agrees_on_the_geometry(tmp_path: Path, sitk_series: Any, mr_slices: list[Any]) -> None:
    """SimpleITK (GDCM) reads the same enhanced file onto the grid of the classic series."""
    import SimpleITK as sitk

    path = _save(_legacy_converted(mr_slices, "MR"), tmp_path / "MR.dcm")
    image = read_dicom_series(tmp_path)
    reference = sitk.ReadImage(str(path))
    assert image.geometry.shape == tuple(reference.GetSize())
    np.testing.assert_allclose(image.geometry.origin, reference.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(image.geometry.direction.ravel(), reference.GetDirection(), atol=1e-4)
    np.testing.assert_allclose(image.geometry.spacing, sitk_series.GetSpacing(), atol=1e-3)
    np.testing.assert_array_equal(image.array, np.transpose(sitk.GetArrayFromImage(reference), (2, 1, 0)))


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda s: _enhanced([*s, *s], temporal=[1] * 20 + [2] * 20), "2 temporal positions .a 4-D volume"),
        (lambda s: _enhanced([*s, *s], stacks=["1"] * 20 + ["2"] * 20), "2 stacks"),
        (lambda s: _enhanced([*s, *s]), "several frames share one position .a 4-D volume"),
    ],
    ids=["temporal", "stacks", "duplicate-positions"],
)
def test_several_volumes_in_one_file_are_refused_by_name(
    tmp_path: Path, mr_slices: list[Any], build: Callable[[list[Any]], Any], message: str
) -> None:
    _save(build(mr_slices), tmp_path / "IM0001")
    with pytest.raises(MedsegInputError, match=message) as info:
        read_dicom_series(tmp_path)
    assert "need at least 2 slices" not in str(info.value)


def test_dicom_seg_of_an_enhanced_series_references_each_frame(tmp_path: Path, mr_slices: list[Any]) -> None:
    import pydicom

    from medseg.labels import LabelTable

    order = np.random.default_rng(4).permutation(20)
    source = _save(_enhanced(mr_slices, order=order), tmp_path / "in" / "IM0001")
    image = read_dicom_series(tmp_path / "in")
    labels = np.zeros(image.geometry.shape, np.uint8)
    for k in range(0, 20, 3):
        labels[10 * (k % 5) : 10 * (k % 5) + 40, 60:90, k] = 1  # a different square on every third slice
    table = LabelTable(name="tissue", labels={0: "background", 1: "tissue"})
    out = write_label_map(labels, image.geometry, tmp_path / "seg.dcm", table=table, reference=image, fmt="dicom-seg")

    seg, source_ds = pydicom.dcmread(str(out)), pydicom.dcmread(str(source), stop_before_pixels=True)
    k_of_frame = {n: k for k, n in enumerate(image.meta["dicom_frame_numbers"])}
    pixels = seg.pixel_array.reshape(int(seg.NumberOfFrames), int(seg.Rows), int(seg.Columns))
    assert len(pixels) == 7
    for f, item in enumerate(seg.PerFrameFunctionalGroupsSequence):
        referenced = item.DerivationImageSequence[0].SourceImageSequence[0]
        assert referenced.ReferencedSOPInstanceUID == source_ds.SOPInstanceUID
        k = k_of_frame[int(referenced.ReferencedFrameNumber)]
        np.testing.assert_array_equal(pixels[f].astype(bool), labels[:, :, k].T.astype(bool), err_msg=f"frame {f}")
        position = item.PlanePositionSequence[0].ImagePositionPatient
        frame = source_ds.PerFrameFunctionalGroupsSequence[int(referenced.ReferencedFrameNumber) - 1]
        np.testing.assert_allclose(position, frame.PlanePositionSequence[0].ImagePositionPatient, atol=1e-4)
