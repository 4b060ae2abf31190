"""DICOM series reading against SimpleITK, with shuffled, mixed, incomplete and uneven series."""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom.uid import generate_uid

from medseg.errors import MedsegInputError
from medseg.io import list_dicom_series, read_dicom_series, read_image
from medseg.io.dicom import SLICE_TOLERANCE, is_dicom_file


@pytest.fixture(scope="module")
def series(dicom_dir: Path) -> Any:
    return read_dicom_series(dicom_dir)


def test_real_oblique_series_matches_simpleitk(series: Any, sitk_series: Any) -> None:
    import SimpleITK as sitk

    spacing, origin = np.array(sitk_series.GetSpacing()), np.array(sitk_series.GetOrigin())
    direction = np.array(sitk_series.GetDirection()).reshape(3, 3)
    assert series.geometry.shape == tuple(sitk_series.GetSize()) == (256, 256, 20)
    np.testing.assert_allclose(series.geometry.spacing, spacing, atol=1e-4)
    np.testing.assert_allclose(series.geometry.origin, origin, atol=1e-4)
    np.testing.assert_allclose(series.geometry.direction, direction, atol=1e-4)
    expected = np.transpose(sitk.GetArrayFromImage(sitk_series), (2, 1, 0))
    assert series.array.dtype == expected.dtype
    np.testing.assert_array_equal(series.array, expected)


def test_affine_is_ras_and_oblique(series: Any) -> None:
    affine = series.geometry.affine
    # DICOM LPS x = -110.5 mm is RAS x = +110.5 mm; the slice axis tilts ~7.7 degrees towards anterior.
    np.testing.assert_allclose(affine[:3, 3], [110.5, 78.3063, -72.7575], atol=1e-4)
    tilt = np.degrees(np.arccos(affine[2, 2] / np.linalg.norm(affine[:3, 2])))
    assert 7.0 < tilt < 8.5
    assert affine[1, 2] > 0  # k runs towards anterior (LPS y decreases)


def test_meta_lists_sources_in_slice_order(series: Any) -> None:
    import pydicom

    files = series.meta["dicom_files"]
    assert len(files) == 20 and len(series.meta["sop_instance_uids"]) == 20
    normal = series.geometry.direction[:, 2]  # LPS
    along = [
        float(np.dot(pydicom.dcmread(str(f), stop_before_pixels=True).ImagePositionPatient, normal)) for f in files
    ]
    assert np.all(np.diff(along) > 0)


def test_read_image_dispatches_folder_to_dicom(series: Any, dicom_dir: Path) -> None:
    image = read_image(dicom_dir)
    assert image.geometry.same_grid(series.geometry, atol=1e-9)


def test_shuffled_renamed_nested_files_read_identically(tmp_path: Path, series: Any, dicom_files: list[Path]) -> None:
    rng = np.random.default_rng(0)
    order = rng.permutation(20)
    target = tmp_path / "export" / "nested"
    target.mkdir(parents=True)
    for new_index, old_index in enumerate(order):
        shutil.copy(dicom_files[old_index], target / f"IM{new_index:04d}")
    (tmp_path / "export" / "README.txt").write_text("not a DICOM file")
    image = read_dicom_series(tmp_path / "export")
    assert image.geometry.same_grid(series.geometry, atol=1e-9)
    np.testing.assert_array_equal(image.array, series.array)


def test_instance_numbers_are_ignored(tmp_path: Path, series: Any, copy_series: Any) -> None:
    def scramble(ds: Any, index: int) -> None:
        ds.InstanceNumber = (index * 7) % 20 + 1

    copy_series(tmp_path, modify=scramble)
    np.testing.assert_array_equal(read_dicom_series(tmp_path).array, series.array)


