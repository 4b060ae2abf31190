"""Quality flags: a training fingerprint measured from files, and cases built so that each flag must fire (a
brain-MR-like input to a CT model, an expected label left empty, a structure on the border, a volume beyond
training's, an uncertain case), and one where none does; through ``medseg predict``'s summary, its progress
events, ``medseg info`` and ``medseg calibrate``'s stored threshold."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medseg.checkpoint import load_checkpoint, save_checkpoint
from medseg.cli import main
from medseg.config import TransformConfig
from medseg.data.manifest import ManifestCase
from medseg.errors import CheckpointError
from medseg.inference import predict_folder
from medseg.inference.calibration import CalibrationParams, calibrate
from medseg.inference.quality import (
    EXPECTED_PRESENCE,
    CaseProfile,
    QualityReference,
    TrainingFingerprint,
    measure_training_cases,
    profile_case,
    quality_flags,
    touches_border,
    volumes_ml,
)
from medseg.io import Geometry, Image
from medseg.labels import LabelTable

MakeCheckpoint = Callable[..., Path]
SHAPE = (24, 24, 12)
SPACING = (2.0, 2.0, 4.0)
AFFINE = np.diag([*SPACING, 1.0])
VOXEL_ML = math.prod(SPACING) / 1000
TABLE = LabelTable("tissue", {0: "background", 1: "tissue"})
CT = TransformConfig(intensity="ct_window", hu_window=[-175.0, 250.0], crop_foreground=False)


def _ball(radius: float, shape: tuple[int, int, int] = SHAPE) -> np.ndarray:
    """``(X, Y, Z)`` uint8: 1 inside an ellipsoid of ``radius`` voxels (half along Z) at the centre."""
    x, y, z = np.indices(shape, dtype=float)
    cx, cy, cz = ((s - 1) / 2 for s in shape)
    return (((x - cx) ** 2 + (y - cy) ** 2 + (2 * (z - cz)) ** 2) <= radius**2).astype(np.uint8)


def _ct(seed: int, radius: float = 8.0) -> tuple[np.ndarray, np.ndarray]:
    """A CT-like case: air (-1000 HU) around a body of soft tissue (30-60 HU) holding an organ (60-90 HU)."""
    rng = np.random.default_rng(seed)
    image = np.full(SHAPE, -1000.0, np.float32) + rng.normal(0, 10, SHAPE).astype(np.float32)
    body = _ball(11.0).astype(bool)
    image[body] = rng.uniform(30, 60, int(body.sum()))
    organ = _ball(radius)
    image[organ.astype(bool)] = rng.uniform(60, 90, int(organ.sum()))
    return image, organ


def _brain_mr(seed: int) -> np.ndarray:
    """An MR-like head: background 0 around a brain of 300-800 (arbitrary units, no air at -1000 HU)."""
    rng = np.random.default_rng(seed)
    image = np.zeros(SHAPE, np.float32)
    brain = _ball(11.0).astype(bool)
    image[brain] = rng.uniform(300, 800, int(brain.sum()))
    return image


def _profile(image: np.ndarray, labels: np.ndarray, spacing: tuple[float, ...] = SPACING) -> CaseProfile:
    volumes = volumes_ml(labels, spacing, TABLE.labels)
    geometry = Geometry(image.shape, np.diag([*spacing, 1.0]))
    return profile_case(Image(image[None], geometry), labels, transforms=CT, volumes=volumes)


@pytest.fixture(scope="module")
def fingerprint() -> TrainingFingerprint:
    """Four CT-like training cases whose organ measures 8 to 9.5 voxels in radius."""
    profiles = [_profile(*_ct(seed, radius)) for seed, radius in enumerate((8.0, 8.5, 9.0, 9.5))]
    return TrainingFingerprint.from_profiles(profiles, channels=["CT"], intensity="ct_window", with_images=4)


def _flags(fingerprint: TrainingFingerprint | None, profile: CaseProfile, **scores: float) -> tuple[str, ...]:
    return quality_flags(profile, fingerprint=fingerprint, channels=["CT"], uncertainty=scores, uncertain_above=0.2)


def test_a_case_like_the_training_cases_raises_no_flag(fingerprint: TrainingFingerprint) -> None:
    organ_ml = [int(_ct(0, r)[1].sum()) * VOXEL_ML for r in (8.0, 9.5)]
    assert fingerprint.labels["tissue"].presence == 1.0
    assert fingerprint.labels["tissue"].volume_ml == pytest.approx(organ_ml, abs=1e-3)
    assert fingerprint.spacing_mm == ((2.0, 2.0, 4.0), (2.0, 2.0, 4.0))  # sorted axes
    assert _flags(fingerprint, _profile(*_ct(10, 8.7)), entropy_boundary=0.1) == ()


def test_a_brain_mr_given_to_a_ct_model_is_unlike_training(fingerprint: TrainingFingerprint) -> None:
    """The model's window sees no air: quantiles far from every CT's, whatever it predicts there."""
    image = _brain_mr(1)
    _, organ = _ct(0, 8.7)
    assert _flags(fingerprint, _profile(image, organ)) == ("unlike_training",)
    scaled = image / 4  # an MR of 75-200: inside the HU window, and still nothing like a CT
    assert _flags(fingerprint, _profile(scaled, organ)) == ("unlike_training",)


def test_a_voxel_size_more_than_twice_training_is_unlike_training(fingerprint: TrainingFingerprint) -> None:
    image, organ = _ct(11, 8.7)
    assert _flags(fingerprint, _profile(image, organ, spacing=(2.0, 2.0, 7.9))) == ("volume_out_of_range",)
    assert "unlike_training" in _flags(fingerprint, _profile(image, organ, spacing=(2.0, 2.0, 8.1)))
    assert "unlike_training" in _flags(fingerprint, _profile(image, organ, spacing=(0.9, 2.0, 4.0)))


def test_each_flag_fires_on_the_case_built_for_it(fingerprint: TrainingFingerprint) -> None:
    image, organ = _ct(12, 8.7)
    assert _flags(fingerprint, _profile(image, np.zeros_like(organ))) == ("empty_label",)
    assert _flags(fingerprint, _profile(image, _ct(0, 7.0)[1])) == ("volume_out_of_range",)
    assert _flags(fingerprint, _profile(image, _ct(0, 10.5)[1])) == ("volume_out_of_range",)
    on_edge = organ.copy()
    on_edge[0, 12, 6] = 1  # one voxel more on a face: the organ's volume is barely changed
    assert _flags(fingerprint, _profile(image, on_edge)) == ("touches_border",)
    assert _flags(fingerprint, _profile(image, organ), entropy_boundary=0.21) == ("uncertain",)
    assert _flags(fingerprint, _profile(image, organ), entropy_foreground=0.9) == ()  # only entropy_boundary counts


def test_without_a_fingerprint_only_the_border_and_uncertainty_count(fingerprint: TrainingFingerprint) -> None:
    edge = np.ones(SHAPE, np.uint8)  # everything: the border, and far beyond training's volumes
    assert _flags(None, _profile(_brain_mr(2), edge), entropy_boundary=0.3) == ("touches_border", "uncertain")
    assert _flags(fingerprint, _profile(_brain_mr(2), edge), entropy_boundary=0.3) == (
        "unlike_training",
        "touches_border",
        "volume_out_of_range",
        "uncertain",
    )


def test_touches_border_looks_at_every_face() -> None:
    labels = np.zeros((5, 6, 7), np.uint8)
    labels[1:4, 1:5, 1:6] = 2
    assert not touches_border(labels)
    for axis in range(3):
        for index in (0, -1):
            edge = labels.copy()
            np.moveaxis(edge, axis, 0)[index, 2, 2] = 1
            assert touches_border(edge)


def _write_dataset(root: Path, cases: dict[str, tuple[np.ndarray, np.ndarray]]) -> list[ManifestCase]:
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    out = []
    for case, (image, labels) in cases.items():
        nib.save(nib.Nifti1Image(image, AFFINE), root / "imagesTr" / f"{case}_0000.nii.gz")
        nib.save(nib.Nifti1Image(labels, AFFINE), root / "labelsTr" / f"{case}.nii.gz")
        out.append(
            ManifestCase(case, (f"imagesTr/{case}_0000.nii.gz",), f"labelsTr/{case}.nii.gz", patient=case, fold=0)
        )
    return out


def test_measured_from_files_it_is_what_the_profiles_give(tmp_path: Path, fingerprint: TrainingFingerprint) -> None:
    data = {f"ct{seed}": _ct(seed, radius) for seed, radius in enumerate((8.0, 8.5, 9.0, 9.5))}
    cases = _write_dataset(tmp_path, data)
    measured = measure_training_cases(cases, root=tmp_path, table=TABLE, channels=["CT"], transforms=CT)
    assert measured == fingerprint
    assert TrainingFingerprint.from_dict(json.loads(json.dumps(measured.to_dict()))) == measured
    partial = [dataclasses.replace(cases[0], labelled=frozenset()), *cases[1:]]  # case 0 does not annotate tissue
    data["ct0"] = (data["ct0"][0], np.zeros(SHAPE, np.uint8))
    _write_dataset(tmp_path / "partial", data)
    measured = measure_training_cases(partial, root=tmp_path / "partial", table=TABLE, channels=["CT"], transforms=CT)
    assert measured.labels["tissue"].presence == 1.0  # the case that did not annotate it does not count


def _model_with_fingerprint(path: Path, make: MakeCheckpoint, logits: tuple[float, float], fp: dict) -> Path:
    make(path, logits=logits)
    checkpoint = load_checkpoint(path, training=False)
    checkpoint.config["transforms"].update(intensity="ct_window", hu_window=[-175.0, 250.0])
    checkpoint.config["inference"]["crop_foreground"] = False  # answers the same on the whole image
    return save_checkpoint(dataclasses.replace(checkpoint, training_fingerprint=fp, channels=["CT"]), path)


def _summary(folder: Path) -> dict[str, str]:
    return {row["case"]: row["flags"] for row in csv.DictReader((folder / "summary.csv").open())}


def test_predict_writes_the_flags_to_the_summary_and_the_events(
    tmp_path: Path,
    constant_checkpoint_at: MakeCheckpoint,
    fingerprint: TrainingFingerprint,
    capsys: pytest.CaptureFixture[str],
) -> None:
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    nib.save(nib.Nifti1Image(_ct(20, 8.7)[0], AFFINE), inputs / "ct_0000.nii.gz")
    nib.save(nib.Nifti1Image(_brain_mr(21), AFFINE), inputs / "mr_0000.nii.gz")
    fp = fingerprint.to_dict()
    background = _model_with_fingerprint(tmp_path / "background.pt", constant_checkpoint_at, (4.0, 0.0), fp)
    everything = _model_with_fingerprint(tmp_path / "everything.pt", constant_checkpoint_at, (0.0, 4.0), fp)

    summary = predict_folder(model=background, input_path=inputs, output_dir=tmp_path / "bg", progress="json")
    assert {r.case: r.flags for r in summary.results} == {
        "ct": ("empty_label",),
        "mr": ("unlike_training", "empty_label"),
    }
    assert _summary(tmp_path / "bg") == {"ct": "empty_label", "mr": "unlike_training;empty_label"}
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {e["case"]: e["flags"] for e in events if e["event"] == "case_done"} == {
        "ct": ["empty_label"],
        "mr": ["unlike_training", "empty_label"],
    }
    resumed = predict_folder(model=background, input_path=inputs, output_dir=tmp_path / "bg", progress="none")
    assert {r.case: (r.status, r.flags) for r in resumed.results} == {
        "ct": ("skipped", ("empty_label",)),
        "mr": ("skipped", ("unlike_training", "empty_label")),
    }

    predict_folder(model=everything, input_path=inputs, output_dir=tmp_path / "all", progress="none")
    flags = _summary(tmp_path / "all")  # an organ of the whole image has the intensity of air: nothing like one
    assert flags == {
        "ct": "unlike_training;touches_border;volume_out_of_range",
        "mr": "unlike_training;touches_border;volume_out_of_range",
    }

    old = load_checkpoint(background, training=False)  # a checkpoint of an older medseg: no fingerprint
    save_checkpoint(dataclasses.replace(old, training_fingerprint=None), tmp_path / "old.pt")
    predict_folder(model=tmp_path / "old.pt", input_path=inputs, output_dir=tmp_path / "old", progress="none")
    assert _summary(tmp_path / "old") == {"ct": "", "mr": ""}


def test_a_resumed_batch_flags_its_finished_cases_without_reading_their_images_again(
    tmp_path: Path, constant_checkpoint_at: MakeCheckpoint, fingerprint: TrainingFingerprint
) -> None:
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    nib.save(nib.Nifti1Image(_ct(20, 8.7)[0], AFFINE), inputs / "ct_0000.nii.gz")
    nib.save(nib.Nifti1Image(_brain_mr(21), AFFINE), inputs / "mr_0000.nii.gz")
    cases = tmp_path / "cases.json"
    cases.write_text(json.dumps([{"id": c, "images": [str(inputs / f"{c}_0000.nii.gz")]} for c in ("ct", "mr")]))
    model = _model_with_fingerprint(tmp_path / "m.pt", constant_checkpoint_at, (4.0, 0.0), fingerprint.to_dict())
    out = tmp_path / "out"
    run = {"model": model, "input_path": None, "cases_file": cases, "output_dir": out, "save_uncertainty": True}
    predict_folder(**run, progress="none")
    first = {row["case"]: row for row in csv.DictReader((out / "summary.csv").open())}
    assert {case: row["flags"] for case, row in first.items()} == {
        "ct": "empty_label",
        "mr": "unlike_training;empty_label",
    }

    (inputs / "mr_0000.nii.gz").unlink()  # the finished case's image is gone: its flags come from its record
    (inputs / "ct_0000.nii.gz").write_bytes(b"not an image any more")
    resumed = predict_folder(**run, progress="none")
    assert [r.status for r in resumed.results] == ["skipped", "skipped"]
    again = {row["case"]: row for row in csv.DictReader((out / "summary.csv").open())}
    changed = ("status", "seconds", "reason")  # skipped, because its outputs exist
    for case, row in first.items():
        assert {k: v for k, v in again[case].items() if k not in changed} == {
            k: v for k, v in row.items() if k not in changed
        }

    profile = CaseProfile.from_dict(json.loads((out / "mr_quality.json").read_text()))
    assert profile.volumes_ml == {"tissue": 0.0} and np.isnan(profile.foreground).all()  # nothing predicted
    measured = _profile(_brain_mr(21), np.zeros(SHAPE, np.uint8))
    for field in dataclasses.fields(CaseProfile):  # the record gives back the profile measured, exactly
        np.testing.assert_array_equal(getattr(profile, field.name), getattr(measured, field.name))
    (out / "mr_quality.json").unlink()  # without its record, a case is predicted again: it needs its image
    assert {r.case: r.status for r in predict_folder(**run, progress="none").results} == {
        "ct": "skipped",
        "mr": "failed",
    }


def test_a_malformed_fingerprint_is_a_checkpoint_error(tmp_path: Path, constant_checkpoint_at: MakeCheckpoint) -> None:
    path = _model_with_fingerprint(tmp_path / "m.pt", constant_checkpoint_at, (4.0, 0.0), {"cases": 3})
    with pytest.raises(CheckpointError, match=r"m\.pt.*training fingerprint is malformed"):
        QualityReference.of(load_checkpoint(path, training=False), temperature_scaling=False)


def test_calibrate_stores_the_uncertain_threshold_with_and_without_the_temperature(
    tmp_path: Path, constant_checkpoint_at: MakeCheckpoint
) -> None:
    """A model that says tissue with probability sigmoid(4) everywhere, on a case three voxels in four
    tissue: the case's entropy is that of 0.982 as trained, and of 0.75 once the temperature is fitted."""
    images, refs = tmp_path / "images", tmp_path / "refs"
    images.mkdir()
    refs.mkdir()
    nib.save(
        nib.Nifti1Image(np.random.default_rng(0).uniform(1, 2, SHAPE).astype(np.float32), AFFINE),
        images / "a_0000.nii.gz",
    )
    reference = np.ones(SHAPE, np.uint8)
    reference[::4] = 0
    nib.save(nib.Nifti1Image(reference, AFFINE), refs / "a.nii.gz")
    (refs / "dataset.json").write_text(json.dumps({"name": "tissue", "labels": {"0": "background", "1": "tissue"}}))
    model = constant_checkpoint_at(tmp_path / "model.pt", logits=(0.0, 4.0))
    out = tmp_path / "calibrated.pt"
    result = calibrate(
        model=model, ref_dir=refs, out=out, input_path=images, device="cpu", backend="torch",
        params=CalibrationParams(voxels_per_case=10**6),
    )  # fmt: skip

    def entropy(p: float) -> float:
        return -(p * math.log(p) + (1 - p) * math.log(1 - p))

    sure = 1 / (1 + math.exp(-4.0))
    assert result.uncertain_above["as_trained"] == pytest.approx(entropy(sure), abs=1e-5)
    assert result.uncertain_above["temperature_scaling"] == pytest.approx(entropy(0.75), abs=1e-3)
    stored = load_checkpoint(out, training=False)
    assert QualityReference.of(stored, temperature_scaling=True).uncertain_above == pytest.approx(
        entropy(0.75), abs=1e-3
    )
    assert QualityReference.of(stored, temperature_scaling=False).uncertain_above == pytest.approx(
        entropy(sure), abs=1e-5
    )


