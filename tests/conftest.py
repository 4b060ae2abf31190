"""Shared fixtures: tiny BraTS phantom datasets, tiny trained checkpoints (made once per session), the
agreement of two predictors' label maps and the scripts of ``tools/`` as modules."""

from __future__ import annotations

import importlib.util
import io
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import yaml

from medseg.config import Config, config_from_dict

MakeConfig = Callable[..., Config]
MakeConfigFile = Callable[..., Path]
TOOLS = Path(__file__).resolve().parents[1] / "tools"
TINY_SHAPE = (48, 48, 40)
TINY_SPACING = 4.0


def tiny_config_dict(root: Path, run_dir: Path, **train: object) -> dict[str, Any]:
    """The raw settings of a config that trains a small U-Net on 32^3 patches in seconds."""
    return {
        "seed": 3,
        "data": {"root": str(root), "num_folds": 3, "num_workers": 0, "fold": 0},
        "transforms": {"patch_size": [32, 32, 32], "samples_per_case": 1},
        "network": {"name": "unet", "kwargs": {"channels": [8, 16, 32], "strides": [2, 2]}},
        "train": {
            "run_dir": str(run_dir),
            "epochs": 2,
            "iterations_per_epoch": 3,
            "batch_size": 2,
            "val_every": 1,
            "warmup_epochs": 1,
            "lr": 0.003,
            **train,
        },
        "inference": {"roi_size": [32, 32, 32], "sw_batch_size": 2},
    }


def make_tiny_config(root: Path, run_dir: Path, **train: object) -> Config:
    """A config that trains a small U-Net on 32^3 patches in seconds (:func:`tiny_config_dict`)."""
    return config_from_dict(tiny_config_dict(root, run_dir, **train))


def write_tiny_config(
    path: Path, root: Path, run_dir: Path, *, sections: Mapping[str, Any] = {}, **train: object
) -> Path:
    """:func:`tiny_config_dict` (with whole ``sections`` added, e.g. ``semi_supervised``) as a YAML file for
    ``medseg train --config``; ``path``."""
    path.write_text(yaml.safe_dump({**tiny_config_dict(root, run_dir, **train), **sections}))
    return path


@pytest.fixture
def tiny_config() -> MakeConfig:
    """``tiny_config(root, run_dir, **train_overrides) -> Config`` (see :func:`make_tiny_config`)."""
    return make_tiny_config


@pytest.fixture
def tiny_config_file() -> MakeConfigFile:
    """``tiny_config_file(path, root, run_dir, *, sections={}, **train_overrides) -> path`` (see
    :func:`write_tiny_config`)."""
    return write_tiny_config


@pytest.fixture(scope="session")
def brats_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six BraTS 2021 phantom cases at 48x48x40, 4 mm (read-only: copy before modifying)."""
    from medseg.phantoms.brats import generate_brats_dataset

    root = tmp_path_factory.mktemp("brats") / "train"
    generate_brats_dataset(root, cases=6, seed=11, release="2021", shape=TINY_SHAPE, spacing=TINY_SPACING, workers=2)
    return root


@pytest.fixture(scope="session")
def brats2024_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three BraTS 2024 (post-treatment glioma, ``brats2024-gli``) phantom cases at 48x48x40, 4 mm (read-only)."""
    from medseg.phantoms.brats import generate_brats_dataset

    root = tmp_path_factory.mktemp("brats2024") / "train"
    generate_brats_dataset(root, cases=3, seed=5, release="2024", shape=TINY_SHAPE, spacing=TINY_SPACING, workers=2)
    return root


