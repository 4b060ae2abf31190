"""Case discovery (BraTS, nnU-Net, MSD, DICOM, plain files, JSON lists) and shards."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medseg.data.cases import InputCase, Shard, discover_cases, read_cases_file, select_shard
from medseg.errors import MedsegInputError

DATA = Path(__file__).resolve().parent / "data"
BRATS_CHANNELS = ["T1", "T1ce", "T2", "FLAIR"]


def _nifti(path: Path, shape: tuple[int, ...] = (4, 4, 3)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.zeros(shape, dtype=np.float32), np.eye(4)), str(path))
    return path


def test_single_file_and_nnunet_channel_files(tmp_path: Path) -> None:
    one = _nifti(tmp_path / "single" / "scan.nii.gz")
    assert discover_cases(one, channels=["CT"]) == [InputCase("scan", (one,))]
    for case in ("b", "a"):
        for c in range(2):
            _nifti(tmp_path / "nn" / f"{case}_{c:04d}.nii.gz")
    cases = discover_cases(tmp_path / "nn", channels=["T1", "T2"])
    assert [c.id for c in cases] == ["a", "b"]
    assert [p.name for p in cases[0].images] == ["a_0000.nii.gz", "a_0001.nii.gz"]
    # one-channel model: CASE_0000 is case CASE
    (tmp_path / "nn" / "b_0001.nii.gz").unlink()
    (tmp_path / "nn" / "a_0001.nii.gz").unlink()
    assert [c.id for c in discover_cases(tmp_path / "nn", channels=["CT"])] == ["a", "b"]


def test_missing_channel_file_stays_in_the_case_and_names_the_file(tmp_path: Path) -> None:
    _nifti(tmp_path / "x_0000.nii.gz")
    (case,) = discover_cases(tmp_path, channels=["T1", "T2"])
    assert case.images[1] == tmp_path / "x_0001.nii.gz" and not case.images[1].exists()


def test_brats_case_folders_follow_the_checkpoint_channel_order(tmp_path: Path) -> None:
    for release, names in (("2021", ["t1", "t1ce", "t2", "flair"]), ("2023", ["t1n", "t1c", "t2w", "t2f"])):
        case_id = "BraTS2021_00001" if release == "2021" else "BraTS-GLI-00002-000"
        sep = "_" if release == "2021" else "-"
        for m in [*names, "seg"]:
            _nifti(tmp_path / "root" / release / case_id / f"{case_id}{sep}{m}.nii.gz")
    cases = {c.id: c for c in discover_cases(tmp_path / "root", channels=["FLAIR", "T1", "T1ce", "T2"])}
    assert [p.name for p in cases["BraTS2021_00001"].images] == [
        "BraTS2021_00001_flair.nii.gz",
        "BraTS2021_00001_t1.nii.gz",
        "BraTS2021_00001_t1ce.nii.gz",
        "BraTS2021_00001_t2.nii.gz",
    ]
    assert cases["BraTS-GLI-00002-000"].images[0].name == "BraTS-GLI-00002-000-t2f.nii.gz"


def _nrrd(path: Path, shape: tuple[int, int, int] = (4, 4, 3)) -> Path:
    import SimpleITK as sitk

    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros(shape[::-1], np.float32)), str(path))
    return path


def test_brats_case_folders_of_nrrd_channels_are_one_case(tmp_path: Path) -> None:
    """``<case>_t1.nrrd`` ... is one four-channel case, as ``<case>_t1.nii.gz`` is; before, each channel
    file became a one-channel case of its own. The dataset scanner and the reference finder agree."""
    from medseg.data.brats import scan_brats
    from medseg.evaluation import find_references

    case_id = "BraTS2021_00007"
    for m in ("t1", "t1ce", "t2", "flair", "seg"):
        _nrrd(tmp_path / "root" / case_id / f"{case_id}_{m}.nrrd")
    (case,) = discover_cases(tmp_path / "root", channels=BRATS_CHANNELS)
    assert case.id == case_id
    assert [p.name for p in case.images] == [f"{case_id}_{m}.nrrd" for m in ("t1", "t1ce", "t2", "flair")]
    (scanned,) = scan_brats(tmp_path / "root").cases
    assert scanned.images == tuple(f"{case_id}/{p.name}" for p in case.images)
    assert scanned.label == f"{case_id}/{case_id}_seg.nrrd"
    refs = find_references(tmp_path / "root")
    assert (refs.layout, refs.files) == ("brats2021", {case_id: tmp_path / "root" / case_id / f"{case_id}_seg.nrrd"})


def test_msd_root_uses_images_ts_with_4d_files(tmp_path: Path) -> None:
    meta = {"modality": dict(enumerate(BRATS_CHANNELS)), "labels": {"0": "background", "1": "tumour"}}
    (tmp_path / "dataset.json").write_text(json.dumps(meta))
    _nifti(tmp_path / "imagesTr" / "BRATS_001.nii.gz", (4, 4, 3, 4))
    _nifti(tmp_path / "labelsTr" / "BRATS_001.nii.gz")
    ts = _nifti(tmp_path / "imagesTs" / "BRATS_484.nii.gz", (4, 4, 3, 4))
    assert discover_cases(tmp_path, channels=BRATS_CHANNELS) == [InputCase("BRATS_484", (ts,))]
    with pytest.raises(MedsegInputError, match=r"the dataset's cases have 4 channel\(s\) .*the model takes 1") as info:
        discover_cases(tmp_path, channels=["CT"])
    assert info.value.path == tmp_path / "dataset.json"
    (tmp_path / "dataset.json").write_text(json.dumps({"modality": {"0": "CT"}}))
    with pytest.raises(MedsegInputError, match='needs a non-empty "labels"') as info:
        discover_cases(tmp_path, channels=["CT"])
    assert info.value.path == tmp_path / "dataset.json"


def test_recursive_mixed_formats_dicom_hidden_excluded_and_clashing_ids(tmp_path: Path) -> None:
    shutil.copytree(DATA / "dicom_mr_oblique", tmp_path / "in" / "patient1" / "mr")
    _nifti(tmp_path / "in" / "site_a" / "scan.nii.gz")
    _nifti(tmp_path / "in" / "site_b" / "scan.nii.gz")
    (tmp_path / "in" / "site_b" / "vol.mha").write_bytes(b"")
    (tmp_path / "in" / "site_b" / "vol.seg.nrrd").write_bytes(b"")  # a label map, not a case
    (tmp_path / "in" / "site_b" / "notes.txt").write_text("x")
    _nifti(tmp_path / "in" / ".cache" / "hidden.nii.gz")
    _nifti(tmp_path / "in" / "out" / "previous.nii.gz")
    cases = discover_cases(tmp_path / "in", channels=["MR"], exclude=[tmp_path / "in" / "out"])
    by_id = {c.id: c for c in cases}
    assert sorted(by_id) == ["mr", "site_a__scan", "site_b__scan", "vol"]
    assert by_id["mr"].is_dicom and by_id["mr"].images == (tmp_path / "in" / "patient1" / "mr",)
    assert not by_id["vol"].is_dicom
    # a DICOM folder, and one of its files, are one case
    (folder_case,) = discover_cases(tmp_path / "in" / "patient1" / "mr", channels=["MR"])
    (file_case,) = discover_cases(tmp_path / "in" / "patient1" / "mr" / "brain_007.dcm", channels=["MR"])
    assert folder_case == file_case == by_id["mr"]


def _localizer(src: Path, dst: Path, index: int) -> None:
    """Copy a slice of the oblique series into a localizer series of its own."""
    import pydicom
    from pydicom.uid import generate_uid

    ds = pydicom.dcmread(str(src))
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=["localizer"])
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=["localizer", str(index)])
    ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    ds.SeriesDescription = "3-plane loc"
    dst.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(str(dst))


def test_dicom_files_are_found_by_content_and_localizers_are_no_case(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sources = sorted((DATA / "dicom_mr_oblique").glob("*.dcm"))
    (tmp_path / "study" / "ge").mkdir(parents=True)
    for k, src in enumerate(sources, start=1):
        shutil.copy(src, tmp_path / "study" / "ge" / f"I.MRDC.{k}")
    for k, src in enumerate(sources[2:5]):
        _localizer(src, tmp_path / "study" / "loc" / f"MR.{k}.IMA", k)
    cases = discover_cases(tmp_path / "study", channels=["MR"])
    assert [(c.id, c.is_dicom) for c in cases] == [("ge", True)]
    notes = capsys.readouterr().err.strip().splitlines()
    assert len(notes) == 1 and notes[0].startswith("medseg: note: ") and "localizer series" in notes[0], notes
    assert "3-plane loc" in notes[0]
    (one,) = discover_cases(tmp_path / "study" / "ge" / "I.MRDC.7", channels=["MR"])
    assert one == cases[0]


def test_no_cases_and_missing_input_are_one_line_errors(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(MedsegInputError, match="no cases found"):
        discover_cases(tmp_path, channels=["CT"])
    with pytest.raises(MedsegInputError, match="not found"):
        discover_cases(tmp_path / "nope", channels=["CT"])
    with pytest.raises(MedsegInputError, match="not an image file"):
        discover_cases(tmp_path / "notes.txt", channels=["CT"])
    (tmp_path / "loop.nii.gz").symlink_to("loop.nii.gz")
    with pytest.raises(MedsegInputError, match=r"loop\.nii\.gz: file not found: a symbolic link that loops"):
        discover_cases(tmp_path / "loop.nii.gz", channels=["CT"])


def test_cases_json_lists_and_channel_objects(tmp_path: Path) -> None:
    spec = [
        {"id": "b", "images": {"T2": "b_t2.nii.gz", "T1": "sub/b_t1.nii.gz"}},
        {"id": "a", "images": ["a1.nii.gz", "/abs/a2.nii.gz"]},
    ]
    path = tmp_path / "cases.json"
    path.write_text(json.dumps(spec))
    cases = read_cases_file(path, channels=["T1", "T2"])
    assert [c.id for c in cases] == ["a", "b"]
    assert cases[0].images == (tmp_path / "a1.nii.gz", Path("/abs/a2.nii.gz"))
    assert cases[1].images == (tmp_path / "sub" / "b_t1.nii.gz", tmp_path / "b_t2.nii.gz")
    for bad, match in [
        ({"id": "a"}, "images"),
        ([{"images": ["x"]}], '"id"'),
        ([{"id": "a", "images": {"T1": "x"}}], "channels"),
        ([{"id": "a", "images": ["x"]}, {"id": "a", "images": ["y"]}], "duplicate"),
    ]:
        path.write_text(json.dumps(bad))
        with pytest.raises(MedsegInputError, match=match):
            read_cases_file(path, channels=["T1", "T2"])


def test_shards_partition_the_cases_deterministically() -> None:
    cases = [InputCase(f"case_{i:03d}", (Path(f"/x/{i}.nii.gz"),)) for i in range(60)]
    for count in (1, 2, 3, 7):
        parts = [select_shard(cases, Shard(i, count)) for i in range(1, count + 1)]
        ids = [c.id for part in parts for c in part]
        assert sorted(ids) == [c.id for c in cases]  # union is all, nothing twice
        assert len(set(ids)) == len(ids)
        assert parts == [select_shard(list(reversed(cases))[::-1], Shard(i, count)) for i in range(1, count + 1)]
        if count > 1:
            assert all(part for part in parts)
    # a case's shard depends on its id only
    assert select_shard(cases[:10], Shard(2, 3)) == [c for c in select_shard(cases, Shard(2, 3)) if c in cases[:10]]
    assert select_shard(cases, None) == cases


@pytest.mark.parametrize("text", ["0/2", "3/2", "1-2", "a/b", "1/0", ""])
def test_shard_parse_rejects_bad_values(text: str) -> None:
    with pytest.raises(MedsegInputError, match="--shard"):
        Shard.parse(text)


def test_shard_parse() -> None:
    assert Shard.parse(" 2/5 ") == Shard(2, 5)
    assert Shard(2, 5).tag == "shard-2-of-5"
