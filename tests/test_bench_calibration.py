"""tools/bench_calibration.py on a tiny fold (a model that answers the same everywhere, whose calibration has a
closed form): its JSON lines, and that it resumes."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from medseg.data.manifest import build_manifest, save_manifest
from medseg.io import Geometry, write_nifti

GRID = Geometry((16, 16, 8), np.diag([1.5, 1.5, 3.0, 1.0]))


def _fold(tmp_path: Path, constant_checkpoint_at: Callable[..., Path]) -> Path:
    """A fold folder as tools/bench_real.py leaves it: six held-out nnU-Net-layout cases whose references are
    tissue on three voxels in four, and a model that says tissue with probability sigmoid(4) everywhere."""
    root = tmp_path / "data"
    rng = np.random.default_rng(0)
    label = np.ones(GRID.shape, dtype=np.uint8)
    label[::4] = 0
    for i in range(6):
        write_nifti(rng.uniform(1, 2, GRID.shape).astype(np.float32), GRID, root / f"imagesTr/c{i}_0000.nii.gz")
        write_nifti(label, GRID, root / f"labelsTr/c{i}.nii.gz")
    (root / "dataset.json").write_text(
        json.dumps(
            {
                "channel_names": {"0": "image"},
                "labels": {"background": 0, "tissue": 1},
                "numTraining": 6,
                "file_ending": ".nii.gz",
            }
        )
    )
    fold = tmp_path / "fold_0"
    manifest = build_manifest(root, layout="nnunet")
    save_manifest(dataclasses.replace(manifest, root=root), fold / "held_out.json")
    constant_checkpoint_at(fold / "train" / "last.pt", logits=(0.0, 4.0))
    return fold


def test_each_half_is_calibrated_on_the_other_and_the_run_resumes(
    tmp_path: Path,
    constant_checkpoint_at: Callable[..., Path],
    load_tool: Callable[[str], ModuleType],
    capsys: pytest.CaptureFixture[str],
) -> None:
    bench = load_tool("bench_calibration")
    fold = _fold(tmp_path, constant_checkpoint_at)
    assert bench.main([str(fold), "--voxels-per-case", "1000"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r.get("half") for r in lines] == [0, 1, None] and lines[-1]["summary"] is True
    sure = 1 / (1 + math.exp(-4.0))
    for record in lines[:2]:
        assert record["cases"] == 3 and record["validation_cases"] == 3
        assert record["temperature"] == pytest.approx(4.0 / math.log(3.0), rel=0.1)  # says 0.75 where 0.75 is
        assert record["ece"]["tissue"]["before"] == pytest.approx(sure - 0.75, rel=1e-3)
        assert record["ece"]["tissue"]["after"] < 0.03
        assert record["calibration_nll"]["after"] < record["calibration_nll"]["before"]
        assert record["mean_dice"] == record["mean_dice_with_temperature"] == pytest.approx(1.5 / 1.75, abs=1e-4)
        assert record["spearman_vs_dice"]["entropy_boundary"] is None  # every case alike: no ranking
        flags = record["flags_vs_worst_dice"]  # the worst of three alike cases: the first by id
        assert (flags["cases"], flags["worst"], flags["base_rate"]) == (3, 1, pytest.approx(1 / 3, abs=1e-4))
        assert flags["touches_border"] == {"flagged": 3, "in_worst": 1, "precision": 0.3333, "recall": 1.0}
        assert flags["uncertain"] == {"flagged": 0, "in_worst": 0, "precision": None, "recall": 0.0}  # none above
        assert flags["unlike_training"]["flagged"] == 0  # a checkpoint without a training fingerprint
    assert lines[-1]["ece"]["tissue"]["before"] == pytest.approx(sure - 0.75, rel=1e-3)
    assert lines[-1]["flags_vs_worst_dice"]["any"] == {"flagged": 6, "in_worst": 2, "precision": 0.3333, "recall": 1.0}
    assert (fold / "calibration" / "half_0" / "temperature" / "predictions" / "c0_uncertainty.nii.gz").is_file()

    assert bench.main([str(fold)]) == 0  # both halves done: only the summary again
    again = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert again == [lines[-1]]
    assert len((fold / "calibration" / "halves.jsonl").read_text().splitlines()) == 2
