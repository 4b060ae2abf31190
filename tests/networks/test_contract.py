"""One contract test run over every registered network."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from medseg.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from medseg.config import Config
from medseg.errors import ConfigError
from medseg.labels import BRATS2021
from medseg.networks import build_network, check_patch_size, get_network_spec, network_names

NAMES = network_names()


def test_registry_has_the_promised_networks() -> None:
    assert {"unet", "resunet", "vnet", "attention_unet", "segresnet", "dynunet"} <= set(NAMES)


def test_unknown_name_lists_the_valid_names() -> None:
    with pytest.raises(ConfigError) as err:
        build_network("transunet", in_channels=1, out_channels=1)
    for name in NAMES:
        assert name in str(err.value)


def test_unknown_argument_is_an_error() -> None:
    with pytest.raises(ConfigError, match="no argument"):
        build_network("unet", in_channels=1, out_channels=1, kwargs={"chanels": [4, 8]})


@pytest.mark.parametrize("name", NAMES)
def test_network_contract(name: str, tmp_path: Path) -> None:
    spec = get_network_spec(name)
    divisor = spec.divisor(spec.defaults)
    size = max(2 * divisor, 32)
    check_patch_size(name, [size] * 3)
    with pytest.raises(ConfigError, match=f"multiple of {divisor}"):
        check_patch_size(name, [size + divisor // 2, size, size])

    torch.manual_seed(0)
    model = build_network(name, in_channels=4, out_channels=3)
    x = torch.randn(2, 4, size, size, size)
    out = model.train()(x)
    if out.dim() == 6:  # deep supervision heads
        out = out[:, 0]
    assert out.shape == (2, 3, size, size, size)
    out.mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None for g in grads)
    assert any(float(g.abs().sum()) > 0 for g in grads)

    model.eval()
    ckpt = Checkpoint(
        network={"name": name, "kwargs": {}},
        channels=["T1", "T1ce", "T2", "FLAIR"],
        label_table=BRATS2021,
        config=Config().to_dict(),
        state_dict=model.state_dict(),
    )
    path = save_checkpoint(ckpt, tmp_path / f"{name}.pt")
    restored = load_checkpoint(path).build_model()
    with torch.no_grad():
        assert torch.allclose(model(x[:1]), restored(x[:1]), atol=1e-5)


def test_only_the_dynunet_bounds_its_windows_by_default() -> None:
    """The nnU-Net-like DynUNet keeps 32-channel full-resolution maps: a 128³ window by default, half
    as many voxels at twice the first-stage width; the other networks leave windows unbounded."""
    from medseg.networks.registry import default_window_voxels

    assert default_window_voxels("dynunet") == 128**3
    assert default_window_voxels("dynunet", {"filters": [64, 128, 256, 320, 320, 320]}) == 128**3 // 2
    assert all(default_window_voxels(n) is None for n in NAMES if n != "dynunet")


@pytest.mark.parametrize("name", [n for n in NAMES if "norm" in get_network_spec(n).defaults])
def test_norm_argument_selects_the_normalisation_layers(name: str) -> None:
    """``norm: batch`` gives running-statistics layers (eval output independent of the rest of the
    window), the default ``instance`` per-window statistics."""
    assert get_network_spec(name).defaults["norm"] == "instance"
    for norm, layer, other in (
        ("instance", torch.nn.InstanceNorm3d, torch.nn.BatchNorm3d),
        ("batch", torch.nn.BatchNorm3d, torch.nn.InstanceNorm3d),
    ):
        kinds = {type(m) for m in build_network(name, in_channels=4, out_channels=3, kwargs={"norm": norm}).modules()}
        assert layer in kinds and other not in kinds
