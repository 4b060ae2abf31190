"""Shared fixtures: tiny BraTS phantom datasets and a tiny trained checkpoint, made once per session."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from medseg.config import Config, config_from_dict

TINY_SHAPE = (48, 48, 40)
TINY_SPACING = 4.0


def make_tiny_config(root: Path, run_dir: Path, **train: object) -> Config:
    """A config that trains a small U-Net on 32^3 patches in seconds."""
    return config_from_dict(
        {
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
    )


@pytest.fixture
def tiny_config() -> Callable[..., Config]:
    """``tiny_config(root, run_dir, **train_overrides) -> Config`` (see :func:`make_tiny_config`)."""
    return make_tiny_config


@pytest.fixture(scope="session")
def brats_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six BraTS 2021 phantom cases at 48x48x40, 4 mm (read-only: copy before modifying)."""
    from medseg.phantoms.brats import generate_brats_dataset

    root = tmp_path_factory.mktemp("brats") / "train"
    generate_brats_dataset(root, cases=6, seed=11, release="2021", shape=TINY_SHAPE, spacing=TINY_SPACING, workers=2)
    return root


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


@pytest.fixture(scope="session")
def one_channel_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained one-channel, two-class (background, tissue) U-Net checkpoint; see
    :func:`make_one_channel_checkpoint`."""
    return make_one_channel_checkpoint(tmp_path_factory.mktemp("one_channel") / "one_channel.pt")
