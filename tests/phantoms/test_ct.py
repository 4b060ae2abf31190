"""Abdominal CT phantoms: MSD files on disk, determinism, HU, volumes, spacing and orientation."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from medseg.cli import main
from medseg.errors import MedsegInputError
from medseg.io import read_nifti
from medseg.phantoms.ct import LABELS, ORIENTATIONS, generate_ct_dataset, render_ct_case

TINY = (40, 40, 16)
SMALL = (56, 56, 24)

# Plausible mean HU per organ over native and portal-venous phases, and volume in mL.
HU_RANGE = {
    "liver": (40, 140),
    "spleen": (35, 150),
    "kidney_right": (20, 200),
    "kidney_left": (20, 200),
    "aorta": (30, 220),
    "pancreas": (25, 130),
}
VOLUME_ML = {
    "liver": (500, 2600),
    "spleen": (60, 500),
    "kidney_right": (50, 320),
    "kidney_left": (50, 320),
    "aorta": (20, 200),
    "pancreas": (15, 150),
}


@pytest.fixture(scope="module")
def small_cases() -> list:
    return [render_ct_case(seed=3, index=i, shape=SMALL) for i in range(8)]


def _centroid_ras(mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    ijk = np.argwhere(mask).mean(axis=0)
    return affine[:3, :3] @ ijk + affine[:3, 3]


def test_dataset_json_lists_written_files(tmp_path: Path) -> None:
    images = generate_ct_dataset(tmp_path, cases=3, seed=0, workers=2, shape=TINY)
    meta = json.loads((tmp_path / "dataset.json").read_text())
    assert meta["tensorImageSize"] == "3D"
    assert meta["modality"] == {"0": "CT"}
    assert meta["labels"] == {str(k): v for k, v in LABELS.items()}
    assert list(meta["labels"].values())[1:] == [
        "liver",
        "spleen",
        "kidney_right",
        "kidney_left",
        "aorta",
        "pancreas",
    ]
    assert meta["numTraining"] == 3 and meta["numTest"] == 0 and meta["test"] == []
    assert [e["image"] for e in meta["training"]] == [f"./imagesTr/ct_{i:03d}.nii.gz" for i in range(3)]
    assert images == [tmp_path / "imagesTr" / f"ct_{i:03d}.nii.gz" for i in range(3)]
    for entry in meta["training"]:
        image, label = tmp_path / entry["image"], tmp_path / entry["label"]
        assert image.is_file() and label.is_file()
        img, lab = nib.load(str(image)), nib.load(str(label))
        assert img.get_data_dtype() == np.int16 and lab.get_data_dtype() == np.uint8
        assert img.shape == lab.shape == TINY
        assert np.allclose(img.affine, lab.affine)


def test_start_index_extends_dataset(tmp_path: Path) -> None:
    generate_ct_dataset(tmp_path, cases=1, seed=0, workers=1, shape=TINY)
    images = generate_ct_dataset(tmp_path, cases=2, seed=0, workers=1, shape=TINY, start_index=1)
    assert [p.name for p in images] == ["ct_001.nii.gz", "ct_002.nii.gz"]
    meta = json.loads((tmp_path / "dataset.json").read_text())
    assert meta["numTraining"] == 3
    assert [e["label"] for e in meta["training"]] == [f"./labelsTr/ct_{i:03d}.nii.gz" for i in range(3)]


def test_existing_files_are_never_replaced_unless_asked(tmp_path: Path) -> None:
    generate_ct_dataset(tmp_path, cases=1, seed=0, workers=1, shape=TINY)
    image = tmp_path / "imagesTr" / "ct_000.nii.gz"
    before = image.read_bytes()
    with pytest.raises(MedsegInputError, match="already exists") as info:
        generate_ct_dataset(tmp_path, cases=2, seed=1, workers=1, shape=TINY)
    assert info.value.path == image
    assert image.read_bytes() == before
    (tmp_path / "imagesTr" / "ct_000.nii.gz").unlink()
    (tmp_path / "labelsTr" / "ct_000.nii.gz").unlink()
    with pytest.raises(MedsegInputError, match="already exists") as info:  # it would rewrite the case list
        generate_ct_dataset(tmp_path, cases=1, seed=1, workers=1, shape=TINY)
    assert info.value.path == tmp_path / "dataset.json"
    generate_ct_dataset(tmp_path, cases=2, seed=1, workers=1, shape=TINY, overwrite=True)
    assert json.loads((tmp_path / "dataset.json").read_text())["numTraining"] == 2


def test_deterministic_per_seed_and_index(tmp_path: Path) -> None:
    generate_ct_dataset(tmp_path / "a", cases=3, seed=5, workers=2, shape=TINY)
    generate_ct_dataset(tmp_path / "b", cases=2, seed=5, workers=1, shape=TINY, start_index=1)
    for name in ("ct_001.nii.gz", "ct_002.nii.gz"):
        for folder in ("imagesTr", "labelsTr"):
            a = read_nifti(tmp_path / "a" / folder / name, dtype=None)
            b = read_nifti(tmp_path / "b" / folder / name, dtype=None)
            assert np.array_equal(a.array, b.array)
            assert np.array_equal(a.geometry.affine, b.geometry.affine)
    other = render_ct_case(seed=6, index=1, shape=TINY)
    assert not np.array_equal(other.image, read_nifti(tmp_path / "a/imagesTr/ct_001.nii.gz", dtype=None).array)


def test_labels_exclusive_all_organs_plausible_volumes(small_cases: list) -> None:
    for case in small_cases:
        assert case.label.dtype == np.uint8 and case.image.dtype == np.int16
        assert set(np.unique(case.label).tolist()) == set(LABELS)
        voxel_ml = float(np.prod(case.geometry.spacing)) / 1000.0
        for value, name in LABELS.items():
            if value == 0:
                continue
            volume = float((case.label == value).sum()) * voxel_ml
            low, high = VOLUME_ML[name]
            assert low <= volume <= high, f"{case.case_id} {name}: {volume:.0f} mL"


def test_organ_hu_plausible(small_cases: list) -> None:
    for case in small_cases:
        image, label = case.image.astype(float), case.label
        for value, name in LABELS.items():
            if value == 0:
                continue
            mean = image[label == value].mean()
            low, high = HU_RANGE[name]
            assert low <= mean <= high, f"{case.case_id} {name}: mean {mean:.0f} HU ({case.phase})"
        assert image.min() >= -1024
        corner = image[:3, :3, :]
        assert corner.mean() < -900, "air outside the body"
        assert 300 <= image.max() <= 1200, "vertebral bone"
        # Subcutaneous fat exists: a good share of body voxels is fat-dense.
        body = image > -500
        assert 0.03 < np.mean((image[body] > -160) & (image[body] < -40)) < 0.7
        # Noise: a homogeneous organ interior has a standard deviation of roughly 10-25 HU.
        inner_liver = label == 1
        assert 5 < image[inner_liver].std() < 40


def test_default_grid_anisotropic_and_varied() -> None:
    from medseg.phantoms.ct import ct_geometry

    grids = [ct_geometry(np.random.default_rng([0, i]))[0] for i in range(30)]
    for g in grids:
        sx, sy, sz = g.spacing
        assert g.shape[:2] == (128, 128) and 38 <= g.shape[2] <= 70
        assert 2.4 < sx < 2.8 and sx == pytest.approx(sy)
        assert 3.2 <= sz <= 5.0 + 1e-6
        assert sz > sx * 1.15
    assert np.ptp([g.spacing[2] for g in grids]) > 1.0


def test_some_directions_are_not_identity() -> None:
    cases = [render_ct_case(seed=0, index=i, shape=(8, 8, 4)) for i in range(40)]
    identity = [np.allclose(c.geometry.direction, np.eye(3)) for c in cases]
    assert 0.5 <= np.mean(identity) <= 0.9
    assert len({c.orientation for c in cases}) >= 3
    assert all((c.orientation == "lps") == same for c, same in zip(cases, identity, strict=True))


def _index_with(orientation: str, seed: int = 0) -> int:
    for i in range(200):
        if render_ct_case(seed=seed, index=i, shape=(8, 8, 4)).orientation == orientation:
            return i
    raise AssertionError(f"no {orientation} case in 200")


@pytest.mark.parametrize("orientation", sorted(ORIENTATIONS))
def test_liver_on_patient_right_in_world(tmp_path: Path, orientation: str) -> None:
    """RAS+ world: +x is the patient's Right, so the liver has larger x than the spleen and the spine."""
    index = _index_with(orientation)
    case = render_ct_case(seed=0, index=index, shape=TINY)
    affine = case.geometry.affine
    if orientation == "lps":
        assert np.allclose(case.geometry.direction, np.eye(3))
    else:
        assert not np.allclose(case.geometry.direction, np.eye(3))
    liver = _centroid_ras(case.label == 1, affine)
    spleen = _centroid_ras(case.label == 2, affine)
    kidney_r = _centroid_ras(case.label == 3, affine)
    kidney_l = _centroid_ras(case.label == 4, affine)
    body = _centroid_ras(case.image > -500, affine)
    assert liver[0] > body[0] + 20 > spleen[0] + 40
    assert kidney_r[0] > body[0] > kidney_l[0]
    # Posterior organs behind anterior ones (y: anterior +), liver above kidneys (z: superior +).
    assert kidney_r[1] < liver[1] and liver[2] > kidney_r[2]

    # The same check on the written file, through SimpleITK's independent LPS geometry.
    out = generate_ct_dataset(tmp_path, cases=1, seed=0, workers=1, shape=TINY, start_index=index)[0]
    label_path = out.parent.parent / "labelsTr" / out.name
    itk = sitk.ReadImage(str(label_path))
    arr = sitk.GetArrayFromImage(itk)  # (Z, Y, X) = reversed voxel axes
    liver_lps = itk.TransformContinuousIndexToPhysicalPoint(np.argwhere(arr == 1).mean(axis=0)[::-1].tolist())
    spleen_lps = itk.TransformContinuousIndexToPhysicalPoint(np.argwhere(arr == 2).mean(axis=0)[::-1].tolist())
    assert liver_lps[0] < spleen_lps[0]  # LPS: +x is the patient's Left
    assert nib.aff2axcodes(nib.load(str(label_path)).affine) == nib.aff2axcodes(affine)


def test_cli_phantoms_ct(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "ct"
    assert main(["phantoms", "ct", "--out", str(out), "--cases", "1", "--seed", "2", "--workers", "1"]) == 0
    assert "1 CT phantom" in capsys.readouterr().out
    meta = json.loads((out / "dataset.json").read_text())
    image = nib.load(str(out / meta["training"][0]["image"]))
    assert image.shape[:2] == (128, 128)
    zooms = image.header.get_zooms()
    assert zooms[2] > zooms[0]
