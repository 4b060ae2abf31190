"""The nnU-Net v2 raw layout scanner, through build_manifest / check_manifest and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medseg.cli import main
from medseg.data.manifest import build_manifest, check_manifest
from medseg.errors import MedsegInputError
from medseg.io import Geometry, write_nifti

GRID = Geometry((6, 5, 4), np.diag([-2.0, -2.0, 3.0, 1.0]))


def make_nnunet(root: Path, *, cases: int = 3, channels: tuple[str, ...] = ("CT",), test: int = 0, **extra) -> Path:
    """A tiny nnU-Net v2 raw dataset: ``case_00i_000c.nii.gz`` images and ``case_00i.nii.gz`` labels."""
    rng = np.random.default_rng(0)
    label = np.zeros(GRID.shape, dtype=np.uint8)
    label[1], label[2] = 1, 2
    for i in range(cases):
        for c in range(len(channels)):
            write_nifti(
                rng.normal(size=GRID.shape).astype(np.float32), GRID, root / f"imagesTr/case_{i:03d}_{c:04d}.nii.gz"
            )
        write_nifti(label, GRID, root / f"labelsTr/case_{i:03d}.nii.gz")
    for i in range(test):
        for c in range(len(channels)):
            write_nifti(
                rng.normal(size=GRID.shape).astype(np.float32), GRID, root / f"imagesTs/new_{i:03d}_{c:04d}.nii.gz"
            )
    meta = {
        "channel_names": {str(i): n for i, n in enumerate(channels)},
        "labels": {"background": 0, "liver": 1, "spleen": 2},
        "numTraining": cases,
        "file_ending": ".nii.gz",
        **extra,
    }
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def test_build_manifest_from_nnunet(tmp_path: Path) -> None:
    root = make_nnunet(tmp_path / "Dataset042_Tiny", channels=("T2", "ADC"), test=1)
    manifest = build_manifest(root, layout="nnunet", num_folds=2)
    assert manifest.layout == "nnunet"
    assert manifest.label_table.kind == "classes"
    assert manifest.label_table.name == "Dataset042_Tiny"
    assert manifest.label_table.labels == {0: "background", 1: "liver", 2: "spleen"}
    assert manifest.channels == ("T2", "ADC")
    assert [c.id for c in manifest.cases] == ["case_000", "case_001", "case_002", "new_000"]
    first = manifest.cases[0]
    assert first.images == ("imagesTr/case_000_0000.nii.gz", "imagesTr/case_000_0001.nii.gz")
    assert first.label == "labelsTr/case_000.nii.gz" and first.patient == "case_000"
    assert manifest.cases[-1].label is None
    assert check_manifest(manifest, root=root) == []


def test_name_from_dataset_json(tmp_path: Path) -> None:
    root = make_nnunet(tmp_path, name="Liver")
    assert build_manifest(root, layout="nnunet", num_folds=2).label_table.name == "Liver"


def test_missing_channel_file_named(tmp_path: Path) -> None:
    root = make_nnunet(tmp_path, channels=("T2", "ADC"))
    missing = root / "imagesTr" / "case_001_0001.nii.gz"
    missing.unlink()
    with pytest.raises(MedsegInputError, match="missing channel file") as info:
        build_manifest(root, layout="nnunet")
    assert info.value.path == missing


def test_missing_label_named(tmp_path: Path) -> None:
    root = make_nnunet(tmp_path)
    (root / "labelsTr" / "case_002.nii.gz").unlink()
    with pytest.raises(MedsegInputError, match="missing label") as info:
        build_manifest(root, layout="nnunet")
    assert info.value.path == root / "labelsTr" / "case_002.nii.gz"


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        ({"labels": {"0": "background", "1": "liver"}}, "name -> value"),
        ({"labels": {"background": 0, "tumour": [1, 2]}}, "region-based"),
        ({"file_ending": ".png"}, "file_ending"),
        ({"channel_names": {}}, "channel_names"),
    ],
)
def test_bad_dataset_json(tmp_path: Path, extra: dict, match: str) -> None:
    root = make_nnunet(tmp_path, **extra)
    with pytest.raises(MedsegInputError, match=match) as info:
        build_manifest(root, layout="nnunet")
    assert info.value.path == root / "dataset.json"


def test_label_values_outside_table_reported(tmp_path: Path) -> None:
    root = make_nnunet(tmp_path)
    label = np.full(GRID.shape, 5, dtype=np.uint8)
    write_nifti(label, GRID, root / "labelsTr" / "case_001.nii.gz")
    problems = check_manifest(build_manifest(root, layout="nnunet"), root=root)
    assert len(problems) == 1 and "case_001.nii.gz" in problems[0] and "[5]" in problems[0]


def test_channels_on_different_grids_reported(tmp_path: Path) -> None:
    root = make_nnunet(tmp_path, channels=("T2", "ADC"))
    shifted = Geometry((6, 5, 5), GRID.affine)
    write_nifti(np.zeros(shifted.shape, dtype=np.float32), shifted, root / "imagesTr" / "case_000_0001.nii.gz")
    problems = check_manifest(build_manifest(root, layout="nnunet"), root=root)
    assert len(problems) == 1 and "case_000_0001.nii.gz" in problems[0] and "shape" in problems[0]


def test_cli_manifest_build_nnunet(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = make_nnunet(tmp_path / "raw")
    out = tmp_path / "manifest.json"
    assert (
        main(["manifest", "build", "--root", str(root), "--layout", "nnunet", "--out", str(out), "--folds", "2"]) == 0
    )
    capsys.readouterr()
    (root / "dataset.json").unlink()
    assert main(["manifest", "build", "--root", str(root), "--layout", "nnunet", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "dataset.json" in err[0]