def test_two_series_in_one_folder_are_split(tmp_path: Path, series: Any, copy_series: Any, new_series: Any) -> None:
    copy_series(tmp_path)
    other = new_series("second")

    def brighter(ds: Any, index: int) -> None:
        other(ds, index)
        ds.SeriesDescription = "copy"
        ds.PixelData = (ds.pixel_array + 1).astype(np.int16).tobytes()

    copy_series(tmp_path, modify=brighter, names=lambda i: f"copy_{i:03d}.dcm")
    infos = list_dicom_series(tmp_path)
    assert len(infos) == 2 and all(info.num_slices == 20 for info in infos)
    with pytest.raises(MedsegInputError, match="several DICOM series"):
        read_dicom_series(tmp_path)
    by_description = {info.description: info.series_uid for info in infos}
    original = read_dicom_series(tmp_path, series_uid=by_description["FSE PD AXIAL OBL"])
    copy = read_dicom_series(tmp_path, series_uid=by_description["copy"])
    np.testing.assert_array_equal(original.array, series.array)
    np.testing.assert_array_equal(copy.array, series.array + 1)
    assert set(original.meta["dicom_files"]).isdisjoint(copy.meta["dicom_files"])


def test_missing_middle_slice_is_an_error(tmp_path: Path, copy_series: Any, dicom_files: list[Path]) -> None:
    files = [f for f in dicom_files if f.name != "brain_010.dcm"]
    copy_series(tmp_path, files=files)
    with pytest.raises(MedsegInputError, match="slice may be missing") as info:
        read_dicom_series(tmp_path)
    assert info.value.path == tmp_path
    assert "0.0.0.0.3.8811.2.20010413115754.12432" in str(info.value)


@pytest.mark.parametrize(("shift", "ok"), [(0.04, True), (0.2, False)])
def test_slice_spacing_tolerance(tmp_path: Path, shift: float, ok: bool, copy_series: Any) -> None:
    """One slice moved along the normal by ``shift`` x the 7 mm step: within 10 % reads, beyond fails."""
    assert SLICE_TOLERANCE == 0.10

    def move(ds: Any, index: int) -> None:
        if index == 9:
            iop = np.array(ds.ImageOrientationPatient, dtype=float)
            normal = np.cross(iop[:3], iop[3:])
            ds.ImagePositionPatient = [f"{v:.4f}" for v in np.array(ds.ImagePositionPatient) + shift * 7.0 * normal]

    copy_series(tmp_path, modify=move)
    if ok:
        assert read_dicom_series(tmp_path).geometry.shape == (256, 256, 20)
    else:
        with pytest.raises(MedsegInputError, match="uneven slice spacing"):
            read_dicom_series(tmp_path)


def test_sheared_series_is_an_error(tmp_path: Path, copy_series: Any) -> None:
    def shear(ds: Any, index: int) -> None:
        ds.ImagePositionPatient = [
            f"{v:.4f}" for v in np.array(ds.ImagePositionPatient) + np.array([0.5 * index, 0, 0])
        ]

    copy_series(tmp_path, modify=shear)
    with pytest.raises(MedsegInputError, match="sheared"):
        read_dicom_series(tmp_path)


def test_single_slice_and_localizer_series_are_skipped(
    tmp_path: Path, series: Any, copy_series: Any, new_series: Any, dicom_files: list[Path]
) -> None:
    copy_series(tmp_path)
    single = new_series("single")

    def as_single(ds: Any, index: int) -> None:
        single(ds, index)
        ds.SeriesDescription = "single"

    copy_series(tmp_path, files=dicom_files[:1], modify=as_single, names=lambda i: "single.dcm")
    localizer = new_series("localizer")

    def as_localizer(ds: Any, index: int) -> None:
        localizer(ds, index)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
        ds.SeriesDescription = "localizer"

    copy_series(tmp_path, files=dicom_files[:3], modify=as_localizer, names=lambda i: f"loc{i}.dcm")
    assert [info.num_slices for info in list_dicom_series(tmp_path)] == [20]
    reasons = {info.description: info.skip_reason for info in list_dicom_series(tmp_path, include_skipped=True)}
    assert reasons == {"FSE PD AXIAL OBL": None, "single": "single-image series", "localizer": "localizer series"}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # skipping is said once, by the batch's case discovery, not here
        image = read_dicom_series(tmp_path)
    np.testing.assert_array_equal(image.array, series.array)
    with pytest.raises(MedsegInputError, match="not a volume: localizer series"):
        read_dicom_series(tmp_path, series_uid=generate_uid(entropy_srcs=["localizer"]))


