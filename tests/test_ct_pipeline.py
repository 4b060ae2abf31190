"""CT preprocessing from config (HU window, body crop, resampling, class-balanced patches), 4-D MSD
images as channels, and predictions written back on the input's own (anisotropic, oblique) grid."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai import transforms as mt
from monai.data import MetaTensor

from medseg.cli import main
from medseg.config import Config, TransformConfig, bundled_configs, config_from_dict
from medseg.data.cases import InputCase
from medseg.data.manifest import build_manifest
from medseg.errors import ConfigError
from medseg.inference import Predictor, read_case
from medseg.io import read_nifti
from medseg.keys import IMAGE, LABEL
from medseg.labels import BRATS2021, LabelTable
from medseg.phantoms.ct import LABELS, generate_ct_dataset
from medseg.transforms import (
    inference_transforms,
    load_transforms,
    normalize_transforms,
    patch_sampler,
    spatial_transforms,
    training_pipeline,
    validation_pipeline,
)

CT_SHAPE = (40, 40, 16)  # about 8.5 x 8.5 x 13 mm voxels: anisotropic
CT_SEED = 21  # case 0 is stored head first, case 4 on an oblique grid (non-identity directions)
NON_IDENTITY_CASES = ("ct_000", "ct_004")
TABLE = LabelTable("ct_organ_phantom", dict(LABELS))


def ct_config(root: Path, run_dir: Path, **transforms: object) -> Config:
    """A CT config small enough to train in seconds: HU window, body crop, 9 x 9 x 12 mm resampling."""
    return config_from_dict(
        {
            "seed": 0,
            "data": {"root": str(root), "layout": "msd", "num_folds": 3, "num_workers": 0},
            "transforms": {
                "spacing": [9.0, 9.0, 12.0],
                "intensity": "ct_window",
                "hu_window": [-175.0, 250.0],
                "foreground_threshold": -500.0,
                "patch_size": [16, 16, 16],
                "sampling": "class_balanced",
                "samples_per_case": 1,
                "flip_prob": 0.0,
                **transforms,
            },
            "network": {"name": "unet", "kwargs": {"channels": [8, 16, 32], "strides": [2, 2]}},
            "loss": {"name": "dice_ce"},
            "train": {
                "run_dir": str(run_dir),
                "epochs": 1,
                "iterations_per_epoch": 2,
                "batch_size": 2,
                "val_every": 1,
                "warmup_epochs": 0,
            },
            "inference": {"roi_size": [16, 16, 16], "sw_batch_size": 2},
        }
    )


@pytest.fixture(scope="module")
def ct_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ct") / "train"
    generate_ct_dataset(root, cases=6, seed=CT_SEED, shape=CT_SHAPE, workers=2)
    return root


@pytest.fixture(scope="module")
def ct_checkpoint(ct_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from medseg.training import train

    run_dir = tmp_path_factory.mktemp("ct_run") / "run"
    train(ct_config(ct_root, run_dir))
    return run_dir / "best.pt"


def _preprocess(cfg: TransformConfig) -> mt.Compose:
    """The deterministic training/validation steps, keeping MetaTensors (with their affine)."""
    keys = [IMAGE, LABEL]
    return mt.Compose([*load_transforms(keys), *spatial_transforms(cfg, keys), *normalize_transforms(cfg)])


def _items(root: Path) -> list[dict]:
    manifest = build_manifest(root, layout="msd", num_folds=3)
    return [{IMAGE: [str(root / p) for p in c.images], LABEL: str(root / c.label)} for c in manifest.cases]


def test_defaults_keep_the_brats_preprocessing() -> None:
    cfg = TransformConfig()
    assert (cfg.intensity, cfg.sampling, cfg.foreground_threshold, cfg.interpolation) == (
        "zscore_nonzero",
        "pos_neg",
        None,
        "linear",
    )
    steps = validation_pipeline(cfg, BRATS2021).transforms
    assert any(isinstance(t, mt.NormalizeIntensityd) for t in steps)
    assert not any(isinstance(t, mt.ScaleIntensityRanged) for t in steps)
    crop = next(t for t in steps if isinstance(t, mt.CropForegroundd))
    assert crop.cropper.select_fn.__name__ == "is_positive"
    assert any(isinstance(t, mt.RandCropByPosNegLabeld) for t in training_pipeline(cfg, BRATS2021).transforms)


def test_ct_window_resampling_and_body_crop(ct_root: Path, tmp_path: Path) -> None:
    cfg = ct_config(ct_root, tmp_path).transforms
    item = _items(ct_root)[0]
    out = _preprocess(cfg)(item)
    image, label = out[IMAGE], out[LABEL]
    assert image.shape[0] == 1 and image.shape == label.shape
    assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0
    np.testing.assert_allclose(np.linalg.norm(image.affine[:3, :3].numpy(), axis=0), [9.0, 9.0, 12.0], atol=1e-4)
    assert torch.equal(image.affine, label.affine)
    # labels stay label values (nearest), the crop keeps every organ voxel and drops the air around the body
    assert set(torch.unique(label).int().tolist()) <= set(LABELS)
    source = nib.load(item[LABEL])
    organ_ml = float((np.asarray(source.dataobj) > 0).sum() * np.prod(source.header.get_zooms()[:3])) / 1000
    kept_ml = float((label > 0).sum()) * 9 * 9 * 12 / 1000
    assert kept_ml == pytest.approx(organ_ml, rel=0.2)
    full = [round(n * z / s) for n, z, s in zip(source.shape, source.header.get_zooms(), (9, 9, 12), strict=True)]
    assert np.prod(image.shape[1:]) < 0.8 * np.prod(full)


def test_spline_interpolation_is_cubic_and_invertible() -> None:
    cfg = TransformConfig(spacing=[3.0, 2.0, 5.0], interpolation="spline", intensity="ct_window", crop_foreground=False)
    pipeline = inference_transforms(cfg)
    spacing = next(t for t in pipeline.transforms if isinstance(t, mt.Spacingd))
    assert tuple(spacing.mode) == (3,)
    affine = np.diag([-2.0, -2.5, 4.0, 1.0])
    image = MetaTensor(torch.randn(1, 12, 10, 7) * 100, affine=torch.as_tensor(affine))
    out = pipeline({IMAGE: image})[IMAGE]
    np.testing.assert_allclose(np.linalg.norm(out.affine[:3, :3].numpy(), axis=0), [3.0, 2.0, 5.0], atol=1e-5)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    restored = pipeline.inverse({IMAGE: out})[IMAGE]
    assert restored.shape == image.shape
    np.testing.assert_allclose(restored.affine.numpy(), affine, atol=1e-5)


def test_class_balanced_sampling_follows_the_ratios(ct_root: Path, tmp_path: Path) -> None:
    only_aorta = [0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    cfg = ct_config(ct_root, tmp_path, class_ratios=only_aorta, samples_per_case=4, affine_prob=0.0).transforms
    sampler = patch_sampler(cfg, TABLE)
    assert isinstance(sampler, mt.RandCropByLabelClassesd)
    pipeline = training_pipeline(cfg, TABLE)
    pipeline.set_random_state(seed=0)
    for item in _items(ct_root)[:3]:
        for patch in pipeline(item):
            assert patch[LABEL].shape[1:] == (16, 16, 16)
            assert bool((patch[LABEL] == 5).any())  # every patch is centred on (so holds) the aorta


def test_class_balanced_sampling_needs_a_class_table_and_one_ratio_per_label(ct_root: Path, tmp_path: Path) -> None:
    cfg = ct_config(ct_root, tmp_path).transforms
    with pytest.raises(ConfigError, match="needs a class label table"):
        patch_sampler(cfg, BRATS2021)
    cfg = ct_config(ct_root, tmp_path, class_ratios=[1.0, 1.0]).transforms
    with pytest.raises(ConfigError, match="class_ratios has 2 values; label table ct_organ_phantom needs 7"):
        patch_sampler(cfg, TABLE)


def test_hu_window_must_be_increasing(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="hu_window"):
        config_from_dict({"transforms": {"hu_window": [250, -175]}})


def test_msd_4d_multimodal_images_load_as_channels(tmp_path: Path) -> None:
    root = tmp_path / "Task01"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    rng = np.random.default_rng(0)
    affine = np.diag([-2.0, -2.0, 3.0, 1.0])
    data = rng.normal(size=(12, 10, 8, 3)).astype(np.float32) + np.arange(3) * 10  # channel c is about 10 c
    label = (rng.random((12, 10, 8)) > 0.7).astype(np.uint8)
    for case in ("a", "b", "c"):
        nib.save(nib.Nifti1Image(data, affine), root / "imagesTr" / f"{case}.nii.gz")
        nib.save(nib.Nifti1Image(label, affine), root / "labelsTr" / f"{case}.nii.gz")
    meta = {
        "name": "four_d",
        "modality": {"0": "T2", "1": "ADC", "2": "DWI"},
        "labels": {"0": "background", "1": "lesion"},
        "training": [{"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"} for c in "abc"],
        "test": [],
    }
    (root / "dataset.json").write_text(json.dumps(meta))
    cfg = TransformConfig(crop_foreground=False)
    table = build_manifest(root, layout="msd", num_folds=3).label_table
    assert table.name == "four_d"
    out = validation_pipeline(cfg, table)(_items(root)[0])
    assert out[IMAGE].shape == (3, 12, 10, 8) and out[LABEL].shape == (1, 12, 10, 8)
    # RAS reorientation flips the first two axes; each channel keeps its own data
    raw = torch.as_tensor(data[::-1, ::-1].copy()).permute(3, 0, 1, 2).float()
    expected = torch.stack([(c - c.mean()) / c.std(unbiased=False) for c in raw])
    torch.testing.assert_close(torch.as_tensor(out[IMAGE]), expected, atol=1e-4, rtol=1e-4)
    np.testing.assert_array_equal(torch.as_tensor(out[LABEL])[0].numpy(), label[::-1, ::-1])


def test_prediction_lands_on_the_input_grid(ct_root: Path, ct_checkpoint: Path, tmp_path: Path) -> None:
    predictor = Predictor.from_checkpoint(ct_checkpoint, device="cpu")
    assert predictor.transforms.transforms[-1].__class__ is mt.ScaleIntensityRanged
    for case in NON_IDENTITY_CASES:
        src = ct_root / "imagesTr" / f"{case}.nii.gz"
        geometry = read_nifti(src).geometry
        assert not np.allclose(geometry.direction, np.diag([-1.0, -1.0, 1.0]), atol=1e-3)  # not ITK identity
        spacing = geometry.spacing
        assert max(spacing) / min(spacing) > 1.3  # anisotropic
        out = tmp_path / "pred"
        assert main(["predict", "--model", str(ct_checkpoint), "--input", str(src), "--output", str(out)]) == 0
        pred, ref = nib.load(out / f"{case}.nii.gz"), nib.load(src)
        assert pred.shape == ref.shape
        np.testing.assert_allclose(pred.affine, ref.affine, atol=1e-4)
        assert set(np.unique(np.asarray(pred.dataobj)).tolist()) <= set(LABELS)


def test_labels_from_slabs_equal_the_full_probability_path(ct_root: Path, ct_checkpoint: Path) -> None:
    """``Predictor.predict`` maps probabilities back a slab at a time (:mod:`medseg.inference.restore`):
    the label map is the one of the full-resolution probabilities, on oblique anisotropic grids too."""
    predictor = Predictor.from_checkpoint(ct_checkpoint, device="cpu")
    for case in NON_IDENTITY_CASES:
        image = read_case(InputCase(case, (ct_root / "imagesTr" / f"{case}.nii.gz",)))
        full = predictor.labels_from_probabilities(predictor.predict_probabilities(image), image)
        assert len(np.unique(full)) > 2  # organs, not only background
        np.testing.assert_array_equal(predictor.predict(image), full)


def test_label_maps_never_map_every_output_back_at_once(
    ct_root: Path, ct_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The memory bound: ``predict`` never inverts the transforms for all output channels together."""
    predictor = Predictor.from_checkpoint(ct_checkpoint, device="cpu")
    image = read_case(InputCase("ct_000", (ct_root / "imagesTr" / "ct_000.nii.gz",)))

    def refuse(*_: object) -> None:
        raise AssertionError("every output channel was mapped back to the input's grid")

    monkeypatch.setattr(Predictor, "_restore", refuse)
    assert predictor.predict(image).shape == image.geometry.shape
    with pytest.raises(AssertionError, match="every output channel"):
        predictor.predict_probabilities(image)  # the path that needs them all still takes it


