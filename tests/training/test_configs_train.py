"""Every ``configs/brats_<network>.yaml`` loads, validates and trains: a few optimizer steps on one
fixed batch of tiny BraTS phantoms lower the loss. Only the patch, window, epochs and run folder are
shrunk (``--set``-style overrides); the network, loss and optimizer settings are the config's own."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from medseg.config import Config, load_config
from medseg.keys import IMAGE, LABEL
from medseg.losses import build_loss
from medseg.networks import build_network
from medseg.training.trainer import _items, load_dataset_manifest, resolve_label_table, train, validate_config
from medseg.transforms import training_pipeline

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
NETWORKS = ["unet", "vnet", "attention_unet", "resunet", "segresnet", "dynunet"]
STEPS = 6
END_TO_END = ("unet", "resunet")


def _small(name: str, root: Path, run_dir: Path) -> Config:
    patch = 64 if name == "dynunet" else 32  # DynUNet's six stages need 64 to keep 2^3 voxels at the bottom
    return load_config(
        CONFIGS / f"brats_{name}.yaml",
        [
            f"data.root={root}",
            "data.num_folds=3",
            "data.num_workers=0",
            f"transforms.patch_size=[{patch},{patch},{patch}]",
            f"inference.roi_size=[{patch},{patch},{patch}]",
            "inference.sw_batch_size=1",
            "transforms.samples_per_case=1",
            "train.batch_size=1",
            "train.epochs=1",
            "train.iterations_per_epoch=1",
            "train.val_every=1",
            f"train.run_dir={run_dir}",
        ],
    )


def test_every_network_has_a_full_size_brats_config() -> None:
    for name in NETWORKS:
        config = load_config(CONFIGS / f"brats_{name}.yaml")
        validate_config(config)
        assert config.network.name == name
        assert config.data.layout == "brats" and config.transforms.intensity == "zscore_nonzero"
        assert config.transforms.patch_size == [128, 128, 128] and config.inference.roi_size == [128, 128, 128]


@pytest.mark.slow
@pytest.mark.parametrize("name", NETWORKS)
def test_brats_config_trains(name: str, brats_root: Path, tmp_path: Path) -> None:
    config = _small(name, brats_root, tmp_path / "run")
    validate_config(config)
    manifest, root = load_dataset_manifest(config)
    table = resolve_label_table(config, manifest)
    train_cases, _ = manifest.split(config.data.fold)
    pipeline = training_pipeline(config.transforms, table)
    pipeline.set_random_state(seed=0)
    sample = pipeline(_items(train_cases[:1], root)[0])[0]
    image, target = sample[IMAGE][None].float(), sample[LABEL][None].float()
    assert target.sum() > 0  # a patch on the tumour

    torch.manual_seed(0)
    model = build_network(name, in_channels=4, out_channels=table.num_outputs, kwargs=config.network.kwargs)
    loss_fn = build_loss(config.loss, table)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.train.lr, weight_decay=config.train.weight_decay)
    model.train()
    losses = []
    for _ in range(STEPS):
        torch.manual_seed(1)  # the same dropout masks every step: a fixed objective
        optimizer.zero_grad()
        loss = loss_fn(model(image), target)
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    assert min(losses[-2:]) < losses[0], losses

    if name in END_TO_END:  # the real loop (one step, validation, checkpoints); the cheap networks only
        result = train(config)
        assert (result.run_dir / "last.pt").is_file() and result.epochs_run == 1