def test_rescale_slope_and_intercept_are_applied(tmp_path: Path, series: Any, copy_series: Any) -> None:
    def rescale(ds: Any, index: int) -> None:
        ds.RescaleSlope = "2.5"
        ds.RescaleIntercept = "-100"

    copy_series(tmp_path, modify=rescale)
    image = read_dicom_series(tmp_path)
    assert image.array.dtype == np.float32
    np.testing.assert_allclose(image.array, series.array * 2.5 - 100)


def test_folder_without_series_is_an_error(tmp_path: Path, dicom_dir: Path) -> None:
    (tmp_path / "notes.txt").write_text("nothing here")
    with pytest.raises(MedsegInputError, match="no readable DICOM image series"):
        read_dicom_series(tmp_path)
    with pytest.raises(MedsegInputError, match=r"SeriesInstanceUID 1\.2\.3"):
        read_dicom_series(dicom_dir, series_uid="1.2.3")


def test_truncated_dicom_file_names_the_file(tmp_path: Path, copy_series: Any) -> None:
    copy_series(tmp_path)
    victim = tmp_path / "brain_005.dcm"
    victim.write_bytes(victim.read_bytes()[:60_000])
    with pytest.raises(MedsegInputError) as info:
        read_dicom_series(tmp_path)
    assert info.value.path == victim


def test_read_image_of_one_file_reads_its_series(tmp_path: Path, series: Any, copy_series: Any) -> None:
    copy_series(tmp_path)
    (tmp_path / "nested").mkdir()  # not searched for a single file
    image = read_image(tmp_path / "brain_007.dcm")
    np.testing.assert_array_equal(image.array, series.array)
    assert image.geometry.same_grid(series.geometry, atol=1e-9)


@pytest.mark.parametrize(
    "names", ["I.MRDC.{}", "PAT.MR.0002.{:04d}.2001.04.13.IMA", "{:08d}"], ids=["ge", "siemens", "none"]
)
def test_files_are_dicom_by_content_whatever_their_names(
    tmp_path: Path, series: Any, dicom_files: list[Path], names: str
) -> None:
    for k, src in enumerate(dicom_files, start=1):
        shutil.copy(src, tmp_path / names.format(k))
    (tmp_path / "notes.IMA").write_bytes(b"\0" * 128 + b"DICX not DICOM")
    (tmp_path / "short.MRDC.99").write_bytes(b"DICM")
    assert is_dicom_file(tmp_path / names.format(7)) and not is_dicom_file(tmp_path / "notes.IMA")
    assert not is_dicom_file(tmp_path / "short.MRDC.99") and not is_dicom_file(tmp_path / "missing")
    np.testing.assert_array_equal(read_dicom_series(tmp_path).array, series.array)
    image = read_image(tmp_path / names.format(7))
    np.testing.assert_array_equal(image.array, series.array)
    assert image.geometry.same_grid(series.geometry, atol=1e-9)
    with pytest.raises(MedsegInputError, match="unknown image format"):
        read_image(tmp_path / "notes.IMA")


