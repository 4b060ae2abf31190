"""The registered architectures. Each builder is a thin wrapper around a MONAI network (3-D only)."""

from __future__ import annotations

from collections.abc import Sequence

from monai.networks import nets
from torch import nn

from medseg.networks.registry import register_network, stride_product


def _by_strides(kwargs: dict) -> int:
    return stride_product(kwargs["strides"])


@register_network(
    "unet",
    defaults={"channels": (16, 32, 64, 128, 256), "strides": (2, 2, 2, 2), "dropout": 0.0, "norm": "instance"},
    divisor=_by_strides,
)
def unet(
    *, in_channels: int, out_channels: int, channels: Sequence[int], strides: Sequence[int], dropout: float, norm: str
) -> nn.Module:
    """Plain U-Net (MONAI ``UNet``, no residual units). Defaults: 16→256 filters, 4 stride-2 levels;
    input sizes must be multiples of the product of strides (16)."""
    return nets.UNet(3, in_channels, out_channels, channels, strides, num_res_units=0, dropout=dropout, norm=norm)


@register_network(
    "resunet",
    defaults={
        "channels": (16, 32, 64, 128, 256),
        "strides": (2, 2, 2, 2),
        "num_res_units": 2,
        "dropout": 0.0,
        "norm": "instance",
    },
    divisor=_by_strides,
)
def resunet(
    *,
    in_channels: int,
    out_channels: int,
    channels: Sequence[int],
    strides: Sequence[int],
    num_res_units: int,
    dropout: float,
    norm: str,
) -> nn.Module:
    """Residual U-Net (MONAI ``UNet`` with residual units), medseg's default. Defaults: 16→256
    filters, 4 stride-2 levels, 2 residual units per block; sizes must be multiples of 16."""
    return nets.UNet(
        3, in_channels, out_channels, channels, strides, num_res_units=num_res_units, dropout=dropout, norm=norm
    )


@register_network("vnet", defaults={"dropout_prob": 0.0}, divisor=lambda _: 16)
def vnet(*, in_channels: int, out_channels: int, dropout_prob: float) -> nn.Module:
    """V-Net (MONAI ``VNet``, Milletari et al. 2016). Four stride-2 levels: sizes must be multiples of 16.
    MONAI's VNet sums its input with a 16-filter conv, so ``in_channels`` must divide 16."""
    return nets.VNet(
        3, in_channels, out_channels, dropout_prob_down=dropout_prob, dropout_prob_up=(dropout_prob, dropout_prob)
    )


@register_network(
    "attention_unet",
    defaults={"channels": (16, 32, 64, 128, 256), "strides": (2, 2, 2, 2), "dropout": 0.0},
    divisor=_by_strides,
)
def attention_unet(
    *, in_channels: int, out_channels: int, channels: Sequence[int], strides: Sequence[int], dropout: float
) -> nn.Module:
    """Attention U-Net (MONAI ``AttentionUnet``, Oktay et al. 2018). Defaults: 16→256 filters,
    4 stride-2 levels; sizes must be multiples of 16."""
    return nets.AttentionUnet(3, in_channels, out_channels, channels, strides, dropout=dropout)


@register_network(
    "segresnet",
    defaults={"init_filters": 16, "blocks_down": (1, 2, 2, 4), "blocks_up": (1, 1, 1), "dropout_prob": None},
    divisor=lambda kw: 2 ** (len(kw["blocks_down"]) - 1),
)
def segresnet(
    *,
    in_channels: int,
    out_channels: int,
    init_filters: int,
    blocks_down: Sequence[int],
    blocks_up: Sequence[int],
    dropout_prob: float | None,
) -> nn.Module:
    """SegResNet (MONAI ``SegResNet``, Myronenko 2018, BraTS 2018 winner). Defaults: 16 initial
    filters, blocks (1, 2, 2, 4) down: sizes must be multiples of 8."""
    return nets.SegResNet(
        3,
        init_filters,
        in_channels,
        out_channels,
        dropout_prob=dropout_prob,
        blocks_down=tuple(blocks_down),
        blocks_up=tuple(blocks_up),
    )


def _full_resolution_budget(kwargs: dict) -> int:
    """A 128³ window at 32 full-resolution filters, fewer voxels for wider first stages: the DynUNet
    keeps several full-resolution feature maps alive (about 0.7 GB per million window voxels on
    OpenVINO fp32, ``tools/bench_inference.py``), so a BraTS case run in one 160³ window peaks near
    3.6 GB, in windows of at most 128³ voxels at 2.4-2.7 GB."""
    return 128**3 * 32 // int(kwargs["filters"][0])


@register_network(
    "dynunet",
    defaults={
        "filters": (32, 64, 128, 256, 320, 320),
        "strides": (1, 2, 2, 2, 2, 2),
        "kernel_size": (3, 3, 3, 3, 3, 3),
        "deep_supervision": False,
        "deep_supr_num": 2,
        "res_block": False,
        "norm": "instance",
    },
    divisor=_by_strides,
    window_voxels=_full_resolution_budget,
)
def dynunet(
    *,
    in_channels: int,
    out_channels: int,
    filters: Sequence[int],
    strides: Sequence[int],
    kernel_size: Sequence[int],
    deep_supervision: bool,
    deep_supr_num: int,
    res_block: bool,
    norm: str,
) -> nn.Module:
    """nnU-Net-like DynUNet (MONAI ``DynUNet``): 6 stages, 32→320 filters, LeakyReLU, affine ``norm``
    (``instance`` as in nnU-Net, or ``batch``).
    Sizes must be multiples of the product of strides (32). With ``deep_supervision`` the training
    output is ``(B, 1 + deep_supr_num, C, X, Y, Z)``; in eval mode it is the usual ``(B, C, X, Y, Z)``."""
    return nets.DynUNet(
        3,
        in_channels,
        out_channels,
        kernel_size=list(kernel_size),
        strides=list(strides),
        upsample_kernel_size=list(strides[1:]),
        filters=list(filters),
        norm_name=(norm, {"affine": True}),
        act_name=("leakyrelu", {"inplace": True, "negative_slope": 0.01}),
        deep_supervision=deep_supervision,
        deep_supr_num=deep_supr_num,
        res_block=res_block,
    )
