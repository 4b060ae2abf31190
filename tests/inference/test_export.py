"""``medseg export``: TorchScript and ONNX models that compute what the checkpoint computes."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from medseg.checkpoint import load_checkpoint
from medseg.cli import main
from medseg.data.cases import InputCase
from medseg.inference import Predictor, read_case
from medseg.keys import IMAGE


@pytest.fixture(scope="module")
def phantom_input(brats_root: Path, one_channel_checkpoint: Path) -> np.ndarray:
    """A preprocessed BraTS phantom T1 ``(1, 1, X, Y, Z)``, cropped to a U-Net-friendly 32x32x32 box."""
    from monai.data import MetaTensor

    case_dir = sorted(p for p in brats_root.iterdir() if p.is_dir())[0]
    image = read_case(InputCase(case_dir.name, (case_dir / f"{case_dir.name}_t1.nii.gz",)))
    predictor = Predictor.from_checkpoint(one_channel_checkpoint, device="cpu")
    data = predictor.transforms({IMAGE: MetaTensor(torch.as_tensor(image.array), affine=image.geometry.affine)})
    x = data[IMAGE].as_tensor()[None, :, :32, :32, :32].float().contiguous()
    assert x.shape == (1, 1, 32, 32, 32)
    return x.numpy()


def _reference(checkpoint: Path, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return load_checkpoint(checkpoint).build_model()(torch.from_numpy(x)).numpy()


def test_torchscript_matches_the_checkpoint(
    one_channel_checkpoint: Path, phantom_input: np.ndarray, tmp_path: Path
) -> None:
    out = tmp_path / "model.pt"
    assert main(["export", "--model", str(one_channel_checkpoint), "--format", "torchscript", "--out", str(out)]) == 0
    extra = {"medseg.json": ""}
    scripted = torch.jit.load(str(out), _extra_files=extra)
    for x in (phantom_input, phantom_input[:, :, :16, :24, :32]):  # the trace's example was 32x32x16
        with torch.no_grad():
            got = scripted(torch.from_numpy(np.ascontiguousarray(x))).numpy()
        np.testing.assert_allclose(got, _reference(one_channel_checkpoint, np.ascontiguousarray(x)), atol=1e-4)
    description = json.loads(extra["medseg.json"])
    assert description["channels"] == ["image"] and description["labels"]["labels"]["1"] == "tissue"
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]


def test_onnx_matches_the_checkpoint_with_dynamic_spatial_axes(
    one_channel_checkpoint: Path, phantom_input: np.ndarray, tmp_path: Path
) -> None:
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")

    out = tmp_path / "model.onnx"
    assert main(["export", "--model", str(one_channel_checkpoint), "--format", "onnx", "--out", str(out)]) == 0
    proto = onnx.load(str(out))
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    assert json.loads({p.key: p.value for p in proto.metadata_props}["medseg"])["channels"] == ["image"]
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for x in (phantom_input, phantom_input[:, :, :16, :24, :32]):  # the export's example was 32x32x16
        (got,) = session.run(["logits"], {"image": np.ascontiguousarray(x)})
        np.testing.assert_allclose(got, _reference(one_channel_checkpoint, x), atol=1e-4)
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


def test_onnx_without_the_extra_is_a_clear_error(
    one_channel_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx raises ImportError
    code = main(
        ["export", "--model", str(one_channel_checkpoint), "--format", "onnx", "--out", str(tmp_path / "m.onnx")]
    )
    assert code == 2
    assert 'pip install "medseg[onnx]"' in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_export_refuses_to_overwrite_the_checkpoint(one_channel_checkpoint: Path) -> None:
    before = one_channel_checkpoint.read_bytes()
    argv = ["export", "--model", str(one_channel_checkpoint), "--format", "torchscript", "--out"]
    assert main([*argv, str(one_channel_checkpoint)]) == 2
    assert one_channel_checkpoint.read_bytes() == before