def _mosaic(count_tag: bool, image_type: bool) -> Callable[[Any, int], None]:
    """A ``modify`` that turns slices into Siemens mosaics (the count in the private CSA header field
    NumberOfImagesInMosaic and/or MOSAIC in ImageType), all at one position as a mosaic time series is."""
    series = generate_uid(entropy_srcs=["mosaic", str(count_tag), str(image_type)])

    def modify(ds: Any, index: int) -> None:
        ds.SeriesInstanceUID = series
        ds.ImagePositionPatient = [-110.5, -78.3063, -72.7575]
        if image_type:
            ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND", "MOSAIC"]
        if count_tag:
            ds.private_block(0x0019, "SIEMENS MR HEADER", create=True).add_new(0x0A, "US", 16)

    return modify


@pytest.mark.parametrize(
    ("files", "count_tag", "image_type", "message"),
    [
        (1, True, True, r"Siemens mosaic \(16 slices tiled in one image, 1 file"),
        (3, True, False, r"Siemens mosaic \(16 slices tiled in one image, 3 file"),
        (2, False, True, r"Siemens mosaic \(several slices tiled in one image, 2 file"),
    ],
    ids=["one-file", "time-series-by-csa-count", "by-image-type"],
)
def test_siemens_mosaics_are_refused_by_name(
    tmp_path: Path,
    copy_series: Any,
    dicom_files: list[Path],
    files: int,
    count_tag: bool,
    image_type: bool,
    message: str,
) -> None:
    copy_series(tmp_path, files=dicom_files[5 : 5 + files], modify=_mosaic(count_tag, image_type))
    (info,) = list_dicom_series(tmp_path)  # listed, so that a batch names the reason in its failed case
    assert info.skip_reason is None
    with pytest.raises(MedsegInputError, match=message) as error:
        read_image(tmp_path / dicom_files[5].name)
    assert "need at least 2 slices" not in str(error.value) and "share one position" not in str(error.value)


def test_each_header_is_parsed_once_per_folder(
    tmp_path: Path, copy_series: Any, new_series: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Finding the series of a folder and then reading each of them parses every file's header once; a
    file that changes is parsed again."""
    import pydicom

    copy_series(tmp_path)
    copy_series(tmp_path, modify=new_series("second"), names=lambda i: f"second_{i:03d}.dcm")
    parsed: list[str] = []
    dcmread = pydicom.dcmread

    def counting(path: Any, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("stop_before_pixels"):
            parsed.append(Path(path).name)
        return dcmread(path, *args, **kwargs)

    monkeypatch.setattr(pydicom, "dcmread", counting)
    infos = list_dicom_series(tmp_path)
    for info in infos:
        assert read_dicom_series(tmp_path, series_uid=info.series_uid).geometry.shape == (256, 256, 20)
    assert sorted(parsed) == sorted(p.name for p in tmp_path.iterdir())

    parsed.clear()
    changed = pydicom.dcmread(str(tmp_path / "brain_003.dcm"))
    changed.SeriesDescription = "changed"
    changed.SeriesInstanceUID = generate_uid(entropy_srcs=["changed"])
    changed.save_as(str(tmp_path / "brain_003.dcm"))
    descriptions = {info.description for info in list_dicom_series(tmp_path, include_skipped=True)}
    assert "changed" in descriptions and parsed == ["brain_003.dcm"]


def test_modality_lut_is_applied(tmp_path: Path, ct_slices: Callable[..., list[Any]]) -> None:
    from pydicom.dataset import Dataset

    volume = (np.arange(3 * 8 * 6).reshape(3, 8, 6) * 50 % 4096).astype(np.uint16)
    for k, ds in enumerate(ct_slices(volume, seed="lut")):
        del ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType
        lut = Dataset()
        lut.LUTDescriptor, lut.ModalityLUTType = [4096, 0, 16], "HU"
        lut.add_new("LUTData", "US", [3 * v // 2 for v in range(4096)])
        ds.ModalityLUTSequence = [lut]
        ds.save_as(tmp_path / f"CT{k}", enforce_file_format=True)
    image = read_dicom_series(tmp_path)
    assert image.array.dtype == np.int32
    np.testing.assert_array_equal(image.array, np.transpose(volume.astype(np.int32) * 3 // 2, (2, 1, 0)))
