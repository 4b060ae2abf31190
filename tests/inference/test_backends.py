"""Inference backends: selection, machine facts, ONNX cache, OpenVINO vs torch agreement."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch

from medseg.checkpoint import load_checkpoint
from medseg.errors import MedsegError
from medseg.inference.backends import (
    available_threads,
    cpu_has_native_bf16,
    create_backend,
    default_cache_dir,
    factory,
    openvino_backend,
)
from medseg.inference.backends import base as backend_base

if TYPE_CHECKING:
    from conftest import Agreement

openvino_installed = backend_base.openvino_available()
needs_openvino = pytest.mark.skipif(not openvino_installed, reason="openvino not installed")
TORCH_CPU = {"backend": "torch", "device": "cpu"}
OPENVINO = {"backend": "openvino", "device": "cpu"}


def test_auto_picks_openvino_on_cpu_when_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(backend_base, "openvino_available", lambda: True)
    assert backend_base.resolve_backend_name("auto", cpu) == "openvino"
    assert backend_base.resolve_backend_name("auto", cuda) == "torch"
    assert backend_base.resolve_backend_name("torch", cpu) == "torch"
    monkeypatch.setattr(backend_base, "openvino_available", lambda: False)
    assert backend_base.resolve_backend_name("auto", cpu) == "torch"


def test_missing_openvino_is_one_clear_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backend_base, "openvino_available", lambda: False)
    with pytest.raises(MedsegError, match=r"medseg\[openvino\]") as info:
        backend_base.resolve_backend_name("openvino", torch.device("cpu"))
    assert "\n" not in str(info.value)


def test_unknown_backend() -> None:
    with pytest.raises(MedsegError, match="available: auto, torch, openvino"):
        backend_base.resolve_backend_name("tensorrt", torch.device("cpu"))


def test_bf16_only_from_cpu_flags(tmp_path: Path) -> None:
    with_bf16, without = tmp_path / "a", tmp_path / "b"
    with_bf16.write_text("processor : 0\nflags : fpu sse2 avx512f avx512_bf16\n")
    without.write_text("processor : 0\nflags : fpu sse2 avx512f avx512_vnni\n")
    assert cpu_has_native_bf16.__wrapped__(with_bf16) is True
    assert cpu_has_native_bf16.__wrapped__(without) is False
    assert cpu_has_native_bf16.__wrapped__(tmp_path / "missing") is False


def test_threads_follow_affinity() -> None:
    expected = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert available_threads() == expected


def test_cache_dir_next_to_checkpoint_or_user_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ckpt = tmp_path / "models" / "best.pt"
    ckpt.parent.mkdir()
    assert default_cache_dir(ckpt) == ckpt.parent.resolve() / ".medseg-cache"
    monkeypatch.setattr(factory.os, "access", lambda *_: False)  # a read-only model folder
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir(ckpt) == tmp_path / "xdg" / "medseg"


@needs_openvino
def test_openvino_matches_torch_and_caches_its_export(tiny_checkpoint: Path, tmp_path: Path) -> None:
    checkpoint = load_checkpoint(tiny_checkpoint)
    cpu = torch.device("cpu")
    reference = create_backend("torch", checkpoint, device=cpu)
    ov_backend = create_backend("openvino", checkpoint, device=cpu, cache_dir=tmp_path)
    assert ov_backend.name == "openvino" and reference.name == "torch"
    exported = sorted(tmp_path.glob("*.onnx"))
    assert len(exported) == 1
    stamp = exported[0].stat().st_mtime_ns
    torch.manual_seed(0)
    for shape in [(2, 4, 32, 32, 32), (1, 4, 48, 32, 64)]:  # another shape than the export's trace
        x = torch.randn(shape)
        torch.testing.assert_close(ov_backend(x), reference(x), atol=1e-3, rtol=1e-3)
    # only the latest window shape stays compiled: each holds that shape's working memory
    assert [key[1] for key in openvino_backend._LATEST] == [(1, 4, 48, 32, 64)]
    again = create_backend("openvino", checkpoint, device=cpu, cache_dir=tmp_path)
    assert sorted(tmp_path.glob("*.onnx")) == exported and exported[0].stat().st_mtime_ns == stamp
    assert again(torch.zeros(1, 4, 32, 32, 32)).shape == (1, 3, 32, 32, 32)


@needs_openvino
def test_openvino_is_fp32_by_default(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """OpenVINO's own CPU default is bf16 where the CPU has it; medseg asks for f32 unless told."""
    backend = create_backend(
        "openvino", load_checkpoint(tiny_checkpoint), device=torch.device("cpu"), cache_dir=tmp_path
    )
    request = backend._request((1, 4, 32, 32, 32))
    hint = request.get_compiled_model().get_property("INFERENCE_PRECISION_HINT")
    assert "f32" in str(hint).lower() or "float32" in str(hint).lower()
    assert backend.precision == "fp32"


