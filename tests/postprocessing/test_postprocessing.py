from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import scipy.ndimage as ndi
from monai.transforms import KeepLargestConnectedComponent

from medseg.inference import Predictor
from medseg.inference.batch import predict_folder
from medseg.io import Geometry, Image, read_nifti, write_nifti
from medseg.postprocessing import keep_largest_components


def test_keep_largest_component_leaves_one_piece_per_label(one_channel_checkpoint: Path) -> None:
    rng = np.random.default_rng(4)
    noise = ndi.gaussian_filter(rng.normal(size=(48, 40, 24)), 1.5).astype(np.float32)
    image = Image(noise[None] * 50, Geometry((48, 40, 24), np.diag([1.5, 1.5, 3.0, 1.0])))
    raw = Predictor.from_checkpoint(one_channel_checkpoint, device="cpu", backend="torch")
    raw_labels = raw.predict(image)
    assert ndi.label(raw_labels == 1)[1] > 1, "the untrained model must give several pieces"

    inference = dataclasses.replace(raw.inference, keep_largest_component=True)
    kept = Predictor.from_checkpoint(one_channel_checkpoint, device="cpu", backend="torch", inference=inference)
    labels = kept.predict(image)
    count = ndi.label(labels == 1, structure=np.ones((3, 3, 3)))[1]
    assert count == 1
    largest = np.bincount(ndi.label(raw_labels == 1, structure=np.ones((3, 3, 3)))[0].ravel())[1:].max()
    assert (labels == 1).sum() == largest


def test_keep_largest_components_agrees_with_monai() -> None:
    """Bounding-box components (scipy) against MONAI's whole-volume ``KeepLargestConnectedComponent``."""
    rng = np.random.default_rng(11)
    noise = ndi.gaussian_filter(rng.normal(size=(4, 40, 36, 28)), (0, 2, 2, 2))
    labels = np.where(noise.max(0) > 0.12, noise.argmax(0) + 1, 0).astype(np.uint8)
    labels[labels == 4] = 6  # a gap in the values: label 4 absent, 6 present
    assert all(ndi.label(labels == v)[1] > 1 for v in (1, 2, 3, 6))  # several pieces each
    keep = KeepLargestConnectedComponent(applied_labels=[1, 2, 3, 4, 6], independent=True)
    expected = np.asarray(keep(labels[None]))[0]
    np.testing.assert_array_equal(keep_largest_components(labels, (1, 2, 3, 4, 6)), expected)


def _noise_scan(tmp_path: Path) -> tuple[np.ndarray, Geometry, Path]:
    """Smoothed noise ``(48, 40, 24)`` at 1.5 x 1.5 x 3 mm, and the NIfTI it is written to."""
    rng = np.random.default_rng(4)
    noise = ndi.gaussian_filter(rng.normal(size=(48, 40, 24)), 1.5).astype(np.float32) * 50
    geometry = Geometry((48, 40, 24), np.diag([1.5, 1.5, 3.0, 1.0]))
    return noise, geometry, write_nifti(noise, geometry, tmp_path / "in" / "noise.nii.gz")


def test_saving_probabilities_keeps_the_post_processing(one_channel_checkpoint: Path, tmp_path: Path) -> None:
    """The label map written beside the probabilities is post-processed like the one written alone."""
    _, geometry, scan = _noise_scan(tmp_path)
    raw = Predictor.from_checkpoint(one_channel_checkpoint, device="cpu", backend="torch")
    kept = Predictor(
        raw.checkpoint,
        device="cpu",
        backend="torch",
        inference=dataclasses.replace(raw.inference, keep_largest_component=True),
    )
    outputs = {}
    for save in (False, True):
        out = tmp_path / f"out-{save}"
        predict_folder(model=kept, input_path=scan, output_dir=out, save_probabilities=save, progress="none")
        outputs[save] = np.asarray(read_nifti(out / "noise.nii.gz").array)
        np.testing.assert_allclose(read_nifti(out / "noise.nii.gz").geometry.affine, geometry.affine)
    np.testing.assert_array_equal(outputs[True], outputs[False])
    assert ndi.label(outputs[True] == 1, structure=np.ones((3, 3, 3)))[1] == 1


