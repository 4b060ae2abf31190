"""Semi-supervised training (mean teacher, FixMatch, self-training): their formulas against hand-computed
values, and tiny real runs that use unlabelled phantom cases, log the consistency term, and resume bit for bit."""

from __future__ import annotations

import copy
import csv
import dataclasses
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
import torch
from torch import nn

from medseg.checkpoint import load_checkpoint
from medseg.config import Config, SemiSupervisedConfig, config_from_dict
from medseg.data.cases import InputCase
from medseg.data.manifest import ManifestCase, build_manifest, save_manifest
from medseg.errors import ConfigError, MedsegInputError
from medseg.inference import Predictor
from medseg.inference.predictor import read_case
from medseg.io import read_image
from medseg.labels import LabelTable
from medseg.training import train
from medseg.training.pseudo_labels import PSEUDO_LABELS, fit_class_weights, mean_volumes_ml, write_pseudo_labels
from medseg.training.semi_supervised import (
    consistency_loss,
    ema_decay_at,
    ema_update,
    pseudo_label_loss,
    sigmoid_rampup,
    strong_view,
    unlabelled_cases,
)

if TYPE_CHECKING:
    from conftest import MakeConfig, MakeConfigFile


def test_sigmoid_rampup_follows_exp_minus_five_one_minus_t_squared() -> None:
    assert sigmoid_rampup(0.0, 4.0) == pytest.approx(math.exp(-5.0))
    assert sigmoid_rampup(1.0, 4.0) == pytest.approx(math.exp(-5.0 * 0.75**2))
    assert sigmoid_rampup(2.0, 4.0) == pytest.approx(math.exp(-1.25))
    assert sigmoid_rampup(4.0, 4.0) == 1.0
    assert sigmoid_rampup(9.0, 4.0) == 1.0
    assert sigmoid_rampup(0.0, 0.0) == 1.0  # no ramp-up


def test_ema_decay_warms_up_then_holds() -> None:
    assert ema_decay_at(1, 0.99) == pytest.approx(0.5)
    assert ema_decay_at(3, 0.99) == pytest.approx(0.75)
    assert ema_decay_at(99, 0.99) == pytest.approx(0.99)
    assert ema_decay_at(10_000, 0.99) == pytest.approx(0.99)


def test_ema_update_averages_parameters_and_copies_buffers() -> None:
    torch.manual_seed(0)
    student = nn.Sequential(nn.Conv3d(1, 2, 3), nn.BatchNorm3d(2))
    teacher = copy.deepcopy(student)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(torch.randn_like(p))
    student(torch.randn(2, 1, 5, 5, 5))  # moves the student's batch-norm statistics
    before = [p.clone() for p in teacher.parameters()]
    ema_update(teacher, student, decay=0.9)
    for t, b, s in zip(teacher.parameters(), before, student.parameters(), strict=True):
        assert torch.allclose(t, 0.9 * b + 0.1 * s, atol=1e-7)
    for t, s in zip(teacher.buffers(), student.buffers(), strict=True):
        assert torch.equal(t, s)


def test_consistency_loss_is_the_mean_squared_difference_of_probabilities() -> None:
    student = torch.zeros(1, 2, 2, 2, 2)  # softmax 0.5 / 0.5 everywhere
    teacher = torch.zeros(1, 2, 2, 2, 2)
    teacher[:, 0] = math.log(3.0)  # softmax 0.75 / 0.25
    assert float(consistency_loss(student, teacher, regions=False)) == pytest.approx(0.25**2)
    assert float(consistency_loss(student, teacher, regions=True)) == pytest.approx(0.25**2 / 2)  # sigmoid: 0.75, 0.5
    assert float(consistency_loss(teacher, teacher, regions=False)) == 0.0
    grad = student.clone().requires_grad_(True)
    consistency_loss(grad, teacher, regions=False).backward()
    assert grad.grad is not None and grad.grad.abs().sum() > 0


