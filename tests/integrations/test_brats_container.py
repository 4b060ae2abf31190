"""The BraTS challenge container's entry point, run on a folder laid out as the orchestrator lays out
``/input``: one folder per case with ``<case>-t1c/-t1n/-t2f/-t2w.nii.gz``; ``/output`` must receive exactly
``<case>.nii.gz`` per case, in the challenge's label numbers, on the input's grid."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from medseg.integrations.brats_container import main
from medseg.io import read_image

MODALITIES = ("t1c", "t1n", "t2f", "t2w")


def _input_folder(brats2024_root: Path, tmp_path: Path) -> tuple[Path, list[str]]:
    """The phantom cases as the orchestrator mounts them: images only, no reference segmentation."""
    input_dir = tmp_path / "input"
    cases = sorted(p.name for p in brats2024_root.iterdir())[:2]
    for case in cases:
        (input_dir / case).mkdir(parents=True)
        for modality in MODALITIES:
            name = f"{case}-{modality}.nii.gz"
            shutil.copy(brats2024_root / case / name, input_dir / case / name)
    return input_dir, cases


def test_entry_point_writes_one_label_map_per_case_and_nothing_else(
    brats2024_root: Path, brats2024_checkpoint: Path, tmp_path: Path
) -> None:
    input_dir, cases = _input_folder(brats2024_root, tmp_path)
    output_dir = tmp_path / "output"
    argv = ["--input", str(input_dir), "--output", str(output_dir), "--model", str(brats2024_checkpoint)]
    assert main([*argv, "--device", "cpu"]) == 0
    assert sorted(p.name for p in output_dir.iterdir()) == [f"{case}.nii.gz" for case in cases]
    for case in cases:
        label_map = read_image(output_dir / f"{case}.nii.gz")
        image = read_image(input_dir / case / f"{case}-t1c.nii.gz")
        assert label_map.geometry.same_grid(image.geometry)
        assert label_map.array.dtype == np.uint8
        assert set(np.unique(label_map.array)) <= {0, 1, 2, 3, 4}  # brats2024-gli: NETC, SNFH, ET, RC
    assert sorted(p.name for p in input_dir.iterdir()) == cases  # nothing written beside the inputs


def test_a_case_without_a_modality_fails_naming_the_file(
    brats2024_root: Path, brats2024_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    input_dir, cases = _input_folder(brats2024_root, tmp_path)
    missing = input_dir / cases[1] / f"{cases[1]}-t2f.nii.gz"
    missing.unlink()
    argv = ["--input", str(input_dir), "--output", str(tmp_path / "output"), "--model", str(brats2024_checkpoint)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "missing modality file" in err and str(missing) in err
    assert not (tmp_path / "output").exists() or not any((tmp_path / "output").iterdir())


@pytest.mark.slow  # a fresh interpreter imports torch and MONAI
def test_entry_point_runs_as_a_script(brats2024_root: Path, brats2024_checkpoint: Path, tmp_path: Path) -> None:
    input_dir, cases = _input_folder(brats2024_root, tmp_path)
    output_dir = tmp_path / "output"
    command = [sys.executable, "-m", "medseg.integrations.brats_container", "--input", str(input_dir)]
    command += ["--output", str(output_dir), "--model", str(brats2024_checkpoint), "--device", "cpu"]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in output_dir.iterdir()) == [f"{case}.nii.gz" for case in cases]
