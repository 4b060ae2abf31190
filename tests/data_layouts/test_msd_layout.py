"""The MSD layout scanner, through build_manifest / check_manifest and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medseg.cli import main
from medseg.data.layouts import SCANNERS
from medseg.data.manifest import build_manifest, check_manifest, load_manifest
from medseg.errors import MedsegInputError
from medseg.io import Geometry, write_nifti

GRID = Geometry((6, 5, 4), np.diag([-2.0, -2.0, 3.0, 1.0]))
OTHER_GRID = Geometry((6, 5, 4), np.diag([-2.0, -2.0, 4.0, 1.0]))


def _label(values: tuple[int, ...] = (0, 1, 2)) -> np.ndarray:
    lab = np.zeros(GRID.shape, dtype=np.uint8)
    for i, v in enumerate(values):
        lab[i] = v
    return lab


def make_msd(
    root: Path,
    *,
    cases: int = 3,
    modality: dict[str, str] | None = None,
    channels_in_file: int | None = None,
    test: int = 1,
) -> Path:
    """A tiny MSD task: ``case_i`` in imagesTr/labelsTr, ``test_i`` in imagesTs."""
    modality = modality or {"0": "CT"}
    n = len(modality) if channels_in_file is None else channels_in_file
    shape = GRID.shape if n == 1 else (n, *GRID.shape)
    rng = np.random.default_rng(0)
    training = []
    for i in range(cases):
        write_nifti(rng.normal(size=shape).astype(np.float32), GRID, root / "imagesTr" / f"case_{i}.nii.gz")
        write_nifti(_label(), GRID, root / "labelsTr" / f"case_{i}.nii.gz")
        training.append({"image": f"./imagesTr/case_{i}.nii.gz", "label": f"./labelsTr/case_{i}.nii.gz"})
    for i in range(test):
        write_nifti(rng.normal(size=shape).astype(np.float32), GRID, root / "imagesTs" / f"test_{i}.nii.gz")
    meta = {
        "name": "Tiny",
        "tensorImageSize": "3D" if len(modality) == 1 else "4D",
        "modality": modality,
        "labels": {"0": "background", "1": "liver", "2": "tumour"},
        "numTraining": cases,
        "numTest": test,
        "training": training,
        "test": [f"./imagesTs/test_{i}.nii.gz" for i in range(test)],
    }
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def test_registered() -> None:
    assert {"brats", "msd", "nnunet"} <= set(SCANNERS)


def test_build_manifest_from_msd(tmp_path: Path) -> None:
    root = make_msd(tmp_path)
    manifest = build_manifest(root, layout="msd", num_folds=3)
    assert manifest.layout == "msd"
    table = manifest.label_table
    assert table.kind == "classes" and table.name == "Tiny"
    assert table.labels == {0: "background", 1: "liver", 2: "tumour"}
    assert set(table.colors) == {1, 2} and table.colors[1] != table.colors[2]
    assert manifest.channels == ("CT",)
    ids = [c.id for c in manifest.cases]
    assert ids == ["case_0", "case_1", "case_2", "test_0"]
    first = manifest.cases[0]
    assert first.images == ("imagesTr/case_0.nii.gz",) and first.label == "labelsTr/case_0.nii.gz"
    assert first.patient == "case_0"
    assert manifest.cases[-1].label is None
    assert check_manifest(manifest, root=root) == []


def test_multimodal_4d_image_is_one_file(tmp_path: Path) -> None:
    modality = {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"}
    root = make_msd(tmp_path, modality=modality, test=0)
    manifest = build_manifest(root, layout="msd", num_folds=2)
    assert manifest.channels == ("FLAIR", "T1w", "t1gd", "T2w")
    assert all(len(c.images) == 1 for c in manifest.cases)
    assert check_manifest(manifest, root=root) == []


def test_channel_count_must_match_modality(tmp_path: Path) -> None:
    root = make_msd(tmp_path, modality={"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"}, channels_in_file=3)
    with pytest.raises(MedsegInputError, match="3 channel") as info:
        build_manifest(root, layout="msd")
    assert info.value.path == root / "imagesTr" / "case_0.nii.gz"


def test_modality_keys_in_numeric_order(tmp_path: Path) -> None:
    modality = {str(i): f"m{i}" for i in (10, 2, 0, 1, 3, 4, 5, 6, 7, 8, 9)}
    root = make_msd(tmp_path, modality=modality, cases=1, test=0)
    assert build_manifest(root, layout="msd", num_folds=2).channels == tuple(f"m{i}" for i in range(11))


def test_listed_file_missing_is_one_clear_error(tmp_path: Path) -> None:
    root = make_msd(tmp_path)
    (root / "labelsTr" / "case_1.nii.gz").unlink()
    with pytest.raises(MedsegInputError, match=r"listed in dataset\.json") as info:
        build_manifest(root, layout="msd")
    assert info.value.path == root / "labelsTr" / "case_1.nii.gz"
    assert "case_1.nii.gz" in str(info.value)


@pytest.mark.parametrize(
    ("content", "match"),
    [(None, r"dataset\.json not found"), ("{not json", "not valid JSON"), ('{"labels": {"0": "bg"}}', "modality")],
)
def test_bad_dataset_json(tmp_path: Path, content: str | None, match: str) -> None:
    if content is not None:
        (tmp_path / "dataset.json").write_text(content)
    with pytest.raises(MedsegInputError, match=match) as info:
        build_manifest(tmp_path, layout="msd")
    assert info.value.path == tmp_path / "dataset.json"


def test_label_values_outside_table_reported(tmp_path: Path) -> None:
    root = make_msd(tmp_path)
    write_nifti(_label((0, 1, 7)), GRID, root / "labelsTr" / "case_2.nii.gz")
    problems = check_manifest(build_manifest(root, layout="msd"), root=root)
    assert len(problems) == 1
    assert "labelsTr/case_2.nii.gz" in problems[0] and "[7]" in problems[0]


def test_image_and_label_on_different_grids_reported(tmp_path: Path) -> None:
    root = make_msd(tmp_path)
    write_nifti(_label(), OTHER_GRID, root / "labelsTr" / "case_0.nii.gz")
    problems = check_manifest(build_manifest(root, layout="msd"), root=root)
    assert len(problems) == 1 and "case_0.nii.gz" in problems[0] and "spacing" in problems[0]


def test_ct_phantoms_scan_as_msd(tmp_path: Path) -> None:
    from medseg.phantoms.ct import LABELS, generate_ct_dataset

    generate_ct_dataset(tmp_path, cases=2, seed=0, workers=1, shape=(24, 24, 8))
    manifest = build_manifest(tmp_path, layout="msd", num_folds=2)
    assert manifest.label_table.labels == LABELS
    assert manifest.channels == ("CT",)
    assert check_manifest(manifest, root=tmp_path) == []


def test_cli_manifest_build_msd(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = make_msd(tmp_path / "task")
    out = tmp_path / "manifest.json"
    assert main(["manifest", "build", "--root", str(root), "--layout", "msd", "--out", str(out), "--folds", "2"]) == 0
    assert load_manifest(out).layout == "msd"
    assert main(["manifest", "check", str(out), "--root", str(root)]) == 0
    capsys.readouterr()

    (root / "imagesTr" / "case_0.nii.gz").unlink()
    assert main(["manifest", "build", "--root", str(root), "--layout", "msd", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "case_0.nii.gz" in err[0] and err[0].startswith("medseg: error:")
