"""WindowConsistency: how much a network's answer depends on the rest of its window, on real small networks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from medseg.losses import WindowConsistency
from medseg.networks import build_network


def _context_net(outputs: int) -> nn.Module:
    """Instance norm over the window, then a pointwise layer: each voxel's answer depends on the whole window."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.InstanceNorm3d(2, affine=False), nn.Conv3d(2, outputs, 1))
    with torch.no_grad():
        net[1].weight.mul_(4.0)
    return net


def _image() -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    ramp = torch.linspace(0.0, 3.0, 32).view(1, 1, 32, 1, 1)  # every sub-window has its own mean and spread
    return torch.rand(1, 2, 32, 24, 16, generator=g) + ramp


def test_sub_windows_are_network_sizes_from_half_the_patch_to_one_divisor_short() -> None:
    consistency = WindowConsistency(regions=True, divisor=8)
    g = torch.Generator().manual_seed(0)
    seen: set[tuple[int, int]] = set()
    for _ in range(300):
        window = consistency.sub_window((32, 24, 16), generator=g)
        for s, size in zip(window, (32, 24, 16), strict=True):
            q = s.stop - s.start
            assert q % 8 == 0 and 2 * q >= size and q < size and 0 <= s.start <= size - q
            seen.add((size, q))
    assert seen == {(32, 16), (32, 24), (24, 16), (16, 8)}  # every allowed size is drawn


def test_a_pointwise_network_is_perfectly_consistent() -> None:
    torch.manual_seed(0)
    net = nn.Conv3d(2, 3, 1)
    x = _image()
    with torch.no_grad():
        assert abs(float(WindowConsistency(True, 8)(net, x, net(x)))) < 1e-6
        assert abs(float(WindowConsistency(False, 8)(net, x, net(x)))) < 1e-6


@pytest.mark.parametrize("regions", [True, False])
def test_value_is_the_kl_divergence_from_the_whole_patch_answer(regions: bool) -> None:
    net, x = _context_net(3), _image()
    consistency = WindowConsistency(regions, divisor=8)
    torch.manual_seed(5)
    window = consistency.sub_window(tuple(x.shape[2:]))
    torch.manual_seed(5)
    with torch.no_grad():
        value = float(consistency(net, x, net(x)))
        padded = torch.zeros_like(x)
        padded[(..., *window)] = x[(..., *window)]
        p = net(x)[(..., *window)].double().numpy()
        q = net(padded)[(..., *window)].double().numpy()
    if regions:  # independent Bernoulli per region and voxel
        p, q = 1 / (1 + np.exp(-p)), 1 / (1 + np.exp(-q))
        kl = p * np.log(p / q) + (1 - p) * np.log((1 - p) / (1 - q))
        expected = kl.mean()
    else:  # one categorical per voxel
        p = np.exp(p) / np.exp(p).sum(1, keepdims=True)
        q = np.exp(q) / np.exp(q).sum(1, keepdims=True)
        expected = (p * np.log(p / q)).sum(1).mean()
    assert expected > 1e-3  # the window matters to this network
    assert value == pytest.approx(expected, rel=1e-4)


def test_gradient_reaches_the_sub_window_answer_only_and_lowers_the_divergence() -> None:
    net = build_network("unet", in_channels=2, out_channels=3, kwargs={"channels": [4, 8], "strides": [2]})
    x = _image()
    consistency = WindowConsistency(regions=True, divisor=2)
    logits = net(x)
    logits.retain_grad()
    consistency(net, x, logits).backward()
    assert logits.grad is None or not logits.grad.any()  # the whole patch's answer is the target

    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    torch.manual_seed(0)
    with torch.no_grad():
        before = float(consistency(net, x, net(x)))
    for _ in range(60):
        optimizer.zero_grad()
        torch.manual_seed(0)  # one sub-window throughout
        consistency(net, x, net(x)).backward()
        optimizer.step()
    torch.manual_seed(0)
    with torch.no_grad():
        after = float(consistency(net, x, net(x)))
    assert after < 0.5 * before


def test_deep_supervision_compares_the_full_resolution_head() -> None:
    net = build_network(
        "dynunet",
        in_channels=2,
        out_channels=3,
        kwargs={
            "filters": [4, 8, 16],
            "strides": [1, 2, 2],
            "kernel_size": [3] * 3,
            "deep_supervision": True,
            "deep_supr_num": 1,
        },
    ).train()
    x = _image()[..., :16, :16, :16]
    consistency = WindowConsistency(regions=True, divisor=4)
    torch.manual_seed(3)
    window = consistency.sub_window((16, 16, 16))
    torch.manual_seed(3)
    with torch.no_grad():
        heads = net(x)
        assert heads.dim() == 6
        value = float(consistency(net, x, heads))
        padded = torch.zeros_like(x)
        padded[(..., *window)] = x[(..., *window)]
        p, q = torch.sigmoid(heads[:, 0][(..., *window)]), torch.sigmoid(net(padded)[:, 0][(..., *window)])
    expected = float((p * (p / q).log() + (1 - p) * ((1 - p) / (1 - q)).log()).mean())
    assert value == pytest.approx(expected, rel=1e-4)
