"""Bad CT/MSD input through the command line: one clear stderr line naming the file, exit code 2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from medseg.cli import main
from medseg.io import Geometry, write_nifti

SHAPE = (16, 16, 8)
AFFINE = np.diag([-3.0, -3.0, 5.0, 1.0])
LABELS = {"0": "background", "1": "liver", "2": "spleen"}


def _msd(root: Path, n: int = 3) -> Path:
    """A tiny valid MSD CT dataset: ``ct_0`` ... with a 3-D int16 image and a label map each."""
    rng = np.random.default_rng(0)
    for i in range(n):
        image = rng.integers(-1000, 200, size=SHAPE).astype(np.int16)
        label = np.zeros(SHAPE, np.uint8)
        label[2:8, 2:8, 2:6] = 1
        label[9:14, 9:14, 2:6] = 2
        write_nifti(image, Geometry(SHAPE, AFFINE), root / "imagesTr" / f"ct_{i}.nii.gz")
        write_nifti(label, Geometry(SHAPE, AFFINE), root / "labelsTr" / f"ct_{i}.nii.gz")
    meta = {
        "name": "toy_ct",
        "modality": {"0": "CT"},
        "labels": LABELS,
        "training": [{"image": f"./imagesTr/ct_{i}.nii.gz", "label": f"./labelsTr/ct_{i}.nii.gz"} for i in range(n)],
        "test": [],
    }
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def _config(tmp_path: Path, root: Path, **transforms: object) -> Path:
    config = {
        "data": {"root": str(root), "layout": "msd", "num_folds": 3, "num_workers": 0},
        "transforms": {
            "intensity": "ct_window",
            "foreground_threshold": -500.0,
            "patch_size": [16, 16, 16],
            "sampling": "class_balanced",
            "samples_per_case": 1,
            **transforms,
        },
        "network": {"name": "unet", "kwargs": {"channels": [8, 16, 32], "strides": [2, 2]}},
        "train": {"run_dir": str(tmp_path / "run"), "epochs": 1, "iterations_per_epoch": 1, "batch_size": 1},
        "inference": {"roi_size": [16, 16, 16]},
    }
    path = tmp_path / "ct.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _train_error(config: Path, capsys: pytest.CaptureFixture) -> str:
    assert main(["train", "--config", str(config)]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("medseg: error: ")
    return lines[0]


def test_label_value_not_in_dataset_json(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = _msd(tmp_path / "ds")
    bad = root / "labelsTr" / "ct_1.nii.gz"
    label = np.zeros(SHAPE, np.uint8)
    label[3:6, 3:6, 3:6] = 5
    write_nifti(label, Geometry(SHAPE, AFFINE), bad)
    line = _train_error(_config(tmp_path, root), capsys)
    assert str(bad) in line and "label values [5] are not in label table toy_ct [0, 1, 2]" in line


def test_dataset_json_lists_a_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = _msd(tmp_path / "ds")
    missing = root / "imagesTr" / "ct_2.nii.gz"
    missing.unlink()
    line = _train_error(_config(tmp_path, root), capsys)
    assert str(missing) in line and "listed in dataset.json (image) but not found" in line


def test_image_and_label_on_different_grids(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = _msd(tmp_path / "ds")
    shifted = AFFINE.copy()
    shifted[:3, 3] = [10.0, 0.0, 0.0]
    label = root / "labelsTr" / "ct_0.nii.gz"
    write_nifti(np.zeros(SHAPE, np.uint8), Geometry(SHAPE, shifted), label)
    line = _train_error(_config(tmp_path, root), capsys)
    image = root / "imagesTr" / "ct_0.nii.gz"
    assert str(label) in line and f"not on the grid of {image}: origin (LPS)" in line

    write_nifti(np.zeros((16, 16, 9), np.uint8), Geometry((16, 16, 9), AFFINE), label)
    line = _train_error(_config(tmp_path, root), capsys)
    assert str(label) in line and f"not on the grid of {image}: shape (16, 16, 9), not" in line


def test_network_patch_size_mismatch_names_network_and_nearest_size(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    root = _msd(tmp_path / "ds")
    config = _config(tmp_path, root, patch_size=[19, 16, 30])
    line = _train_error(config, capsys)
    assert str(config) in line
    assert "network 'unet' needs every patch dimension to be a multiple of 4" in line
    assert "nearest valid size is [20, 16, 32]" in line


def test_4d_image_where_the_config_expects_one_channel(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = _msd(tmp_path / "ds")
    four_d = root / "imagesTr" / "ct_1.nii.gz"
    write_nifti(np.zeros((2, *SHAPE), np.int16), Geometry(SHAPE, AFFINE), four_d)
    line = _train_error(_config(tmp_path, root), capsys)
    assert str(four_d) in line and "image has 2 channel(s) but dataset.json modality lists 1 (CT)" in line