def test_pseudo_label_loss_is_the_cross_entropy_over_confident_voxels() -> None:
    teacher = torch.zeros(1, 2, 2, 1, 1)
    teacher[0, 1, 0] = math.log(19.0)  # voxel 0: class 1 with p 0.95, confident at 0.95
    teacher[0, 0, 1] = math.log(1.5)  # voxel 1: class 0 with p 0.6, unsure
    student = torch.zeros(1, 2, 2, 1, 1)  # p 0.5 / 0.5: cross-entropy log 2 against any label
    assert float(pseudo_label_loss(student, teacher, regions=False, threshold=0.95)) == pytest.approx(math.log(2) / 2)
    assert float(pseudo_label_loss(student, teacher, regions=False, threshold=0.5)) == pytest.approx(math.log(2))
    assert float(pseudo_label_loss(student, teacher, regions=False, threshold=0.99)) == 0.0
    student[0, 1, 0] = math.log(3.0)  # voxel 0 now p 0.75 for the teacher's class 1: -log 0.75
    assert float(pseudo_label_loss(student, teacher, regions=False, threshold=0.95)) == pytest.approx(
        -math.log(0.75) / 2
    )
    # regions: sigmoid per output; output 0 at voxel 0 is p 0.95 (label 1), the rest are unsure (p 0.6, 0.5)
    regions = torch.zeros(1, 2, 2, 1, 1)
    regions[0, 0, 0] = math.log(19.0)
    regions[0, 1, 1] = math.log(1.5)
    flat = torch.zeros(1, 2, 2, 1, 1)  # sigmoid 0.5: binary cross-entropy log 2
    assert float(pseudo_label_loss(flat, regions, regions=True, threshold=0.95)) == pytest.approx(math.log(2) / 4)
    grad = flat.clone().requires_grad_(True)
    pseudo_label_loss(grad, regions, regions=True, threshold=0.95).backward()
    assert grad.grad is not None and int((grad.grad != 0).sum()) == 1  # only the confident voxel teaches


def test_pseudo_label_dice_counts_the_confident_voxels_only() -> None:
    teacher = torch.zeros(1, 2, 2, 1, 1)
    teacher[0, 1, 0] = math.log(19.0)  # voxel 0: class 1, confident; voxel 1: p 0.5, unsure
    student = torch.zeros(1, 2, 2, 1, 1)  # p 0.5 / 0.5 everywhere
    # over voxel 0 only: background Dice 0 (0.5 predicted, none true): loss 1; class 1: 2 x 0.5 / (0.5 + 1): 1/3
    expected = math.log(2) / 2 + (1.0 + 1.0 / 3.0) / 2
    got = pseudo_label_loss(student, teacher, regions=False, threshold=0.95, dice=True)
    assert float(got) == pytest.approx(expected, abs=1e-4)
    student[0, 1, 1] = 5.0  # the unsure voxel changes nothing
    assert float(pseudo_label_loss(student, teacher, regions=False, threshold=0.95, dice=True)) == pytest.approx(
        expected, abs=1e-4
    )


