"""Real (tiny) training runs: outputs, exact resume, refusal to clobber a run, and DDP (gloo; NCCL with two GPUs)."""

from __future__ import annotations

import csv
import errno
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch

from medseg.checkpoint import load_checkpoint, save_checkpoint
from medseg.distributed import init_distributed
from medseg.errors import CheckpointError, ConfigError, OutputError
from medseg.training import train
from medseg.training.trainer import _changed_setting

if TYPE_CHECKING:
    from conftest import MakeConfig, MakeConfigFile


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path).state_dict


def test_training_writes_checkpoints_log_and_curve(tiny_checkpoint: Path) -> None:
    run_dir = tiny_checkpoint.parent
    for name in ("last.pt", "best.pt", "metrics.csv", "training_curve.png"):
        assert (run_dir / name).is_file(), name
    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert all(0.0 <= float(r["val_mean_dice"]) <= 1.0 for r in rows)
    assert {"val_WT_dice", "val_TC_dice", "val_ET_dice", "train_loss", "lr"} <= set(rows[0])
    assert (run_dir / "training_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    leftovers = [p for p in run_dir.iterdir() if p.name.startswith(".") and p.name != ".medseg-cache"]
    assert not leftovers, "temporary files left behind"  # (.medseg-cache: inference backends' export cache)


@pytest.mark.slow
def test_resume_continues_exactly(brats_root: Path, tmp_path: Path, tiny_config: MakeConfig) -> None:
    run = {"epochs": 3, "val_every": 2, "consistency_weight": 0.5}  # its sub-windows are drawn from the seeded RNG too
    train(tiny_config(brats_root, tmp_path / "straight", **run))

    interrupted = tiny_config(brats_root, tmp_path / "resumed", **run, max_minutes=0.0)
    result = train(interrupted)  # stops after its first epoch: the time budget is already spent
    assert result.epochs_run == 1
    resumed = train(tiny_config(brats_root, tmp_path / "resumed", **run), resume=True)
    assert resumed.epochs_run == 3

    a, b = _weights(tmp_path / "straight" / "last.pt"), _weights(tmp_path / "resumed" / "last.pt")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    sa = load_checkpoint(tmp_path / "straight" / "last.pt").training
    sb = load_checkpoint(tmp_path / "resumed" / "last.pt").training
    assert sa["best_score"] == sb["best_score"] and sa["best_epoch"] == sb["best_epoch"]
    assert [r["train_loss"] for r in sa["history"]] == [r["train_loss"] for r in sb["history"]]


def test_resume_refuses_changed_settings_but_takes_new_loader_settings(
    brats_root: Path, tmp_path: Path, tiny_config: MakeConfig
) -> None:
    run_dir = tmp_path / "run"
    assert train(tiny_config(brats_root, run_dir, max_minutes=0.0)).epochs_run == 1
    with pytest.raises(CheckpointError, match=r"train.lr is 0.1 here but was 0.003 for this run.*init_weights="):
        train(tiny_config(brats_root, run_dir, lr=0.1), resume=True)  # the restored schedule would ignore it
    with pytest.raises(CheckpointError, match=r"network.kwargs.channels is \[4, 8, 16\] here but was \[8, 16, 32\]"):
        config = tiny_config(brats_root, run_dir)
        config.network.kwargs["channels"] = [4, 8, 16]
        train(config, resume=True)
    config = tiny_config(brats_root, run_dir)
    config.data.cache_rate = 0.5  # how the run executes, not what it computes
    assert train(config, resume=True).epochs_run == 2


def test_resume_without_checkpoint_is_an_error(brats_root: Path, tmp_path: Path, tiny_config: MakeConfig) -> None:
    with pytest.raises(CheckpointError, match="no checkpoint to resume from"):
        train(tiny_config(brats_root, tmp_path / "empty"), resume=True)


def test_a_new_run_never_overwrites_an_old_one(
    tiny_checkpoint: Path, brats_root: Path, tiny_config: MakeConfig
) -> None:
    before = tiny_checkpoint.read_bytes()
    with pytest.raises(CheckpointError, match="already holds a checkpoint"):
        train(tiny_config(brats_root, tiny_checkpoint.parent))
    assert tiny_checkpoint.read_bytes() == before


@pytest.mark.parametrize("native", [True, False], ids=["native-bf16", "no-bf16"])
def test_bf16_precision_autocasts_training_only_on_a_cpu_that_has_it(
    native: bool, brats_root: Path, tmp_path: Path, tiny_config: MakeConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("medseg.inference.backends.base.cpu_has_native_bf16", lambda: native)
    dtypes: set[torch.dtype] = set()

    def record(module: torch.nn.Module, args: object, output: torch.Tensor) -> None:
        if isinstance(module, torch.nn.Conv3d):
            dtypes.add(output.dtype)

    hook = torch.nn.modules.module.register_module_forward_hook(record)
    try:  # training, the consistency term's second pass and validation all run convolutions
        config = tiny_config(brats_root, tmp_path / "run", epochs=1, precision="bf16", consistency_weight=0.5)
        train(config, device="cpu")
    finally:
        hook.remove()
    assert dtypes == ({torch.bfloat16} if native else {torch.float32})
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    assert {t.dtype for t in ckpt.state_dict.values() if t.is_floating_point()} == {torch.float32}
    assert math.isfinite(ckpt.training["history"][0]["train_loss"])


two_gpus = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="NCCL needs a CUDA device per process")


@pytest.mark.slow
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=two_gpus)])
def test_ddp_two_processes(device: str, brats_root: Path, tmp_path: Path, tiny_config_file: MakeConfigFile) -> None:
    config = tiny_config_file(  # two forward passes per step under DDP
        tmp_path / "ddp.yaml",
        brats_root,
        tmp_path / "run",
        iterations_per_epoch=2,
        batch_size=1,
        val_every=2,
        consistency_weight=0.5,
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533",
           "-m", "medseg", "train", "--config", str(config), "--device", device]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    assert ckpt.training["epoch"] == 2
    assert not any(k.startswith("module.") for k in ckpt.state_dict), "DDP wrapper leaked into the checkpoint"
    assert proc.stdout.count("training finished") == 2  # both ranks ran to the end


