from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from medseg.checkpoint import load_checkpoint
from medseg.errors import CheckpointError


class _Payload:
    def __reduce__(self):  # what weights_only=True must refuse to run
        return (print, ("this must never run",))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt")


def test_a_plain_state_dict_is_not_ours(tmp_path: Path) -> None:
    path = tmp_path / "weights.pt"
    torch.save({"layer.weight": torch.zeros(2)}, path)
    with pytest.raises(CheckpointError, match="not a medseg checkpoint"):
        load_checkpoint(path)


def test_arbitrary_pickles_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"format": "medseg-checkpoint", "x": _Payload()}, path)
    with pytest.raises(CheckpointError, match="cannot be loaded safely"):
        load_checkpoint(path)
    assert "must never run" not in capsys.readouterr().out


@pytest.mark.parametrize("content", [b"", b"not a zip at all", pickle.dumps([1, 2, 3])])
def test_garbage_files(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "garbage.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="not the zip archive that medseg train writes") as err:
        load_checkpoint(path)
    assert str(path) in str(err.value)


def test_truncated_checkpoint(tmp_checkpoint_bytes: bytes, tmp_path: Path) -> None:
    path = tmp_path / "cut.pt"
    path.write_bytes(tmp_checkpoint_bytes[: len(tmp_checkpoint_bytes) // 2])
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


@pytest.fixture
def tmp_checkpoint_bytes(tiny_checkpoint: Path) -> bytes:
    return tiny_checkpoint.read_bytes()


def test_trained_checkpoint_is_self_describing(tiny_checkpoint: Path) -> None:
    ckpt = load_checkpoint(tiny_checkpoint)
    assert ckpt.network["name"] == "unet"
    assert ckpt.channels == ["T1", "T1ce", "T2", "FLAIR"]
    assert ckpt.label_table.name == "brats2021"
    assert ckpt.config["transforms"]["orientation"] == "RAS"
    assert ckpt.training is not None and ckpt.training["epoch"] >= 1
    raw = torch.load(tiny_checkpoint, weights_only=True)
    assert raw["medseg_version"] and raw["preprocessing"] == ckpt.config["transforms"]


def test_inference_load_leaves_the_training_state_on_disk(tiny_checkpoint: Path) -> None:
    full = load_checkpoint(tiny_checkpoint)
    weights_only = load_checkpoint(tiny_checkpoint, training=False)
    assert weights_only.training is None and full.training is not None
    assert weights_only.state_dict.keys() == full.state_dict.keys()
    for name, tensor in full.state_dict.items():
        assert torch.equal(weights_only.state_dict[name], tensor), name
    x = torch.randn(1, 4, 32, 32, 32)
    with torch.no_grad():
        assert torch.equal(weights_only.build_model()(x), full.build_model()(x))