def test_demo_subcommand_defaults_to_brats(monkeypatch: pytest.MonkeyPatch) -> None:
    import medseg.demo

    calls: list[tuple[str, dict]] = []
    monkeypatch.setattr(medseg.demo, "run_demo", lambda **kw: calls.append(("brats", kw)))
    monkeypatch.setattr(medseg.demo, "run_ct_demo", lambda **kw: calls.append(("ct", kw)))
    assert main(["demo"]) == 0 and main(["demo", "ct", "--set", "train.epochs=1"]) == 0
    assert calls[0] == (
        "brats",
        {"out_dir": Path("runs/demo"), "config": bundled_configs()["demo_brats_phantom"], "overrides": []},
    )
    ct = {
        "out_dir": Path("runs/demo_ct"),
        "config": bundled_configs()["demo_ct_phantom"],
        "overrides": ["train.epochs=1"],
    }
    assert calls[1] == ("ct", ct)


@pytest.mark.slow
def test_ct_demo_end_to_end_on_a_tiny_budget(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from medseg.demo import run_ct_demo

    config = Path(__file__).resolve().parents[1] / "configs" / "demo_ct_phantom.yaml"
    overrides = [
        "phantoms.train_cases=4",
        "phantoms.test_cases=2",
        "phantoms.shape=[48,48,20]",
        "transforms.spacing=[8.0,8.0,10.0]",
        "transforms.patch_size=[32,32,16]",
        "inference.roi_size=[32,32,16]",
        "data.num_folds=4",
        "data.num_workers=0",
        "train.epochs=1",
        "train.iterations_per_epoch=2",
    ]
    summary = run_ct_demo(out_dir=tmp_path / "demo", config=config, overrides=overrides)
    assert list(summary["regions"]) == [name for value, name in sorted(LABELS.items()) if value]
    assert summary["cases"] == ["ct_000", "ct_001"] and summary["layout"] == "msd"
    assert summary["nsd_tolerance_mm"] == 3.0  # TotalSegmentator's, which the report table states
    assert "(NSD) at 3 mm" in (tmp_path / "demo" / "report.html").read_text(encoding="utf-8")
    for case in summary["cases"]:
        pred = nib.load(tmp_path / "demo" / "predictions" / f"{case}.nii.gz")
        ref = nib.load(tmp_path / "demo" / "data" / "test" / "labelsTr" / f"{case}.nii.gz")
        assert pred.shape == ref.shape
        np.testing.assert_allclose(pred.affine, ref.affine, atol=1e-4)
    assert (tmp_path / "demo" / "report.html").is_file() and (tmp_path / "demo" / "timing.json").is_file()
    assert "mean organ Dice" in capsys.readouterr().out