@needs_openvino
def test_predictor_openvino_agrees_with_torch(
    tiny_checkpoint: Path, brats_root: Path, tmp_path: Path, label_agreement: Agreement
) -> None:
    case_dir = sorted(p for p in brats_root.iterdir() if p.is_dir())[0]
    dice = label_agreement(tiny_checkpoint, case_dir, TORCH_CPU, {**OPENVINO, "cache_dir": tmp_path})
    assert min(dice.values()) >= 0.99, dice


@needs_openvino
@pytest.mark.slow
def test_predictor_openvino_agrees_with_torch_trained(
    trained_checkpoint: Path, brats_root: Path, tmp_path: Path, label_agreement: Agreement
) -> None:
    for case_dir in sorted(p for p in brats_root.iterdir() if p.is_dir())[:3]:
        dice = label_agreement(trained_checkpoint, case_dir, TORCH_CPU, {**OPENVINO, "cache_dir": tmp_path})
        assert min(dice.values()) >= 0.99, (case_dir.name, dice)


@needs_openvino
def test_a_corrupt_openvino_cache_is_exported_again(one_channel_checkpoint: Path, tmp_path: Path) -> None:
    checkpoint = load_checkpoint(one_channel_checkpoint)
    cpu = torch.device("cpu")
    x = torch.randn(1, 1, 32, 32, 16, generator=torch.Generator().manual_seed(0))
    expected = create_backend("torch", checkpoint, device=cpu)(x)
    create_backend("openvino", checkpoint, device=cpu, cache_dir=tmp_path)
    (onnx,) = tmp_path.glob("*.onnx")
    record = json.loads(onnx.with_suffix(".json").read_text())
    assert record["onnx_sha256"] == hashlib.sha256(onnx.read_bytes()).hexdigest() and len(record["source"]) == 64
    whole = onnx.read_bytes()

    def check_runs() -> None:
        openvino_backend._LATEST.clear()  # compile from the file again, as a new process would
        backend = create_backend("openvino", checkpoint, device=cpu, cache_dir=tmp_path)
        torch.testing.assert_close(backend(x), expected, atol=1e-4, rtol=1e-4)
        assert (
            hashlib.sha256(onnx.read_bytes()).hexdigest()
            == json.loads(onnx.with_suffix(".json").read_text())["onnx_sha256"]
        )

    onnx.write_bytes(whole[: len(whole) // 2])  # truncated: its digest no longer matches the record
    check_runs()
    onnx.write_bytes(b"garbage")  # and no record: a cache from before medseg kept one
    onnx.with_suffix(".json").unlink()
    check_runs()
    onnx.write_bytes(b"garbage")  # the record matches, yet OpenVINO cannot read it
    forged = {**record, "onnx_sha256": hashlib.sha256(b"garbage").hexdigest()}
    onnx.with_suffix(".json").write_text(json.dumps(forged))
    check_runs()
