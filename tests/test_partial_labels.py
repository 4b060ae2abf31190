"""File-list manifests and partially labelled data: a label not annotated in a case is neither taught
as background (the loss merges it into background) nor scored there."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medseg.config import LossConfig
from medseg.data.manifest import load_manifest, save_manifest
from medseg.data.msd import classes_table
from medseg.errors import MedsegInputError
from medseg.evaluation import evaluate_folder
from medseg.losses import build_loss, merge_unlabelled

TABLE = classes_table("organs", {0: "background", 1: "a", 2: "b"})


def test_merge_unlabelled_moves_a_missing_class_into_background() -> None:
    logits = torch.tensor([0.5, -1.0, 2.0]).view(1, 3, 1, 1, 1)
    p = torch.softmax(logits, 1).flatten()
    merged = torch.softmax(merge_unlabelled(logits, torch.tensor([[True, True, False]])), 1).flatten()
    assert merged.tolist() == pytest.approx([float(p[0] + p[2]), float(p[1]), 0.0], abs=1e-6)
    # every class annotated: unchanged; background's flag is ignored (background is always annotated)
    same = torch.softmax(merge_unlabelled(logits, torch.tensor([[False, True, True]])), 1).flatten()
    assert same.tolist() == pytest.approx(p.tolist(), abs=1e-6)


def test_merge_unlabelled_per_sample_and_per_head() -> None:
    logits = torch.randn(2, 3, 3, 4, 4, 4)  # (B, H, C, X, Y, Z): deep-supervision heads
    labelled = torch.tensor([[True, False, True], [True, True, True]])
    merged = torch.softmax(merge_unlabelled(logits, labelled), 2)
    p = torch.softmax(logits, 2)
    torch.testing.assert_close(merged[0, :, 0], p[0, :, 0] + p[0, :, 1])
    torch.testing.assert_close(merged[0, :, 1], torch.zeros_like(p[0, :, 1]))
    torch.testing.assert_close(merged[1], p[1])


def test_loss_does_not_punish_finding_an_unannotated_organ() -> None:
    """Where organ 2 was not contoured, predicting it on background voxels costs nothing with the
    mask (the same loss as predicting background there), and costs more without it."""
    target = torch.zeros(1, 1, 8, 8, 8)
    target[0, 0, :4] = 1  # organ 1 contoured; organ 2 not contoured in this case
    confident = 8.0
    says_background = torch.zeros(1, 3, 8, 8, 8)
    says_background[:, 0] = confident
    says_background[:, 0, :4] = 0
    says_background[:, 1, :4] = confident
    finds_organ_2 = says_background.clone()
    finds_organ_2[:, 0, 6:], finds_organ_2[:, 2, 6:] = 0, confident  # organ 2 found in background
    loss = build_loss(LossConfig(name="dice_ce"), TABLE)
    labelled = torch.tensor([[True, True, False]])
    assert float(loss(finds_organ_2, target, labelled)) == pytest.approx(float(loss(says_background, target, labelled)))
    assert float(loss(finds_organ_2, target)) > float(loss(says_background, target)) + 0.1


def _write(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.diag([2.0, 2.0, 3.0, 1.0])), str(path))


def _file_list(tmp_path: Path) -> Path:
    """Three cases in a folder of my own naming; case c2 has organ b not contoured."""
    data = tmp_path / "anywhere"
    rng = np.random.default_rng(0)
    cases = []
    for n in range(3):
        label = np.zeros((16, 16, 12), np.uint8)
        label[2:7, 2:7, 2:6] = 1
        if n != 2:
            label[9:14, 9:14, 5:10] = 2
        _write(data / f"scan {n}" / "img.nii.gz", rng.normal(size=(16, 16, 12)).astype(np.float32))
        _write(data / f"scan {n}" / "seg.nii.gz", label)
        case = {"id": f"c{n}", "images": [f"scan {n}/img.nii.gz"], "label": f"scan {n}/seg.nii.gz"}
        cases.append(case | ({"labelled": [1]} if n == 2 else {}))
    path = tmp_path / "lists" / "cases.json"
    path.parent.mkdir()
    document = {"format": "medseg-manifest", "root": "../anywhere", "channels": ["MR"], "cases": cases}
    path.write_text(json.dumps(document | {"labels": TABLE.to_dict()}))
    return path


def test_hand_written_file_list_loads_with_root_folds_and_labelled(tmp_path: Path) -> None:
    path = _file_list(tmp_path)
    manifest = load_manifest(path, num_folds=3, seed=1)
    assert manifest.root == path.parent / "../anywhere"
    assert [c.id for c in manifest.cases] == ["c0", "c1", "c2"]
    assert sorted(c.fold for c in manifest.cases) == [0, 1, 2]  # dealt into folds, patient = id
    assert manifest.cases[2].annotated(TABLE) == {0, 1}
    assert manifest.cases[0].annotated(TABLE) == {0, 1, 2}
    # saved and read again: the same cases, folds and root (kept relative to the file)
    saved = save_manifest(manifest, tmp_path / "elsewhere" / "m.json")
    again = load_manifest(saved)
    assert again.cases == manifest.cases
    assert again.root.resolve() == (tmp_path / "anywhere").resolve()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["cases"][0].update(labelled=[7]), "labelled values [7] are not in label table organs"),
        (lambda d: d["cases"][1].update(id="c0"), "case 'c0' is listed twice"),
        (lambda d: d["cases"][0].update(labelled="1"), "labelled"),
        (lambda d: d.pop("channels"), "malformed manifest: missing or invalid 'channels'"),
        (lambda d: d.update(channels="MR"), "malformed manifest: missing or invalid 'channels' (a list of channel"),
        (lambda d: d["cases"][1]["images"].append("x.nii.gz"), "case 'c1' lists 2 images for the 1 channels (MR)"),
    ],
)
def test_bad_file_list_is_one_line_naming_it(tmp_path: Path, change, message: str) -> None:
    path = _file_list(tmp_path)
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))
    with pytest.raises(MedsegInputError, match=re.escape(message)) as err:
        load_manifest(path)
    assert str(path) in str(err.value)


def test_evaluation_skips_labels_a_case_does_not_annotate(tmp_path: Path) -> None:
    """c2 did not contour organ b; its prediction finds b anyway: b is not scored on c2 (it would score
    Dice 0 there), and b's mean is over c0 and c1."""
    path = _file_list(tmp_path)
    manifest = load_manifest(path)
    pred_dir = tmp_path / "pred"
    for case in manifest.cases:
        ref = nib.load(str(manifest.root / case.label))
        pred = np.asarray(ref.dataobj).copy()
        pred[9:14, 9:14, 5:10] = 2
        _write(pred_dir / f"{case.id}.nii.gz", pred)
    summary = evaluate_folder(pred_dir=pred_dir, ref_dir=path, out_dir=tmp_path / "eval")
    assert summary["label_table"] == "organs"
    assert summary["regions"]["a"]["n"] == 3 and summary["regions"]["b"]["n"] == 2
    assert summary["regions"]["b"]["dice"]["mean"] == pytest.approx(1.0)
    rows = list(csv.DictReader((tmp_path / "eval" / "metrics.csv").open()))
    assert {(r["case"], r["region"]) for r in rows} == {("c0", "a"), ("c0", "b"), ("c1", "a"), ("c1", "b"), ("c2", "a")}