@pytest.fixture(scope="session")
def brats2024_checkpoint(brats2024_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``best.pt`` of a two-epoch training run on :func:`brats2024_root` with ``data.labels: brats2024-gli``."""
    import dataclasses

    from medseg.training import train

    run_dir = tmp_path_factory.mktemp("run") / "tiny2024"
    config = make_tiny_config(brats2024_root, run_dir)
    train(dataclasses.replace(config, data=dataclasses.replace(config.data, labels="brats2024-gli")))
    return run_dir / "best.pt"


@pytest.fixture(scope="session")
def tiny_checkpoint(brats_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``best.pt`` of a two-epoch training run on :func:`brats_root`."""
    from medseg.training import train

    run_dir = tmp_path_factory.mktemp("run") / "tiny"
    train(make_tiny_config(brats_root, run_dir))
    return run_dir / "best.pt"


def make_one_channel_checkpoint(path: Path, *, seed: int = 0) -> Path:
    """Save an untrained one-channel, two-class U-Net checkpoint (nnU-Net layout, 32x32x16 windows)."""
    import torch

    from medseg.checkpoint import Checkpoint, save_checkpoint
    from medseg.config import Config
    from medseg.labels import LabelTable
    from medseg.networks import build_network

    torch.manual_seed(seed)
    network = {"name": "unet", "kwargs": {"channels": [4, 8], "strides": [2]}}
    model = build_network("unet", in_channels=1, out_channels=2, kwargs=network["kwargs"])
    config = Config().to_dict()
    config["data"]["layout"] = "nnunet"
    config["network"]["name"] = network["name"]
    config["network"]["kwargs"] = network["kwargs"]
    config["inference"]["roi_size"] = [32, 32, 16]
    config["inference"]["min_overlap"] = 4  # a 16-voxel window axis keeps neighbours overlapping by less than 16
    config["transforms"]["crop_foreground"] = False
    checkpoint = Checkpoint(
        network=network,
        channels=["image"],
        label_table=LabelTable("tissue", {0: "background", 1: "tissue"}),
        config=config,
        state_dict=model.state_dict(),
    )
    return save_checkpoint(checkpoint, path)


def make_constant_checkpoint(path: Path, *, logits: Sequence[float]) -> Path:
    """Save :func:`make_one_channel_checkpoint`'s two-class U-Net with every weight 0 but the last layer's
    bias, which is ``logits``: it answers ``logits`` at every voxel of any image, so its probabilities,
    entropy and calibration have a closed form."""
    import torch

    from medseg.checkpoint import load_checkpoint, save_checkpoint

    make_one_channel_checkpoint(path)
    checkpoint = load_checkpoint(path, training=False)
    state = {key: torch.zeros_like(value) for key, value in checkpoint.state_dict.items()}
    state["model.2.conv.bias"] = torch.tensor(list(logits), dtype=torch.float32)  # the output layer's bias
    checkpoint.state_dict = state
    return save_checkpoint(checkpoint, path)


@pytest.fixture
def constant_checkpoint_at() -> Callable[..., Path]:
    """``constant_checkpoint_at(path, logits=(l0, l1)) -> path`` (see :func:`make_constant_checkpoint`)."""
    return make_constant_checkpoint


@pytest.fixture
def one_channel_checkpoint_at() -> Callable[..., Path]:
    """``one_channel_checkpoint_at(path, seed=0) -> path`` (see :func:`make_one_channel_checkpoint`)."""
    return make_one_channel_checkpoint


@pytest.fixture(scope="session")
def one_channel_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained one-channel, two-class (background, tissue) U-Net checkpoint; see
    :func:`make_one_channel_checkpoint`."""
    return make_one_channel_checkpoint(tmp_path_factory.mktemp("one_channel") / "one_channel.pt")


@pytest.fixture(scope="session")
def trained_checkpoint(brats_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small ResU-Net trained for ~1 minute on :func:`brats_root` on the CPU (more than
    ``tiny_checkpoint``'s few steps, so that it predicts tumour regions rather than noise)."""
    from medseg.training import train

    run_dir = tmp_path_factory.mktemp("trained") / "run"
    config = make_tiny_config(brats_root, run_dir, epochs=12, iterations_per_epoch=8, val_every=12, amp=False)
    config.seed = 5
    config.transforms.samples_per_case = 2
    config.network.name = "resunet"
    config.network.kwargs = {"channels": [8, 16, 32, 64], "strides": [2, 2, 2]}
    train(config, device="cpu")
    return run_dir / "last.pt"


class ReferenceMetrics:
    """Dice, HD95 and NSD written with numpy and scipy alone, the one copy the tests check medseg's metrics
    against. Masks are boolean ``(X, Y, Z)`` arrays on one grid; ``spacing`` is the voxel size per axis in mm."""

    @staticmethod
    def surface(mask: np.ndarray) -> np.ndarray:
        """Voxels that one erosion with the 6-connected cross removes; outside the image counts as background."""
        from scipy import ndimage

        return mask & ~ndimage.binary_erosion(mask, border_value=0)

    @classmethod
    def directed(cls, a: np.ndarray, b: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
        """Distances (mm) from each surface voxel of ``a`` to the nearest surface voxel of ``b``, via an EDT."""
        from scipy import ndimage

        return ndimage.distance_transform_edt(~cls.surface(b), sampling=spacing)[cls.surface(a)]

    @staticmethod
    def dice(a: np.ndarray, b: np.ndarray) -> float:
        """``2 |a & b| / (|a| + |b|)``; 1 when both are empty."""
        total = a.sum() + b.sum()
        return 1.0 if total == 0 else float(2 * (a & b).sum() / total)

    @classmethod
    def hd95(cls, a: np.ndarray, b: np.ndarray, spacing: Sequence[float]) -> float:
        """The larger of the two directed 95th-percentile surface distances (mm); both masks non-empty."""
        return float(
            max(np.percentile(cls.directed(a, b, spacing), 95), np.percentile(cls.directed(b, a, spacing), 95))
        )

    @classmethod
    def nsd(cls, a: np.ndarray, b: np.ndarray, spacing: Sequence[float], tolerance: float) -> float:
        """The share of both surfaces' voxels within ``tolerance`` mm of the other surface; both masks non-empty."""
        d_ab, d_ba = cls.directed(a, b, spacing), cls.directed(b, a, spacing)
        return float((np.sum(d_ab <= tolerance) + np.sum(d_ba <= tolerance)) / (d_ab.size + d_ba.size))

    @classmethod
    def scores(
        cls, pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float], tolerance: float = 1.0
    ) -> tuple[float, float, float]:
        """``(Dice, HD95, NSD)`` with the BraTS empty-mask rules: both empty (1, 0, 1); one empty (0, the
        image diagonal in mm, 0)."""
        if not pred.any() and not ref.any():
            return 1.0, 0.0, 1.0
        if not pred.any() or not ref.any():
            return 0.0, float(np.linalg.norm(np.array(pred.shape) * np.array(spacing))), 0.0
        return cls.dice(pred, ref), cls.hd95(pred, ref, spacing), cls.nsd(pred, ref, spacing, tolerance)


@pytest.fixture
def reference_metrics() -> type[ReferenceMetrics]:
    """:class:`ReferenceMetrics`, the independent Dice, HD95 and NSD."""
    return ReferenceMetrics


Agreement = Callable[[Path, Path, Mapping[str, Any], Mapping[str, Any]], dict[str, float]]


def _label_agreement(
    checkpoint: Path, case_dir: Path, reference: Mapping[str, Any], candidate: Mapping[str, Any]
) -> dict[str, float]:
    """Dice per region between the label maps of two Predictors (``Predictor.from_checkpoint`` keyword
    arguments ``reference`` and ``candidate``) on the BraTS case in ``case_dir``."""
    from medseg.checkpoint import load_checkpoint
    from medseg.data.cases import InputCase
    from medseg.inference import Predictor, read_case

    files = tuple(next(case_dir.glob(f"*_{c}.nii.gz")) for c in ("t1", "t1ce", "t2", "flair"))
    image = read_case(InputCase(case_dir.name, files))
    expected = Predictor.from_checkpoint(checkpoint, **reference).predict(image)
    actual = Predictor.from_checkpoint(checkpoint, **candidate).predict(image)
    assert expected.any(), "an empty prediction would agree with anything"
    table = load_checkpoint(checkpoint).label_table
    return {
        r.name: ReferenceMetrics.dice(np.isin(expected, r.labels), np.isin(actual, r.labels)) for r in table.regions
    }


@pytest.fixture
def label_agreement() -> Agreement:
    """``label_agreement(checkpoint, case_dir, reference, candidate) -> {region: Dice}``; see
    :func:`_label_agreement`."""
    return _label_agreement


_PROGRESS_LINE = re.compile(r".*: \d+/\d+ \S+\(s\), [\d:]+ elapsed(, about [\d:]+ left)?")


def _without_progress(text: str) -> str:
    """``text`` (captured stderr) without the plain progress lines that a log gets instead of a bar
    (:class:`medseg.progress.LogProgress`)."""
    return "".join(line for line in text.splitlines(keepends=True) if not _PROGRESS_LINE.fullmatch(line.rstrip("\n")))


@pytest.fixture
def without_progress() -> Callable[[str], str]:
    """``without_progress(captured_stderr) -> str``; see :func:`_without_progress`."""
    return _without_progress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def terminal_stderr(monkeypatch: pytest.MonkeyPatch) -> Callable[[], io.StringIO]:
    """Call it in the test body (pytest's output capture resets ``sys.stderr`` after fixtures): it
    replaces ``sys.stderr`` with a buffer that says it is a terminal, where progress bars are drawn."""

    def install() -> io.StringIO:
        stream = _Terminal()
        monkeypatch.setattr(sys, "stderr", stream)
        return stream

    return install


@pytest.fixture
def full_disk(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """``full_disk("summary.csv", ...)``: from then on, writing a file of one of these names fails as on a
    full disk. The temporary file :func:`medseg.io.atomic_output` writes it through, when opened with
    ``Path.open`` (or ``Path.write_text``), is opened on ``/dev/full`` instead, which answers every write
    with ENOSPC (Linux)."""
    if not Path("/dev/full").exists():
        pytest.skip("needs /dev/full")
    real_open = Path.open

    def install(*names: str) -> None:
        prefixes = tuple(f".{name.split('.')[0]}." for name in names)

        def open_(self: Path, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
            full = "w" in mode and self.name.startswith(prefixes)
            return real_open(Path("/dev/full") if full else self, mode, *args, **kwargs)

        monkeypatch.setattr(Path, "open", open_)

    return install


def _load_tool(name: str) -> ModuleType:
    """``tools/<name>.py`` as a module (``tools/`` is not a package), loaded anew and registered in
    ``sys.modules`` as ``name`` (dataclasses look their module up by name); its imports of the other tools
    (``from bench_real import ...``, as a script run from ``tools/`` does) resolve while it loads."""
    spec = importlib.util.spec_from_file_location(name, TOOLS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    sys.path.insert(0, str(TOOLS))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(TOOLS))
    return module


@pytest.fixture(scope="session")
def load_tool() -> Callable[[str], ModuleType]:
    """``load_tool("bench_calibration") -> module``; see :func:`_load_tool`."""
    return _load_tool
