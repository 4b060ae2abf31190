"""The CUDA paths, where there is a GPU (skipped elsewhere; see the README's GPU section for the run on
a lent one): fp16 autocast training with gradient scaling and cuDNN autotuning, resuming it, its
checkpoint read back on the CPU, and the fp16 label maps of ``medseg predict --device cuda`` against
fp32 ones on the CPU, on the input's grid."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import nibabel as nib
import numpy as np
import pytest
import torch

from medseg.checkpoint import load_checkpoint
from medseg.inference import Predictor
from medseg.training import train

if TYPE_CHECKING:
    from conftest import Agreement, MakeConfig

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
REPO = Path(__file__).resolve().parents[1]


def test_amp_training_runs_fp16_with_scaled_gradients_and_resumes(
    brats_root: Path, tmp_path: Path, tiny_config: MakeConfig
) -> None:
    dtypes: set[torch.dtype] = set()

    def record(module: torch.nn.Module, args: object, output: torch.Tensor) -> None:
        if isinstance(module, torch.nn.Conv3d):
            dtypes.add(output.dtype)

    run = {"epochs": 2, "consistency_weight": 0.5}
    hook = torch.nn.modules.module.register_module_forward_hook(record)
    try:  # the time budget is spent after the first epoch: an interrupted run
        first = train(tiny_config(brats_root, tmp_path / "run", **run, max_minutes=0.0), device="cuda")
    finally:
        hook.remove()
    assert first.epochs_run == 1
    assert dtypes == {torch.float16}
    assert torch.backends.cudnn.benchmark

    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    assert {t.device.type for t in ckpt.state_dict.values()} == {"cpu"}
    assert {t.dtype for t in ckpt.state_dict.values() if t.is_floating_point()} == {torch.float32}
    assert ckpt.training["scaler"]["scale"] > 0  # an enabled GradScaler's state

    resumed = train(tiny_config(brats_root, tmp_path / "run", **run), resume=True, device="cuda")
    assert resumed.epochs_run == 2
    history = load_checkpoint(tmp_path / "run" / "last.pt").training["history"]
    assert [r["epoch"] for r in history] == [1, 2]
    assert all(math.isfinite(r["train_loss"]) for r in history)
    cpu = Predictor.from_checkpoint(tmp_path / "run" / "last.pt", device="cpu", backend="torch")
    assert next(cpu.backends[0].model.parameters()).device.type == "cpu"


def test_fp16_label_maps_agree_with_fp32_on_the_cpu(
    trained_checkpoint: Path, brats_root: Path, label_agreement: Agreement
) -> None:
    gpu = Predictor.from_checkpoint(trained_checkpoint, device="cuda")  # backend auto
    assert (gpu.backends[0].name, gpu.backends[0].autocast_dtype) == ("torch", torch.float16)
    for case_dir in sorted(p for p in brats_root.iterdir() if p.is_dir())[:3]:
        dice = label_agreement(trained_checkpoint, case_dir, {"backend": "torch", "device": "cpu"}, {"device": "cuda"})
        assert min(dice.values()) >= 0.99, (case_dir.name, dice)


def test_predict_cli_on_cuda_writes_on_the_input_grid(
    trained_checkpoint: Path, brats_root: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "medseg", "predict", "--model", str(trained_checkpoint), "--input", str(brats_root),
           "--output", str(out), "--device", "cuda", "--progress", "none"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for case_dir in sorted(p for p in brats_root.iterdir() if p.is_dir()):
        source = nib.load(next(case_dir.glob("*_flair.nii.gz")))
        written = nib.load(out / f"{case_dir.name}.nii.gz")
        assert written.shape == source.shape
        np.testing.assert_array_equal(written.affine, source.affine)
        assert np.asarray(written.dataobj).any()
