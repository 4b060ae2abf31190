"""The loss registry against hand-computed values (Tversky, focal Tversky, the boundary term, deep supervision
and the partial-label merge), and WindowConsistency: how much a network's answer depends on the rest of its
window, on real small networks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from medseg.config import LossConfig, config_from_dict
from medseg.errors import ConfigError
from medseg.labels import LabelTable, Region
from medseg.losses import LOSSES, WindowConsistency, build_loss, merge_unlabelled
from medseg.networks import build_network

CLASSES = LabelTable("three", {0: "background", 1: "a", 2: "b"})
REGIONS = LabelTable(
    "one_region",
    {0: "background", 1: "tumour"},
    kind="regions",
    regions=(Region("WT", (1,)),),
    regions_class_order=(1,),
)


def _tversky_by_hand(p: np.ndarray, t: np.ndarray, alpha: float, beta: float) -> np.ndarray:
    """1 - TP / (TP + alpha FP + beta FN) per sample and output of probabilities ``p`` and one-hot ``t``
    ``(B, C, ...)``, with soft counts."""
    axes = tuple(range(2, p.ndim))
    tp, fp, fn = (p * t).sum(axes), (p * (1 - t)).sum(axes), ((1 - p) * t).sum(axes)
    return 1 - tp / (tp + alpha * fp + beta * fn)


def _class_case() -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """Logits ``(1, 3, 4, 2, 1)`` whose softmax is known, a class-index target ``(1, 1, 4, 2, 1)``, and
    that softmax ``(1, 3, 4, 2, 1)``."""
    probs = np.array(
        [
            [[0.7, 0.2, 0.1], [0.6, 0.3, 0.1], [0.1, 0.8, 0.1], [0.2, 0.5, 0.3]],
            [[0.3, 0.3, 0.4], [0.1, 0.1, 0.8], [0.5, 0.25, 0.25], [0.9, 0.05, 0.05]],
        ]
    )  # (Y, X, C)
    p = probs.transpose(2, 1, 0)[None, ..., None]  # (1, C, X, Y, 1)
    target = np.array([[0, 0, 1, 1], [2, 2, 0, 0]]).T[None, None, ..., None]  # (1, 1, X, Y, 1)
    return torch.tensor(np.log(p), dtype=torch.float32), torch.tensor(target, dtype=torch.float32), p


def _one_hot(target: torch.Tensor, classes: int) -> np.ndarray:
    return np.stack([target.numpy()[:, 0] == c for c in range(classes)], axis=1).astype(float)


def test_tversky_is_the_hand_computed_index_of_soft_counts() -> None:
    logits, target, p = _class_case()
    cfg = LossConfig(name="tversky", tversky_alpha=0.3, tversky_beta=0.7)
    expected = _tversky_by_hand(p, _one_hot(target, 3), 0.3, 0.7).mean()
    assert float(build_loss(cfg, CLASSES)(logits, target)) == pytest.approx(expected, rel=1e-5)
    # alpha weighs false positives, beta false negatives: swapping them changes the value here
    swapped = _tversky_by_hand(p, _one_hot(target, 3), 0.7, 0.3).mean()
    assert abs(swapped - expected) > 1e-3
    cfg = LossConfig(name="tversky", tversky_alpha=0.7, tversky_beta=0.3)
    assert float(build_loss(cfg, CLASSES)(logits, target)) == pytest.approx(swapped, rel=1e-5)


def test_tversky_with_alpha_and_beta_one_half_is_soft_dice() -> None:
    logits, target, p = _class_case()
    t = _one_hot(target, 3)
    soft_dice = 1 - 2 * (p * t).sum((2, 3, 4)) / (p.sum((2, 3, 4)) + t.sum((2, 3, 4)))
    cfg = LossConfig(name="tversky", tversky_alpha=0.5, tversky_beta=0.5)
    assert float(build_loss(cfg, CLASSES)(logits, target)) == pytest.approx(soft_dice.mean(), rel=1e-5)


def test_focal_tversky_raises_each_outputs_loss_to_one_over_gamma() -> None:
    logits, target, p = _class_case()
    per_output = _tversky_by_hand(p, _one_hot(target, 3), 0.3, 0.7)
    cfg = LossConfig(name="focal_tversky", tversky_gamma=4 / 3)
    expected = (per_output**0.75).mean()
    assert float(build_loss(cfg, CLASSES)(logits, target)) == pytest.approx(expected, rel=1e-5)
    assert abs(expected - per_output.mean()) > 1e-3  # the exponent matters on this case
    cfg = LossConfig(name="focal_tversky", tversky_gamma=1.0)  # gamma 1 is Tversky
    assert float(build_loss(cfg, CLASSES)(logits, target)) == pytest.approx(per_output.mean(), rel=1e-5)


def test_region_tables_take_sigmoids_and_multi_hot_targets() -> None:
    logits = torch.tensor([2.0, 1.0, -1.0, 0.5, -3.0, 0.0], dtype=torch.float32).view(1, 1, 6, 1, 1)
    target = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 0.0], dtype=torch.float32).view(1, 1, 6, 1, 1)
    p = torch.sigmoid(logits).numpy()
    cfg = LossConfig(name="tversky")
    expected = _tversky_by_hand(p, target.numpy(), 0.3, 0.7).mean()
    assert float(build_loss(cfg, REGIONS)(logits, target)) == pytest.approx(expected, rel=1e-5)


# signed distance (voxels) to the surface of the reference [0, 0, 1, 1, 1, 1, 0, 0]: d outside, -(d - 1) inside
LINE = [0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0]
LINE_DISTANCE = np.array([2.0, 1.0, 0.0, -1.0, -1.0, 0.0, 1.0, 2.0])


def test_boundary_term_is_probability_times_signed_distance_with_its_epoch_schedule() -> None:
    logits = torch.tensor([1.0, -0.5, 0.3, 2.0, 1.5, -1.0, 0.2, -2.0], dtype=torch.float32).view(1, 1, 8, 1, 1)
    target = torch.tensor(LINE, dtype=torch.float32).view(1, 1, 8, 1, 1)
    p = torch.sigmoid(logits).numpy().ravel()
    base = float(build_loss(LossConfig(), REGIONS)(logits, target))
    boundary = float((p * LINE_DISTANCE).mean())
    cfg = LossConfig(boundary_weight=0.01, boundary_weight_step=0.01, boundary_weight_max=0.025)
    loss = build_loss(cfg, REGIONS)
    assert float(loss(logits, target)) == pytest.approx(base + 0.01 * boundary, rel=1e-5)
    loss.set_epoch(1)
    assert float(loss(logits, target)) == pytest.approx(base + 0.02 * boundary, rel=1e-5)
    loss.set_epoch(5)  # capped at boundary_weight_max
    assert float(loss(logits, target)) == pytest.approx(base + 0.025 * boundary, rel=1e-5)
    assert abs(boundary) > 1e-2


def test_boundary_term_leaves_background_out_of_class_tables() -> None:
    # two classes along a line: class 1 where LINE is 1; background's own distance map would be -LINE_DISTANCE's
    p1 = np.array([0.1, 0.2, 0.6, 0.9, 0.8, 0.7, 0.3, 0.05])
    logits = torch.tensor(np.log(np.stack([1 - p1, p1])), dtype=torch.float32).view(1, 2, 8, 1, 1)
    target = torch.tensor(LINE, dtype=torch.float32).view(1, 1, 8, 1, 1)
    table = LabelTable("two", {0: "background", 1: "organ"})
    base = float(build_loss(LossConfig(name="dice_ce"), table)(logits, target))
    loss = build_loss(LossConfig(name="dice_ce", boundary_weight=0.5), table)
    assert float(loss(logits, target)) == pytest.approx(base + 0.5 * float((p1 * LINE_DISTANCE).mean()), rel=1e-5)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_deep_supervision_weighs_the_heads_one_and_one_half(name: str) -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 2, 3, 8, 8, 4)  # (B, H, C, X, Y, Z): the heads upsampled to the patch
    target = torch.randint(0, 3, (2, 1, 8, 8, 4)).float()
    loss = build_loss(LossConfig(name=name, boundary_weight=0.1), CLASSES)
    expected = float(loss(logits[:, 0], target)) + 0.5 * float(loss(logits[:, 1], target))
    assert float(loss(logits, target)) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_an_unannotated_class_is_merged_into_background_before_every_loss(name: str) -> None:
    logits, target, _ = _class_case()
    target = torch.where(target == 2, 0.0, target)  # class b not annotated: its voxels read as background
    labelled = torch.tensor([[True, True, False]])
    loss = build_loss(LossConfig(name=name, boundary_weight=0.1), CLASSES)
    merged = merge_unlabelled(logits, labelled)
    p = torch.softmax(merged, 1).numpy()
    assert np.allclose(p[:, 2], 0.0) and np.allclose(p.sum(1), 1.0)
    assert float(loss(logits, target, labelled)) == pytest.approx(float(loss(merged, target)), rel=1e-5)
    assert abs(float(loss(logits, target, labelled)) - float(loss(logits, target))) > 1e-4
    if name == "tversky":  # class b is neither predicted nor present after the merge: 1 - TI is 0 for it
        t = _one_hot(target, 3)
        expected = _tversky_by_hand(p[:, :2], t[:, :2], 0.3, 0.7).sum() / 3
        assert float(build_loss(LossConfig(name=name), CLASSES)(logits, target, labelled)) == pytest.approx(
            expected, abs=1e-5
        )


def test_loss_settings_are_validated_and_usable_from_a_config() -> None:
    config = config_from_dict({"loss": {"name": "focal_tversky", "tversky_alpha": 0.4, "tversky_beta": 0.6}})
    assert isinstance(build_loss(config.loss, CLASSES), nn.Module)
    with pytest.raises(ConfigError, match=r"loss.tversky_gamma must be in \[1, 3\]"):
        config_from_dict({"loss": {"tversky_gamma": 0.5}})
    with pytest.raises(ConfigError, match=r"loss.tversky_alpha must be >= 0"):
        config_from_dict({"loss": {"tversky_alpha": -0.1}})
    with pytest.raises(ConfigError, match=r"tversky_alpha \+ loss.tversky_beta must be > 0"):
        config_from_dict({"loss": {"tversky_alpha": 0, "tversky_beta": 0}})
    with pytest.raises(ConfigError, match=r"class_weights is for dice_focal and dice_ce"):
        config_from_dict({"loss": {"name": "tversky", "class_weights": [1, 2, 3]}})
    with pytest.raises(ConfigError, match=r"loss.boundary_weight_step must be >= 0"):
        config_from_dict({"loss": {"boundary_weight_step": -0.01}})
    with pytest.raises(ConfigError, match=r"'boundary' is not one of"):
        config_from_dict({"loss": {"name": "boundary"}})


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
