"""``medseg predict --cross-validation``: each case segmented by the fold checkpoint that validated on it,
checked against that checkpoint's own Predictor; the folds' checks, resuming, and the CLI's errors."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medseg.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from medseg.cli import main
from medseg.data.cases import InputCase, Shard
from medseg.data.manifest import build_manifest
from medseg.inference import Predictor, read_case
from medseg.networks import build_network
from medseg.protocol import ModelDescription, TrainingData

NUM_FOLDS = 3  # the tiny checkpoint's data.num_folds


def _fold_checkpoint(source: Checkpoint, path: Path, *, fold: int, manifest: dict | None = None) -> Path:
    """``source`` as fold ``fold`` of ``manifest``'s split (default: ``source``'s), with weights of its
    own (seeded by the fold)."""
    torch.manual_seed(100 + fold)
    network = build_network(
        source.network["name"],
        in_channels=len(source.channels),
        out_channels=source.label_table.num_outputs,
        kwargs=source.network["kwargs"],
    )
    config = copy.deepcopy(source.config)
    config["data"]["fold"] = fold
    weights = network.state_dict()
    checkpoint = Checkpoint(source.network, source.channels, source.label_table, config, weights)
    checkpoint.manifest = source.manifest if manifest is None else manifest
    return save_checkpoint(checkpoint, path)


@pytest.fixture(scope="module")
def folds(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """One checkpoint per fold of the tiny dataset's 3-fold split, each with different weights."""
    source = load_checkpoint(tiny_checkpoint, training=False)
    folder = tmp_path_factory.mktemp("folds")
    return [_fold_checkpoint(source, folder / f"fold{k}.pt", fold=k) for k in range(NUM_FOLDS)]


def _validation(root: Path, fold: int) -> list[InputCase]:
    """The fold's validation cases, from the manifest training builds (independently of the module)."""
    manifest = build_manifest(root, layout="brats", num_folds=NUM_FOLDS, seed=3)
    return [InputCase(c.id, tuple(root / p for p in c.images)) for c in manifest.split(fold)[1]]


def _validation_ids(root: Path, fold: int) -> set[str]:
    return {case.id for case in _validation(root, fold)}


def _predict(*args: str | Path) -> int:
    return main(["predict", *(str(a) for a in args), "--progress", "none"])