def test_training_masks_unannotated_labels_end_to_end(tmp_path: Path, tiny_config) -> None:
    """A short training on the file list runs with the mask, its validation Dice of organ b is over the
    cases that contour it, and the items carry which labels each case annotates."""
    from medseg.config import config_from_dict
    from medseg.training import train
    from medseg.training.trainer import _items, partial_label_table

    path = _file_list(tmp_path)
    base = tiny_config(tmp_path, tmp_path / "run").to_dict()
    base["data"] |= {"manifest": str(path), "root": None, "num_folds": 3}
    base["transforms"] |= {"patch_size": [16, 16, 16], "sampling": "class_balanced"}
    base["inference"] |= {"roi_size": [16, 16, 16]}
    base["network"]["kwargs"] = {"channels": [4, 8], "strides": [2]}
    config = config_from_dict(base)
    manifest = load_manifest(path, num_folds=3, seed=config.seed)
    assert partial_label_table(config, manifest, TABLE) is TABLE
    items = _items(list(manifest.cases), manifest.root, TABLE)
    assert [item["labelled"].tolist() for item in items] == [[True] * 3, [True] * 3, [True, True, False]]
    # unmasked, the loss teaches background where b was not contoured, but validation still does not score it
    no_mask = config_from_dict(base | {"loss": {"name": "dice_ce", "mask_unlabelled": False}})
    assert partial_label_table(no_mask, manifest, TABLE) is TABLE
    result = train(config)
    assert result.epochs_run == 2
    assert (tmp_path / "run" / "last.pt").is_file()
