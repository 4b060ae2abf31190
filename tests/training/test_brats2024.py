"""BraTS 2024 post-treatment glioma end to end on tiny phantoms: train with ``brats2024-gli`` (four region
outputs, the resection cavity outside the whole tumour), predict label maps in the challenge's numbers, and
score every region the challenge scores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medseg.checkpoint import load_checkpoint
from medseg.demo import run_demo
from medseg.errors import ConfigError, MedsegInputError
from medseg.evaluation import evaluate_folder
from medseg.inference import predict_folder
from medseg.io import read_image
from medseg.training import train


def test_auto_labels_do_not_take_2024_cases_for_2023_ones(brats2024_root: Path, tmp_path: Path, tiny_config) -> None:
    """2024 phantoms are named as 2023's: auto takes BraTS 2023's table, and the cavity's 4 is then refused
    (naming the file) rather than trained as something else."""
    with pytest.raises(MedsegInputError, match=r"label values \[4\] are not in label table brats2023"):
        train(tiny_config(brats2024_root, tmp_path / "run"))


@pytest.mark.slow
def test_brats2024_trains_predicts_and_scores_in_the_challenges_numbers(
    brats2024_root: Path, brats2024_checkpoint: Path, tmp_path: Path
) -> None:
    checkpoint = load_checkpoint(brats2024_checkpoint)
    assert checkpoint.label_table.name == "brats2024-gli" and checkpoint.label_table.num_outputs == 4
    assert checkpoint.manifest["labels"]["name"] == "brats2024-gli"
    pred_dir = tmp_path / "pred"
    summary = predict_folder(model=brats2024_checkpoint, input_path=brats2024_root, output_dir=pred_dir)
    assert summary.ok == 3
    for case in sorted(p.name for p in brats2024_root.iterdir()):
        pred = read_image(pred_dir / f"{case}.nii.gz")
        ref = read_image(brats2024_root / case / f"{case}-seg.nii.gz")
        assert pred.geometry.same_grid(ref.geometry)
        assert set(np.unique(pred.array)) <= {0, 1, 2, 3, 4}
    scores = evaluate_folder(pred_dir=pred_dir, ref_dir=brats2024_root, out_dir=tmp_path / "eval")
    assert scores["label_table"] == "brats2024-gli"  # the references hold 4: only 2024's table fits
    assert list(scores["regions"]) == ["WT", "TC", "ET", "RC", "NETC", "SNFH"]
    assert all(scores["regions"][r]["n"] == 3 for r in scores["regions"])


def test_the_demo_asks_for_the_table_of_2024_phantoms(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"set data\.labels: brats2024-gli"):
        run_demo(out_dir=tmp_path, config=Path("demo_brats_phantom"), overrides=["phantoms.release=2024"])
    assert not any(tmp_path.iterdir())  # refused before any phantom is generated