def test_each_case_is_segmented_by_its_own_fold(folds: list[Path], brats_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "cv"
    assert _predict("--model", *folds, "--cross-validation", "--output", out) == 0
    written = {p.name.removesuffix(".nii.gz") for p in out.glob("*.nii.gz")}
    assert written == {d.name for d in brats_root.iterdir() if d.is_dir()}  # every case, once
    differs = 0
    for fold, checkpoint in enumerate(folds):
        own = Predictor.from_checkpoint(checkpoint, device="cpu")
        other = Predictor.from_checkpoint(folds[(fold + 1) % NUM_FOLDS], device="cpu")
        for case in _validation(brats_root, fold):
            image = read_case(case)
            saved = nib.load(out / f"{case.id}.nii.gz")
            np.testing.assert_array_equal(np.asarray(saved.dataobj), own.predict(image))
            np.testing.assert_allclose(saved.affine, image.geometry.affine, atol=1e-5)  # the input's grid
            differs += not np.array_equal(own.predict(image), other.predict(image))
    assert differs > 0  # the folds' weights differ, so the check above tells them apart

    assert _predict("--model", *folds, "--cross-validation", "--output", out) == 0  # resumed: all skipped
    summary = (out / "summary.csv").read_text()
    assert summary.count(",skipped,") == len(written)


def test_a_subset_of_folds_leaves_the_other_cases_out(
    folds: list[Path], brats_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cv"
    assert _predict("--model", folds[2], folds[0], "--cross-validation", "--output", out) == 0
    written = {p.name.removesuffix(".nii.gz") for p in out.glob("*.nii.gz")}
    assert written == _validation_ids(brats_root, 0) | _validation_ids(brats_root, 2)
    assert "medseg: note: no checkpoint for fold(s) [1]; their cases are left out" in capsys.readouterr().err
    # another set of folds would mix two runs' outputs in one folder
    assert _predict("--model", *folds, "--cross-validation", "--output", out) == 2
    assert "holds predictions of another model" in capsys.readouterr().err


@pytest.mark.parametrize("kept_manifest", [True, False])
def test_a_moved_dataset_is_found_with_data_root(
    folds: list[Path], brats_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], kept_manifest: bool
) -> None:
    moved = tmp_path / "moved"
    shutil.copytree(brats_root, moved)
    source = load_checkpoint(folds[0], training=False)
    source.config["data"]["root"] = str(tmp_path / "gone")
    if not kept_manifest:  # written before checkpoints kept their manifest: the split is found by scanning
        source.manifest = None
    lost = save_checkpoint(source, tmp_path / "lost.pt")
    assert _predict("--model", lost, "--cross-validation", "--output", tmp_path / "a") == 2
    assert str(tmp_path / "gone") in capsys.readouterr().err
    assert _predict("--model", lost, "--cross-validation", "--data-root", moved, "--output", tmp_path / "b") == 0
    assert {p.name.removesuffix(".nii.gz") for p in (tmp_path / "b").glob("*.nii.gz")} == _validation_ids(moved, 0)


def test_the_kept_split_holds_when_the_dataset_gains_cases(folds: list[Path], brats_root: Path, tmp_path: Path) -> None:
    grown = tmp_path / "grown"
    shutil.copytree(brats_root, grown)
    for n in range(90, 96):  # six more cases, copies of the first under new ids
        new = grown / f"BraTS2021_{n:05d}"
        new.mkdir()
        for file in (brats_root / "BraTS2021_00000").iterdir():
            shutil.copy(file, new / file.name.replace("BraTS2021_00000", new.name))
    assert _validation_ids(grown, 1) != _validation_ids(brats_root, 1)  # a fresh scan splits differently
    out = tmp_path / "cv"
    assert _predict("--model", folds[1], "--cross-validation", "--data-root", grown, "--output", out) == 0
    assert {p.name.removesuffix(".nii.gz") for p in out.glob("*.nii.gz")} == _validation_ids(brats_root, 1)


def test_folds_must_differ_and_share_one_split(
    folds: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = load_checkpoint(folds[1], training=False)
    five_folds = build_manifest(Path(source.config["data"]["root"]), layout="brats", num_folds=5, seed=3)
    other_split = _fold_checkpoint(source, tmp_path / "five.pt", fold=1, manifest=five_folds.to_dict())
    again = Path(shutil.copy(folds[1], tmp_path / "again.pt"))
    cases = [
        ([folds[0], folds[1], again], f"{again}: validated on fold 1, as {folds[1]} did"),
        ([folds[0], other_split], f"{other_split}: was trained on another dataset or split than {folds[0]}"),
    ]
    for models, message in cases:
        out = tmp_path / "cv"
        assert _predict("--model", *models, "--cross-validation", "--output", out) == 2
        assert capsys.readouterr().err.strip() == f"medseg: error: {message}"
        assert not out.exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--cross-validation", "--input", "x"], "--cross-validation predicts the folds' own validation cases"),
        (["--data-root", "x", "--input", "x"], "--data-root goes with --cross-validation"),
    ],
)
def test_cli_refuses_mixed_arguments(
    folds: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    assert _predict("--model", folds[0], "--output", tmp_path / "cv", *extra) == 2
    assert capsys.readouterr().err.startswith(f"medseg: error: {message}")


def test_a_checkpoint_whose_config_does_not_load_is_named(
    folds: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = load_checkpoint(folds[0], training=False)
    source.config["train"]["lr"] = -1.0
    broken = save_checkpoint(source, tmp_path / "broken.pt")
    assert _predict("--model", broken, "--cross-validation", "--output", tmp_path / "cv") == 2
    err = capsys.readouterr().err.strip()
    assert err == f"medseg: error: {broken}: its training config does not load: train.lr must be > 0, got -1.0"


def test_info_names_the_cases_a_checkpoint_validated_on(
    folds: list[Path], brats_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    validation = [case.id for case in _validation(brats_root, 1)]
    assert main(["info", "--model", str(folds[1]), "--json"]) == 0
    assert ModelDescription.from_json(capsys.readouterr().out).training_data == TrainingData(
        fold=1, num_folds=NUM_FOLDS, training_cases=6 - len(validation), validation_cases=tuple(validation)
    )
    assert main(["info", "--model", str(folds[1])]) == 0
    last = capsys.readouterr().out.splitlines()[-1]
    assert last.startswith(f"trained on fold 1 of {NUM_FOLDS}: {6 - len(validation)} training cases, validated on ")


def test_a_shard_without_cases_writes_every_label_column(folds: list[Path], brats_root: Path, tmp_path: Path) -> None:
    ids = _validation_ids(brats_root, 0) | _validation_ids(brats_root, 1) | _validation_ids(brats_root, 2)
    count = 50
    empty = next(i for i in range(1, count + 1) if not any(Shard(i, count).contains(case) for case in ids))
    out = tmp_path / "cv"
    assert _predict("--model", *folds, "--cross-validation", "--output", out, "--shard", f"{empty}/{count}") == 0
    header = (out / f"summary.shard-{empty}-of-{count}.csv").read_text().splitlines()
    assert header == ["case,status,seconds,output,reason,flags,SeriesInstanceUID,SeriesDescription,NCR_ml,ED_ml,ET_ml"]