def test_more_processes_than_gpus_is_a_one_line_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(ConfigError, match=r"LOCAL_RANK=1 needs CUDA device 1, and this machine has 1"):
        init_distributed("auto")
    assert not torch.distributed.is_initialized()


def test_init_weights_starts_a_new_run_from_a_checkpoint(
    tiny_checkpoint: Path, brats_root: Path, tmp_path: Path, tiny_config: MakeConfig
) -> None:
    # A learning rate of 1e-12 leaves the weights where the run started: the checkpoint's, not fresh ones.
    config = tiny_config(brats_root, tmp_path / "fine", epochs=1, lr=1e-12, init_weights=str(tiny_checkpoint))
    config.transforms.patch_size = [16, 16, 16]  # e.g. fine-tuning on another patch size
    train(config)
    start, fine = _weights(tiny_checkpoint), _weights(tmp_path / "fine" / "last.pt")
    moved = [k for k in start if not torch.allclose(start[k].float(), fine[k].float(), atol=1e-6)]
    assert not moved
    assert load_checkpoint(tmp_path / "fine" / "last.pt").training["epoch"] == 1

    train(tiny_config(brats_root, tmp_path / "fresh", epochs=1, lr=1e-12))
    fresh = _weights(tmp_path / "fresh" / "last.pt")
    assert any(not torch.allclose(start[k].float(), fresh[k].float(), atol=1e-3) for k in start)


def test_init_weights_that_do_not_fit_are_a_one_line_error(
    one_channel_checkpoint: Path, brats_root: Path, tmp_path: Path, tiny_config: MakeConfig
) -> None:
    config = tiny_config(brats_root, tmp_path / "run", init_weights=str(one_channel_checkpoint))
    expected = r"its unet \(1 input channels, 2 outputs, .*\) does not fit this run's \(4 input channels, 3 outputs"
    with pytest.raises(CheckpointError, match=expected) as err:
        train(config)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "run" / "last.pt").exists()

    missing = tiny_config(brats_root, tmp_path / "run", init_weights=str(tmp_path / "nope.pt"))
    with pytest.raises(CheckpointError, match="not found"):
        train(missing)


def test_the_training_curve_leaves_the_callers_matplotlib_backend_alone(tmp_path: Path) -> None:
    import matplotlib

    from medseg.training.log import plot_curves

    previous = matplotlib.get_backend()
    matplotlib.use("svg")  # e.g. a notebook's own backend
    try:
        rows = [{"epoch": e, "train_loss": 1.0 / e, "val_mean_dice": 0.1 * e, "val_WT_dice": 0.1 * e} for e in (1, 2)]
        plot_curves(rows, tmp_path / "curve.png", region_names=["WT"])
        assert matplotlib.get_backend() == "svg"
    finally:
        matplotlib.use(previous)
    assert (tmp_path / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_non_finite_loss_stops_training_before_any_checkpoint(
    brats_root: Path, tmp_path: Path, tiny_config: MakeConfig
) -> None:
    config = tiny_config(brats_root, tmp_path / "run")
    config.transforms.intensity = "ct_window"
    config.transforms.hu_window = [-math.inf, math.inf]  # past validation: every image scales to NaN
    with pytest.raises(ConfigError, match=r"training loss is nan at epoch 1 step 1: .*hu_window.*train.lr") as err:
        train(config)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "run" / "best.pt").exists()
    assert not (tmp_path / "run" / "last.pt").exists()