def test_training_keeps_the_fingerprint_and_info_shows_it(
    tiny_checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stored = load_checkpoint(tiny_checkpoint, training=False)
    fp = TrainingFingerprint.from_dict(stored.training_fingerprint or {})
    assert fp.cases == 4 and fp.intensity_cases == 4  # six phantom cases, three folds: four train
    assert fp.spacing_mm == ((4.0, 4.0, 4.0), (4.0, 4.0, 4.0))
    assert set(fp.quantiles) == {"T1", "T1ce", "T2", "FLAIR"}
    assert all(r.presence >= EXPECTED_PRESENCE for r in fp.labels.values())  # every phantom has every label
    assert main(["info", "--model", str(tiny_checkpoint)]) == 0
    assert "training fingerprint of 4 case(s) (4 with intensities, zscore_nonzero): voxel sizes 4-4 x 4-4 x 4-4" in (
        capsys.readouterr().out
    )
    assert main(["info", "--model", str(tiny_checkpoint), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["training_fingerprint"]["cases"] == 4


def test_volumes_count_label_maps_of_any_dtype() -> None:
    """Label files are read in their stored type: float32 maps (as MSD Hippocampus stores them) count as uint8."""
    labels = np.zeros((10, 12, 9), dtype=np.uint8)
    labels[:2] = 1
    labels[5, :4] = 2
    names = {0: "background", 1: "Anterior", 2: "Posterior"}
    expected = {"Anterior": 0.432, "Posterior": 0.072}  # 216 and 36 voxels of 2 mm³
    assert volumes_ml(labels, (2.0, 1.0, 1.0), names) == expected
    assert volumes_ml(labels.astype(np.float32), (2.0, 1.0, 1.0), names) == expected
