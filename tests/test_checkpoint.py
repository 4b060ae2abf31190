from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from medseg.checkpoint import load_checkpoint
from medseg.cli import main
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


def _altered(tiny_checkpoint: Path, path: Path, alter: Callable[[dict[str, Any]], None]) -> Path:
    """A copy of ``tiny_checkpoint`` at ``path`` with ``alter`` applied to its stored dict."""
    data = torch.load(tiny_checkpoint, map_location="cpu", weights_only=True)
    alter(data)
    torch.save(data, path)
    return path


def _first_weight(data: dict[str, Any]) -> str:
    return next(k for k, v in data["state_dict"].items() if v.ndim > 1)


@pytest.mark.parametrize(
    ("alter", "reason"),
    [
        (
            lambda d: d["state_dict"].update({_first_weight(d): torch.zeros(3, 3)}),
            r"its weights do not fit the network: '.*' has shape \[3, 3\] but the network's is \[",
        ),
        (
            lambda d: d["state_dict"].pop(_first_weight(d)),
            r"its weights do not fit the network: 1 missing keys \(first '",
        ),
        (
            lambda d: d["state_dict"].update({"extra.weight": torch.zeros(1)}),
            r"its weights do not fit the network: 1 unexpected keys \(first 'extra.weight'\)",
        ),
    ],
    ids=["shape", "missing", "unexpected"],
)
def test_weights_that_do_not_fit_name_the_checkpoint_and_the_key(
    tiny_checkpoint: Path, tmp_path: Path, alter: Callable[[dict[str, Any]], None], reason: str
) -> None:
    path = _altered(tiny_checkpoint, tmp_path / "bad.pt", alter)
    with pytest.raises(CheckpointError, match=reason) as err:
        load_checkpoint(path, training=False).build_model()
    assert err.value.path == path


@pytest.mark.parametrize(
    ("alter", "reason"),
    [
        (
            lambda d: d["config"]["transforms"].update(bogus=1),
            "its stored config has an unknown key 'transforms.bogus'",
        ),
        (lambda d: d["config"]["inference"].update(bogus=1), "its stored config has an unknown key 'inference.bogus'"),
        (lambda d: d.pop("channels"), "checkpoint lacks its 'channels' field"),
        (lambda d: d["network"].pop("kwargs"), "checkpoint lacks its 'network.kwargs' field"),
    ],
    ids=["unknown_transforms_key", "unknown_inference_key", "no_channels", "no_network_kwargs"],
)
def test_stored_config_it_cannot_read_is_one_line_naming_the_checkpoint_and_key(
    tiny_checkpoint: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    alter: Callable[[dict[str, Any]], None],
    reason: str,
) -> None:
    path = _altered(tiny_checkpoint, tmp_path / "bad.pt", alter)
    assert main(["info", "--model", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"medseg: error: {path}: {reason}")
    assert len(err.splitlines()) == 1, err