def test_strong_view_changes_intensities_in_place_and_repeats_with_its_seed() -> None:
    torch.manual_seed(0)
    patch = torch.randn(1, 16, 24, 16)
    view = strong_view((16, 24, 16), noise_std=0.1)
    view.set_random_state(seed=7)
    first = torch.as_tensor(view(patch)).clone()
    view.set_random_state(seed=7)
    assert torch.equal(torch.as_tensor(view(patch)), first)
    assert first.shape == patch.shape and not torch.equal(first, patch)
    cut = first == 0  # the cut-out box: between 1/8 and 1/2 of the patch along each axis
    extent = [int(cut.any(dim=d).sum()) for d in ((0, 2, 3), (0, 1, 3), (0, 1, 2))]
    assert all(n // 8 <= e <= n // 2 for e, n in zip(extent, (16, 24, 16), strict=True)), extent
    # every other voxel stays where it was: the view follows the patch, not a moved copy of it
    kept = ~cut
    assert float(torch.corrcoef(torch.stack([first[kept], patch[kept]]))[0, 1]) > 0.5
    assert abs(float(torch.corrcoef(torch.stack([first[kept], patch.flip(1)[kept]]))[0, 1])) < 0.2


def test_config_refuses_an_ema_decay_of_one() -> None:
    with pytest.raises(ConfigError, match=r"semi_supervised.ema_decay must be in \[0, 1\)"):
        config_from_dict({"semi_supervised": {"ema_decay": 1.0}})


def _unlabelled_manifest(brats_root: Path, path: Path) -> Path:
    """The training fold's cases of :func:`make_tiny_config`'s split (3 folds, fold 0 validates), without labels."""
    manifest = build_manifest(brats_root, layout="brats", num_folds=3, seed=3)
    cases = [dataclasses.replace(c, label=None) for c in manifest.cases if c.fold != 0]
    save_manifest(dataclasses.replace(manifest, cases=tuple(cases), root=brats_root), path)
    return path


def _semi(config: Config, unlabelled: Path, **settings: object) -> Config:
    semi = SemiSupervisedConfig(unlabelled=str(unlabelled), rampup_epochs=2.0, batch_size=1, **settings)
    return dataclasses.replace(config, semi_supervised=semi)


@pytest.mark.parametrize(
    ("method", "pseudo_label_loss"), [("mean_teacher", "ce"), ("fixmatch", "ce"), ("fixmatch", "dice_ce")]
)
def test_unlabelled_cases_teach_the_student_and_move_the_teacher(
    brats_root: Path, tmp_path: Path, tiny_config: MakeConfig, method: str, pseudo_label_loss: str
) -> None:
    unlabelled = _unlabelled_manifest(brats_root, tmp_path / "unlabelled.json")
    # threshold 0.5: the few steps' teacher is confident nowhere near FixMatch's 0.95
    settings = {"method": method, "threshold": 0.5, "pseudo_label_loss": pseudo_label_loss}
    config = _semi(tiny_config(brats_root, tmp_path / "run", epochs=2), unlabelled, weight=10.0, **settings)
    result = train(config)
    assert result.epochs_run == 2
    rows = list(csv.DictReader((tmp_path / "run" / "metrics.csv").open()))
    assert all(float(r["consistency_loss"]) > 0 for r in rows)
    # the weight of each epoch's last step (3 steps an epoch): 10 x exp(-5 (1 - t)^2), t = (epoch + 2/3) / 2
    for epoch, row in enumerate(rows):
        expected = 10.0 * sigmoid_rampup(epoch + 2 / 3, 2.0)
        assert float(row["consistency_weight"]) == pytest.approx(expected)
    last = load_checkpoint(tmp_path / "run" / "last.pt")
    teacher, student = last.state_dict, last.training["student"]
    assert any(not torch.equal(teacher[k], student[k]) for k in teacher if teacher[k].is_floating_point())
    best = load_checkpoint(tmp_path / "run" / "best.pt")
    assert best.training["best_epoch"] == result.best_epoch  # chosen by the teacher's Dice, holds the teacher


def test_unlabelled_patches_are_augmented_outside_bf16_autocast(
    brats_root: Path, tmp_path: Path, tiny_config: MakeConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    # with data.num_workers 0 the unlabelled loader augments in this process: not under the forward's autocast
    monkeypatch.setattr("medseg.inference.backends.base.cpu_has_native_bf16", lambda: True)
    unlabelled = _unlabelled_manifest(brats_root, tmp_path / "unlabelled.json")
    config = _semi(tiny_config(brats_root, tmp_path / "run", epochs=1, precision="bf16"), unlabelled)
    config.transforms.affine_prob = 1.0  # the resampling that cannot take bf16
    train(config, device="cpu")
    history = load_checkpoint(tmp_path / "run" / "last.pt").training["history"]
    assert math.isfinite(history[0]["train_loss"]) and history[0]["consistency_loss"] > 0


def test_unlabelled_cases_of_a_manifest_are_those_without_a_label(brats_root: Path, tmp_path: Path) -> None:
    manifest = build_manifest(brats_root, layout="brats", num_folds=3, seed=3)
    path = save_manifest(dataclasses.replace(manifest, root=brats_root), tmp_path / "labelled.json")
    with pytest.raises(MedsegInputError, match="holds no unlabelled case"):
        unlabelled_cases(path, channels=manifest.channels, data_root=None)
    cases = unlabelled_cases(
        _unlabelled_manifest(brats_root, tmp_path / "u.json"), channels=manifest.channels, data_root=None
    )
    assert len(cases) == 4 and all(Path(p).is_file() for c in cases for p in c.images)


def test_unlabelled_validation_cases_are_refused(brats_root: Path, tmp_path: Path, tiny_config: MakeConfig) -> None:
    config = _semi(tiny_config(brats_root, tmp_path / "run"), brats_root)  # a folder: every case, validation too
    with pytest.raises(ConfigError, match="is a validation case"):
        train(config)


@pytest.mark.parametrize("method", ["mean_teacher", "fixmatch"])
def test_semi_supervised_resume_continues_exactly(
    brats_root: Path, tmp_path: Path, tiny_config: MakeConfig, method: str
) -> None:
    unlabelled = _unlabelled_manifest(brats_root, tmp_path / "unlabelled.json")
    run = {"epochs": 3, "val_every": 2}
    train(_semi(tiny_config(brats_root, tmp_path / "straight", **run), unlabelled, method=method, threshold=0.5))
    cut = tiny_config(brats_root, tmp_path / "resumed", **run, max_minutes=0.0)
    interrupted = train(_semi(cut, unlabelled, method=method, threshold=0.5))
    assert interrupted.epochs_run == 1
    whole = tiny_config(brats_root, tmp_path / "resumed", **run)
    resumed = train(_semi(whole, unlabelled, method=method, threshold=0.5), resume=True)
    assert resumed.epochs_run == 3

    a, b = load_checkpoint(tmp_path / "straight" / "last.pt"), load_checkpoint(tmp_path / "resumed" / "last.pt")
    for name, x, y in (
        ("teacher", a.state_dict, b.state_dict),
        ("student", a.training["student"], b.training["student"]),
    ):
        assert x.keys() == y.keys()
        for key in x:
            assert torch.equal(x[key], y[key]), (name, key)
    columns = ("train_loss", "consistency_loss", "consistency_weight")
    assert [[r[c] for c in columns] for r in a.training["history"]] == [
        [r[c] for c in columns] for r in b.training["history"]
    ]
    assert a.training["best_score"] == b.training["best_score"]


def test_self_training_trains_on_the_teachers_label_maps(
    brats_root: Path, tmp_path: Path, tiny_config: MakeConfig, tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _unlabelled_manifest(brats_root, tmp_path / "unlabelled.json")
    settings = {"method": "self_training", "teacher": str(tiny_checkpoint)}
    monkeypatch.chdir(tmp_path)  # the run folder and the unlabelled cases' paths relative to the working directory
    unlabelled = Path("unlabelled.json")
    cut = _semi(tiny_config(brats_root, Path("run"), epochs=2, max_minutes=0.0), unlabelled, **settings)
    assert train(cut).epochs_run == 1
    folder = tmp_path / "run" / PSEUDO_LABELS
    predictor = Predictor.from_checkpoint(tiny_checkpoint, device="cpu")
    written = {}
    for case in unlabelled_cases(unlabelled, channels=predictor.channels, data_root=None):
        label = read_image(folder / f"{case.id}.nii.gz")
        image = read_case(InputCase(case.id, tuple(Path(p) for p in case.images)))
        assert label.geometry.same_grid(image.geometry) and label.array.shape == image.array.shape[1:]
        np.testing.assert_array_equal(label.array, predictor.predict(image))  # what medseg predict writes
        written[case.id] = (folder / f"{case.id}.nii.gz").stat().st_mtime_ns
    assert len(written) == 4
    # the 4 labelled training cases and the 4 pseudo-labelled ones
    assert load_checkpoint(tmp_path / "run" / "last.pt").training_fingerprint["cases"] == 8
    whole = _semi(tiny_config(brats_root, Path("run"), epochs=2), unlabelled, **settings)
    assert train(whole, resume=True).epochs_run == 2
    assert {c: (folder / f"{c}.nii.gz").stat().st_mtime_ns for c in written} == written  # labelled once


def test_class_weights_are_fitted_to_the_target_volumes() -> None:
    # two classes, voxel i with tissue probability (i + 0.5) / n: weight w labels tissue where w p > 1 - p, i.e.
    # p > 1 / (1 + w), a share w / (1 + w) of the voxels; a quarter of them needs w = 1/3
    n = 10_000
    tissue = (np.arange(n) + 0.5) / n
    weights = fit_class_weights(np.stack([1 - tissue, tissue]), np.full(n, 0.001), np.array([0.0, 2.5]), cases=1)
    assert weights[0] == 1.0 and weights[1] == pytest.approx(1 / 3, rel=1e-3)
    # three classes pooled from two cases: each foreground class reaches its mean volume per case
    probabilities = np.random.default_rng(0).dirichlet([8.0, 1.0, 1.0], size=20_000).T
    voxel_ml = np.full(20_000, 0.002)
    target = np.array([0.0, 3.0, 1.0])
    fitted = np.array(fit_class_weights(probabilities, voxel_ml, target, cases=2))
    labels = (fitted[:, None] * probabilities).argmax(0)
    assert [voxel_ml[labels == k].sum() / 2 for k in (1, 2)] == pytest.approx([3.0, 1.0], abs=0.01)
    plain = probabilities.argmax(0)
    assert voxel_ml[plain == 1].sum() / 2 < 1.5  # the plain argmax is far from the targets


def test_self_training_can_label_at_the_labelled_cases_volumes(
    brats_root: Path, tmp_path: Path, one_channel_checkpoint: Path
) -> None:
    table = LabelTable("tissue", {0: "background", 1: "tissue"})
    manifest = build_manifest(brats_root, layout="brats")
    # the labelled cases' mean volume of "tissue": their whole tumour (label values 1, 2 and 4 of a BraTS map)
    labelled = []
    for case in manifest.cases[:3]:
        seg = read_image(brats_root / str(case.label))
        path = tmp_path / f"{case.id}_tissue.nii.gz"
        from medseg.io.writers import write_label_map

        write_label_map((np.asarray(seg.array) > 0).astype(np.uint8), seg.geometry, path, table=table)
        labelled.append(dataclasses.replace(case, label=str(path)))
    target = mean_volumes_ml(labelled, brats_root, table)
    voxel_ml = float(np.prod(read_image(brats_root / str(labelled[0].label)).geometry.spacing)) / 1000
    expected = np.mean([np.count_nonzero(read_image(Path(c.label)).array) * voxel_ml for c in labelled])
    assert target[0] == 0.0 and target[1] == pytest.approx(expected, abs=0.002)
    # an untrained teacher on three other cases' T1 images: its labels reach that mean volume
    unlabelled = [ManifestCase(c.id, (str(brats_root / c.images[0]),), None, c.patient, 0) for c in manifest.cases[3:]]
    write_pseudo_labels(one_channel_checkpoint, unlabelled, tmp_path / "run", device="cpu", target_ml=target)
    folder = tmp_path / "run" / PSEUDO_LABELS
    plain = Predictor.from_checkpoint(one_channel_checkpoint, device="cpu")
    volumes, plain_volumes = [], []
    for case in unlabelled:
        label = read_image(folder / f"{case.id}.nii.gz")
        image = read_case(InputCase(case.id, (Path(case.images[0]),)))
        assert label.geometry.same_grid(image.geometry)
        volumes.append(np.count_nonzero(label.array) * voxel_ml)
        plain_volumes.append(np.count_nonzero(plain.predict(image)) * voxel_ml)
    assert np.mean(volumes) == pytest.approx(target[1], rel=0.05)
    assert abs(np.mean(plain_volumes) - target[1]) > 0.2 * target[1]  # the teacher's own labels are not there
    written = {c.id: (folder / f"{c.id}.nii.gz").stat().st_mtime_ns for c in unlabelled}
    write_pseudo_labels(one_channel_checkpoint, unlabelled, tmp_path / "run", device="cpu", target_ml=target)
    assert {c: (folder / f"{c}.nii.gz").stat().st_mtime_ns for c in written} == written  # the same fit: resumed


def test_labelled_share_sets_the_chance_that_a_draw_is_labelled() -> None:
    from monai.data import Dataset

    from medseg.distributed import DistContext
    from medseg.training.sampling import EpochLoader
    from medseg.training.trainer import _draw_weights

    weights = _draw_weights(2, 6, 0.5)  # 2 labelled cases then 6 pseudo-labelled ones
    assert weights == pytest.approx([0.25, 0.25] + [1 / 12] * 6)
    assert _draw_weights(2, 6, None) is None and _draw_weights(2, 0, 0.5) is None
    dataset = Dataset([{"i": i} for i in range(8)])
    ctx = DistContext(0, 1, torch.device("cpu"))
    loader = EpochLoader(dataset, iterations=400, batch_size=2, ctx=ctx, seed=0, num_workers=0, weights=weights)
    loader.seed_epoch(0, 0)
    drawn = torch.cat([batch["i"] for batch in loader.loader])
    assert len(drawn) == 800 and 0.45 < (drawn < 2).float().mean().item() < 0.55  # 0.25 with equal weights


def test_self_training_needs_a_teacher_that_fits(
    brats_root: Path, tmp_path: Path, tiny_config: MakeConfig, one_channel_checkpoint: Path
) -> None:
    unlabelled = _unlabelled_manifest(brats_root, tmp_path / "unlabelled.json")
    with pytest.raises(ConfigError, match="needed by, and only by, method self_training"):
        SemiSupervisedConfig(unlabelled=str(unlabelled), method="self_training")
    with pytest.raises(ConfigError, match="needed by, and only by, method self_training"):
        SemiSupervisedConfig(unlabelled=str(unlabelled), teacher="model.pt")
    with pytest.raises(ConfigError, match=r"semi_supervised\.unlabelled, which is null"):
        SemiSupervisedConfig(method="self_training", teacher="model.pt")
    with pytest.raises(ConfigError, match="labelled_share is for method self_training"):
        SemiSupervisedConfig(unlabelled=str(unlabelled), labelled_share=0.5)
    with pytest.raises(ConfigError, match="match_volumes is for method self_training"):
        SemiSupervisedConfig(unlabelled=str(unlabelled), method="fixmatch", match_volumes=True)
    with pytest.raises(ConfigError, match=r"labelled_share must be in \(0, 1\)"):
        SemiSupervisedConfig(unlabelled=str(unlabelled), method="self_training", teacher="m.pt", labelled_share=1.0)
    other = str(one_channel_checkpoint)  # one channel, background and foreground
    config = _semi(tiny_config(brats_root, tmp_path / "run"), unlabelled, method="self_training", teacher=other)
    with pytest.raises(ConfigError, match=r"semi_supervised.teacher .*one_channel.pt: its labels .* are not the"):
        train(config)
    assert not (tmp_path / "run" / PSEUDO_LABELS).exists()


@pytest.mark.slow
def test_semi_supervised_under_ddp_two_processes(
    brats_root: Path, tmp_path: Path, tiny_config_file: MakeConfigFile
) -> None:
    unlabelled = _unlabelled_manifest(brats_root, tmp_path / "unlabelled.json")
    semi = {"semi_supervised": {"unlabelled": str(unlabelled), "batch_size": 1}}
    config = tiny_config_file(
        tmp_path / "ddp.yaml",
        brats_root,
        tmp_path / "run",
        sections=semi,
        iterations_per_epoch=2,
        batch_size=1,
        val_every=2,
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29541",
           "-m", "medseg", "train", "--config", str(config), "--device", "cpu"]  # fmt: skip
    # a loaded 2-core machine takes minutes to start two processes
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    assert ckpt.training["epoch"] == 2
    assert not any(k.startswith("module.") for k in ckpt.training["student"]), "DDP wrapper leaked into the student"
    assert all(float(r["consistency_loss"]) > 0 for r in ckpt.training["history"])
    assert proc.stdout.count("training finished") == 2