def test_unknown_min_region_ml_name_fails_once_when_the_predictor_is_built(tiny_checkpoint: Path) -> None:
    """Not once per case of a batch: the Predictor refuses it before any case is read."""
    from medseg.checkpoint import load_checkpoint
    from medseg.config import InferenceConfig
    from medseg.errors import ConfigError

    config = load_checkpoint(tiny_checkpoint).config["inference"]
    inference = InferenceConfig(**{**config, "min_region_ml": {"XT": 0.5}})
    with pytest.raises(ConfigError, match=r"'XT' is not a region of brats2021 \(WT, TC, ET\)"):
        Predictor.from_checkpoint(tiny_checkpoint, device="cpu", backend="torch", inference=inference)


def _pieces(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """26-connected pieces of ``mask`` and each piece's voxel count (index 0: the first piece)."""
    pieces, _ = ndi.label(mask, structure=np.ones((3, 3, 3)))
    return pieces, np.bincount(pieces.ravel())[1:]


def test_small_pieces_take_the_enclosing_region_label() -> None:
    from medseg.labels import BRATS2021
    from medseg.postprocessing import remove_small_components

    labels = np.zeros((40, 40, 30), np.uint8)
    labels[5:25, 5:25, 5:25] = 2  # oedema
    labels[10:20, 10:20, 10:20] = 1  # necrosis
    labels[12:16, 12:16, 12:16] = 4  # enhancing, 64 voxels
    labels[22, 22, 22] = 4  # a one-voxel enhancing piece inside the oedema
    labels[30:32, 30:32, 20:22] = 2  # an 8-voxel oedema speck
    labels[35, 35, 5] = 4  # a lone enhancing voxel: also a 1-voxel WT and TC piece
    spacing = (1.0, 1.5, 2.0)  # 3 mm³ per voxel
    out = remove_small_components(labels, BRATS2021, spacing=spacing, min_component_ml={"WT": 0.024, "ET": 0.004})
    assert out[30, 30, 20] == 2  # 8 voxels = 24 mm³: not smaller than 0.024 mL, kept
    assert out[35, 35, 5] == 0  # the lone voxel is a 3 mm³ WT piece: background
    assert out[22, 22, 22] == 1  # a 3 mm³ ET piece becomes necrosis (the label painted for TC)
    assert (out[12:16, 12:16, 12:16] == 4).all()  # 192 mm³ of ET stays
    changed = out != labels
    assert set(zip(*np.nonzero(changed), strict=True)) == {(35, 35, 5), (22, 22, 22)}

    # every piece left is at least as large as asked, measured independently
    out = remove_small_components(labels, BRATS2021, spacing=spacing, min_component_ml={"WT": 0.025, "TC": 3.0})
    _, sizes = _pieces(out > 0)
    assert sizes.min() * 3.0 >= 25.0 and out[30, 30, 20] == 0
    # the 1 000-voxel TC (3 mL) is kept, being exactly the minimum
    assert (out[10:20, 10:20, 10:20] > 0).all() and (out[10:20, 10:20, 10:20] != 2).all()
    out = remove_small_components(labels, BRATS2021, spacing=spacing, min_component_ml={"TC": 3.01})
    assert (out[10:20, 10:20, 10:20] == 2).all()  # a too-small TC piece becomes oedema, ET inside it too


def test_small_pieces_of_a_class_become_background() -> None:
    from medseg.labels import get_label_table
    from medseg.postprocessing import remove_small_components

    table = get_label_table("btcv")
    liver, spleen = table.evaluation_names[:2]
    values = {name: value for value, name in table.labels.items()}
    labels = np.zeros((30, 30, 30), np.uint8)
    labels[2:12, 2:12, 2:12] = values[liver]
    labels[20:22, 20:22, 20:22] = values[liver]  # a stray liver piece
    labels[25:27, 2:4, 2:4] = values[spleen]  # a small spleen, not named below: kept
    out = remove_small_components(labels, table, spacing=(1, 1, 1), min_component_ml={liver: 0.01})
    assert (out[20:22, 20:22, 20:22] == 0).all() and (out[2:12, 2:12, 2:12] == values[liver]).all()
    assert (out[25:27, 2:4, 2:4] == values[spleen]).all()


def test_min_component_ml_names_and_volumes_are_checked(tiny_checkpoint: Path) -> None:
    from medseg.config import InferenceConfig
    from medseg.errors import ConfigError

    with pytest.raises(ConfigError, match=r"inference.min_component_ml must be > 0 \(each\), got \{'ET': 0\}"):
        InferenceConfig(min_component_ml={"ET": 0})
    with pytest.raises(ConfigError, match=r"inference.min_region_ml must be > 0 \(each\), got \{'ET': -1\}"):
        InferenceConfig(min_region_ml={"ET": -1})
    with pytest.raises(ConfigError, match=r"'liver' is not a region or label of brats2021 \(WT, TC, ET\)"):
        Predictor.from_checkpoint(
            tiny_checkpoint,
            device="cpu",
            backend="torch",
            inference_overrides=["inference.min_component_ml={liver: 1}"],
        )


def test_predict_set_removes_small_pieces(one_channel_checkpoint: Path, tmp_path: Path) -> None:
    """`medseg predict --set inference.min_component_ml=...` writes the raw map without its small pieces."""
    from medseg.cli import main

    noise, geometry, scan = _noise_scan(tmp_path)
    raw = Predictor.from_checkpoint(one_channel_checkpoint, device="cpu", backend="torch")
    (name,) = raw.table.evaluation_names
    raw_labels = raw.predict(Image(noise[None], geometry))
    pieces, sizes = _pieces(raw_labels == 1)
    voxel_ml = 1.5 * 1.5 * 3.0 / 1000
    minimum = 2 * voxel_ml  # the untrained model leaves one-voxel pieces beside a large one
    assert (sizes * voxel_ml < minimum).sum() >= 2 and (sizes * voxel_ml >= minimum).sum() >= 1

    setting = f"inference.min_component_ml={{{name}: {minimum}}}"
    out = tmp_path / "out"
    assert main(["predict", "--model", str(one_channel_checkpoint), "--input", str(scan), "--output", str(out),
                 "--backend", "torch", "--device", "cpu", "--set", setting]) == 0  # fmt: skip
    written = read_nifti(out / "noise.nii.gz")
    small = np.isin(pieces, np.flatnonzero(sizes * voxel_ml < minimum) + 1)
    np.testing.assert_array_equal(written.array, np.where(small, 0, raw_labels))
    np.testing.assert_allclose(written.geometry.affine, geometry.affine)

    # the folder records the setting: resuming it without the setting is refused
    assert main(["predict", "--model", str(one_channel_checkpoint), "--input", str(scan), "--output", str(out),
                 "--backend", "torch", "--device", "cpu"]) == 2  # fmt: skip


def test_predict_set_changes_inference_settings_only(one_channel_checkpoint: Path, tmp_path: Path, capsys) -> None:
    from medseg.cli import main

    scan = write_nifti(np.zeros((8, 8, 8), np.float32), Geometry((8, 8, 8), np.eye(4)), tmp_path / "scan.nii.gz")
    base = ["predict", "--model", str(one_channel_checkpoint), "--input", str(scan), "--output", str(tmp_path / "o")]
    for setting, message in (
        ("train.epochs=1", "override 'train.epochs=1': only inference.* settings can change after training"),
        ("inference.overlapp=0.4", "unknown key 'inference.overlapp' (did you mean 'inference.overlap'?)"),
    ):
        assert main([*base, "--set", setting]) == 2
        assert capsys.readouterr().err == f"medseg: error: {message}\n"
    assert not (tmp_path / "o").exists()
