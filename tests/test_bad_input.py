"""The foundation's bad inputs: each gives one line naming the file, a non-zero exit, nothing written."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medseg.cli import main
from medseg.errors import MedsegInputError


def _copy_case(src_root: Path, dst_root: Path, case: str = "BraTS2021_00000") -> Path:
    dst = dst_root / case
    shutil.copytree(src_root / case, dst)
    return dst


def _copy_two_cases(src_root: Path, dst_root: Path) -> list[Path]:
    """Two cases: enough for a two-fold training run (one to train on, one to validate)."""
    return [_copy_case(src_root, dst_root, case) for case in ("BraTS2021_00000", "BraTS2021_00001")]


def _one_error_line(capsys: pytest.CaptureFixture[str], *needles: str) -> str:
    """Exactly one ``medseg: error:`` line (a batch may add its one-line tally), never a traceback."""
    text = capsys.readouterr().err
    assert "Traceback" not in text
    err = [line for line in text.splitlines() if line.startswith("medseg: error")]
    assert len(err) == 1, text
    for needle in needles:
        assert needle in err[0], (needle, err[0])
    return err[0]


def _train_config(tmp_path: Path, root: Path, extra: str = "") -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(
        f"data: {{root: '{root}', num_folds: 2, num_workers: 0}}\n"
        "transforms: {patch_size: [32, 32, 32]}\n"
        "network: {name: unet, kwargs: {channels: [4, 8], strides: [2]}}\n"
        f"train: {{run_dir: '{tmp_path / 'run'}', epochs: 1, iterations_per_epoch: 1}}\n"
        "inference: {roi_size: [32, 32, 32]}\n" + extra
    )
    return path


def test_missing_modality_file(brats_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    case = _copy_case(brats_root, tmp_path / "data")
    missing = case / "BraTS2021_00000_t1ce.nii.gz"
    missing.unlink()
    assert main(["manifest", "build", "--root", str(tmp_path / "data"), "--out", str(tmp_path / "m.json")]) == 2
    _one_error_line(capsys, str(missing), "missing modality")
    assert not (tmp_path / "m.json").exists()


def test_modalities_on_different_grids(brats_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _copy_two_cases(brats_root, tmp_path / "data")
    flair = tmp_path / "data" / "BraTS2021_00001" / "BraTS2021_00001_flair.nii.gz"
    img = nib.load(flair)
    shifted = img.affine.copy()
    shifted[0, 3] += 5.0
    nib.save(nib.Nifti1Image(np.asanyarray(img.dataobj), shifted), flair)
    config = _train_config(tmp_path, tmp_path / "data")
    assert main(["train", "--config", str(config)]) == 2
    _one_error_line(capsys, str(flair), "origin (LPS)")
    assert not (tmp_path / "run").exists()


def test_label_values_outside_the_release(brats_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _copy_two_cases(brats_root, tmp_path / "data")
    seg = tmp_path / "data" / "BraTS2021_00000" / "BraTS2021_00000_seg.nii.gz"
    img = nib.load(seg)
    data = np.asanyarray(img.dataobj).copy()
    data[0, 0, 0] = 7
    nib.save(nib.Nifti1Image(data, img.affine), seg)
    assert main(["train", "--config", str(_train_config(tmp_path, tmp_path / "data"))]) == 2
    _one_error_line(capsys, str(seg), "[7]", "brats2021")
    assert not (tmp_path / "run").exists()


def test_label_map_resampled_with_linear_interpolation(
    brats_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _copy_two_cases(brats_root, tmp_path / "data")
    seg = tmp_path / "data" / "BraTS2021_00001" / "BraTS2021_00001_seg.nii.gz"
    img = nib.load(seg)
    data = np.asanyarray(img.dataobj).astype(np.float32)
    data[data == 2] = 1.5  # casting to int would have made this oedema necrosis, silently
    nib.save(nib.Nifti1Image(data, img.affine), seg)
    assert main(["train", "--config", str(_train_config(tmp_path, tmp_path / "data"))]) == 2
    _one_error_line(capsys, str(seg), "non-integer values [1.5]")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("damage", ["truncated", "not_an_image"])
def test_unreadable_image_fails_its_case(
    damage: str, brats_root: Path, tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    case = _copy_case(brats_root, tmp_path / "data")
    t2 = case / "BraTS2021_00000_t2.nii.gz"
    content = t2.read_bytes()
    t2.write_bytes(content[: len(content) // 3] if damage == "truncated" else b"hello, I am not a NIfTI file")
    code = main(["predict", "--model", str(tiny_checkpoint), "--input", str(case), "--output", str(tmp_path / "out"),
                 "--progress", "none"])  # fmt: skip
    assert code != 0
    _one_error_line(capsys, str(t2))
    assert not (tmp_path / "out" / "BraTS2021_00000.nii.gz").exists()


def test_config_unknown_key(tmp_path: Path, brats_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _train_config(tmp_path, brats_root, extra="optimiser: {lr: 1}\n")
    assert main(["train", "--config", str(config)]) == 2
    _one_error_line(capsys, str(config), "unknown key 'optimiser'")


def test_config_wrong_type(tmp_path: Path, brats_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _train_config(tmp_path, brats_root)
    assert main(["train", "--config", str(config), "--set", "train.epochs=two"]) == 2
    _one_error_line(capsys, str(config), "train.epochs", "expected int")


def test_config_value_out_of_range(tmp_path: Path, brats_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _train_config(tmp_path, brats_root)
    assert main(["train", "--config", str(config), "--set", "train.val_every=0"]) == 2  # was a ZeroDivisionError
    _one_error_line(capsys, str(config), "train.val_every must be >= 1, got 0")
    assert not (tmp_path / "run").exists()


def test_network_argument_the_network_refuses(
    tmp_path: Path, brats_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _train_config(tmp_path, brats_root)
    assert main(["train", "--config", str(config), "--set", "network.kwargs.norm=layr"]) == 2
    _one_error_line(capsys, str(config), "network 'unet'", "'LAYR'", "LAYER")
    assert not (tmp_path / "run").exists()


def test_consistency_on_a_patch_too_small_to_take_a_window_of(
    tmp_path: Path, brats_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _train_config(tmp_path, brats_root)
    args = ["--set", "transforms.patch_size=[2, 2, 2]", "--set", "train.consistency_weight=1.0"]
    assert main(["train", "--config", str(config), *args]) == 2  # the term would silently be 0
    _one_error_line(capsys, str(config), "train.consistency_weight needs transforms.patch_size", "at least 4 voxels")
    assert not (tmp_path / "run").exists()


def test_init_weights_that_do_not_exist(tmp_path: Path, brats_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "pretrained.pt"
    config = _train_config(tmp_path, brats_root)
    assert main(["train", "--config", str(config), "--set", f"train.init_weights={missing}"]) == 2
    _one_error_line(capsys, str(missing), "not found")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("device", "reason"), [("cuda:99", "needs CUDA device 99"), ("gpu", "unknown device 'gpu'")])
def test_a_device_this_machine_does_not_have(
    device: str, reason: str, tmp_path: Path, brats_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["train", "--config", str(_train_config(tmp_path, brats_root)), "--device", device]) == 2
    _one_error_line(capsys, reason)
    assert not (tmp_path / "run").exists()


def test_resume_with_no_checkpoint(tmp_path: Path, brats_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--config", str(_train_config(tmp_path, brats_root)), "--resume"]) == 2
    _one_error_line(capsys, str(tmp_path / "run" / "last.pt"), "no checkpoint")


def test_checkpoint_that_is_not_ours(tmp_path: Path, brats_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fake = tmp_path / "model.pt"
    fake.write_bytes(b"PK\x03\x04 definitely not a torch zip")
    code = main(["predict", "--model", str(fake), "--input", str(brats_root), "--output", str(tmp_path / "out")])
    assert code == 2
    _one_error_line(capsys, str(fake), "not a medseg checkpoint")
    assert not (tmp_path / "out").exists()


def _with_nan(path: Path) -> None:
    img = nib.load(path)
    data = np.asanyarray(img.dataobj).astype(np.float32)
    data[10:12, 10:12, 10:12] = np.nan
    nib.save(nib.Nifti1Image(data, img.affine), path)


def test_nan_voxels_fail_only_their_case(
    brats_root: Path, tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _copy_two_cases(brats_root, tmp_path / "data")
    flair = tmp_path / "data" / "BraTS2021_00001" / "BraTS2021_00001_flair.nii.gz"
    _with_nan(flair)
    code = main(["predict", "--model", str(tiny_checkpoint), "--input", str(tmp_path / "data"),
                 "--output", str(tmp_path / "out"), "--progress", "none"])  # fmt: skip
    assert code != 0
    _one_error_line(capsys, str(flair), "8 voxels are NaN or infinite")
    assert (tmp_path / "out" / "BraTS2021_00000.nii.gz").exists()
    assert not (tmp_path / "out" / "BraTS2021_00001.nii.gz").exists()


@pytest.mark.parametrize(
    "loading", [["--set", "data.num_workers=0"], ["--set", "data.num_workers=1", "--set", "data.cache_rate=0"]],
    ids=["cached_in_this_process", "in_a_loader_worker"],
)  # fmt: skip
def test_training_images_with_nan_voxels(
    loading: list[str], brats_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    flairs = [case / f"{case.name}_flair.nii.gz" for case in _copy_two_cases(brats_root, tmp_path / "data")]
    for flair in flairs:
        _with_nan(flair)
    assert main(["train", "--config", str(_train_config(tmp_path, tmp_path / "data")), *loading]) == 2
    line = _one_error_line(capsys, "8 voxels are NaN or infinite")
    assert any(str(f) in line for f in flairs), line


def test_training_image_truncated_after_its_header(
    brats_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _copy_two_cases(brats_root, tmp_path / "data")
    t1 = tmp_path / "data" / "BraTS2021_00001" / "BraTS2021_00001_t1.nii.gz"
    raw = gzip.decompress(t1.read_bytes())
    t1.write_bytes(gzip.compress(raw[: len(raw) // 2]))  # the header still reads: the manifest check passes
    assert main(["train", "--config", str(_train_config(tmp_path, tmp_path / "data"))]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"medseg: error: {t1}: cannot read NIfTI image")
    assert len(err.splitlines()) == 1, err  # nibabel's message has two lines: folded into one


def test_image_with_a_degenerate_affine(brats_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _copy_two_cases(brats_root, tmp_path / "data")
    t2 = tmp_path / "data" / "BraTS2021_00000" / "BraTS2021_00000_t2.nii.gz"
    img = nib.load(t2)
    header = img.header.copy()
    affine = img.affine.copy()
    affine[:3, 0] = 0.0  # nibabel's Nifti1Image(data, affine) refuses this; a header can still carry it
    header.set_sform(affine, code=1)
    header.set_qform(None, code=0)
    nib.save(nib.Nifti1Image(np.asanyarray(img.dataobj), None, header=header), t2)
    assert main(["train", "--config", str(_train_config(tmp_path, tmp_path / "data"))]) == 2
    _one_error_line(capsys, str(t2), "zero-length or non-finite voxel axis")
    assert not (tmp_path / "run").exists()


def test_predictor_refuses_an_in_memory_image_with_nan_voxels(tiny_checkpoint: Path, brats_root: Path) -> None:
    from medseg.data.cases import discover_cases
    from medseg.inference import Predictor, read_case

    predictor = Predictor.from_checkpoint(tiny_checkpoint, backend="torch")
    image = read_case(discover_cases(brats_root / "BraTS2021_00000", channels=predictor.channels)[0])
    image.array[3, 5, 5, 5] = np.inf
    with pytest.raises(MedsegInputError, match=f"channel {predictor.channels[3]}: 1 voxel is NaN or infinite"):
        predictor.predict(image)


def test_an_unexpected_error_is_still_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, brats_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def fails(*args: object, **kwargs: object) -> None:
        raise RuntimeError("Caught RuntimeError in a worker.\nOriginal Traceback (most recent call last):\n  ...")

    monkeypatch.setattr("medseg.training.train", fails)
    assert main(["train", "--config", str(_train_config(tmp_path, brats_root))]) == 1
    err = capsys.readouterr().err
    assert err == "medseg: error: unexpected RuntimeError: Caught RuntimeError in a worker. (rerun with --debug)\n"


def test_voxels_scaled_beyond_any_intensity_fail_only_their_case(
    brats_root: Path, tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _copy_two_cases(brats_root, tmp_path / "data")
    flair = tmp_path / "data" / "BraTS2021_00001" / "BraTS2021_00001_flair.nii.gz"
    img = nib.load(flair)
    data = np.asarray(img.dataobj, dtype=np.float32)
    data[10, 10, 10] = 3e38  # finite: what a bad scale factor makes of a voxel
    nib.save(nib.Nifti1Image(data, img.affine), flair)
    code = main(["predict", "--model", str(tiny_checkpoint), "--input", str(tmp_path / "data"),
                 "--output", str(tmp_path / "out"), "--progress", "none"])  # fmt: skip
    assert code != 0
    _one_error_line(capsys, str(flair), "voxel value 3e+38 is beyond any image intensity")
    assert (tmp_path / "out" / "BraTS2021_00000.nii.gz").exists()
    assert not (tmp_path / "out" / "BraTS2021_00001.nii.gz").exists()