def test_resume_takes_the_same_data_root_given_another_way(
    brats_root: Path, tmp_path: Path, tiny_config: MakeConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(brats_root.parent)
    run_dir = tmp_path / "run"
    assert train(tiny_config(Path(brats_root.name), run_dir, epochs=2, max_minutes=0.0)).epochs_run == 1
    assert train(tiny_config(brats_root, run_dir, epochs=2), resume=True).epochs_run == 2
    other = {"data": {"root": str(tmp_path)}}  # another folder is still another setting
    assert _changed_setting({"data": {"root": brats_root.name}}, other) == ("data.root", brats_root.name, str(tmp_path))


def test_resume_restores_a_best_checkpoint_that_a_full_disk_kept_from_being_written(
    brats_root: Path, tmp_path: Path, tiny_config: MakeConfig, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    run_dir = tmp_path / "run"
    config = tiny_config(brats_root, run_dir, epochs=2, iterations_per_epoch=1)
    save = torch.save

    def full_disk_for_best(obj: object, f: Path, *args: object, **kwargs: object) -> None:
        if Path(f).name.startswith(".best."):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_disk_for_best)
    with pytest.raises(OutputError, match=r"best\.pt: cannot write: No space left on device$"):
        train(config)  # epoch 1 always improves on nothing: last.pt is written, best.pt is not
    monkeypatch.undo()
    assert load_checkpoint(run_dir / "last.pt").training["best_epoch"] == 1
    assert not (run_dir / "best.pt").exists() and not (run_dir / "metrics.csv").exists()

    capsys.readouterr()
    result = train(config, resume=True)
    assert "best.pt restored from last.pt (epoch 1, the best)" in capsys.readouterr().err
    best = load_checkpoint(run_dir / "best.pt").training
    assert result.best_epoch == best["epoch"] == load_checkpoint(run_dir / "last.pt").training["best_epoch"]
    assert [int(r["epoch"]) for r in csv.DictReader((run_dir / "metrics.csv").open())] == [1, 2]

    # a best.pt lost later (deleted) cannot be restored: its epoch's weights are in no file
    last = load_checkpoint(run_dir / "last.pt")
    last.training = {**last.training, "best_epoch": 1}
    save_checkpoint(last, run_dir / "last.pt")
    (run_dir / "best.pt").unlink()
    with pytest.raises(CheckpointError, match=r"best\.pt: is not the checkpoint of epoch 1, .* of epoch 2: the best"):
        train(config, resume=True)


def test_a_tversky_run_with_a_boundary_schedule_trains_and_sets_each_epochs_weight(
    brats_root: Path, tmp_path: Path, tiny_config: MakeConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    from medseg.losses import WithBoundary

    epochs: list[int] = []
    real = WithBoundary.set_epoch
    monkeypatch.setattr(WithBoundary, "set_epoch", lambda self, epoch: (epochs.append(epoch), real(self, epoch))[1])
    config = tiny_config(brats_root, tmp_path / "run", epochs=2, iterations_per_epoch=2, val_every=2)
    config.loss.name = "focal_tversky"
    config.loss.boundary_weight, config.loss.boundary_weight_step = 0.01, 0.01
    train(config, device="cpu")
    assert epochs == [0, 1]
    rows = list(csv.DictReader((tmp_path / "run" / "metrics.csv").open()))
    assert len(rows) == 2 and all(math.isfinite(float(r["train_loss"])) for r in rows)


def test_a_patch_far_larger_than_every_case_is_refused_up_front(
    brats_root: Path, tmp_path: Path, tiny_config: MakeConfig
) -> None:
    """Before: validated, then "unexpected RuntimeError: applying transform <... object at 0x...>"."""
    config = tiny_config(brats_root, tmp_path / "run")
    config.transforms.patch_size = [2048, 2048, 2048]
    with pytest.raises(ConfigError, match=r"transforms.patch_size \[2048, 2048, 2048\] holds 8589934592 voxels") as err:
        train(config)
    assert "more than 64 times the largest training case" in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "run" / "last.pt").exists()
