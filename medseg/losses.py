"""Segmentation losses, built from config. Thin wrappers choosing and configuring MONAI's losses."""

from __future__ import annotations

from collections.abc import Callable

import torch
from monai.losses import BoundaryLoss, DeepSupervisionLoss, DiceCELoss, DiceFocalLoss, TverskyLoss
from torch import nn

from medseg.config import LossConfig
from medseg.labels import LabelTable


def build_loss(cfg: LossConfig, table: LabelTable) -> nn.Module:
    """The configured loss for ``table``'s output mode (``cfg.name``, a key of :data:`LOSSES`, plus the
    boundary term when ``cfg`` schedules one; see :class:`~medseg.config.LossConfig`).

    Region tables (BraTS) use sigmoid outputs with one multi-hot target channel per region,
    ``target (B, R, X, Y, Z)``; class tables (CT organs) use softmax over mutually exclusive labels,
    ``target (B, 1, X, Y, Z)`` holding class indices. ``logits`` are ``(B, C, X, Y, Z)``, or
    ``(B, H, C, X, Y, Z)`` for networks with ``H`` deep-supervision heads (weighted by MONAI's
    :class:`DeepSupervisionLoss`). The module's ``set_epoch(epoch)`` sets the boundary term's weight.
    """
    regions = table.kind == "regions"
    common = {"sigmoid": regions, "softmax": not regions, "to_onehot_y": not regions}
    loss = LOSSES[cfg.name](cfg, common)
    if cfg.boundary_weight > 0 or cfg.boundary_weight_step > 0:
        loss = WithBoundary(loss, cfg, BoundaryLoss(include_background=regions, **common))  # regions: all foreground
    return _HeadsLoss(loss)


def _dice_focal(cfg: LossConfig, common: dict[str, bool]) -> nn.Module:
    return DiceFocalLoss(
        **common,
        weight=_class_weights(cfg),
        gamma=cfg.gamma,
        lambda_dice=cfg.dice_weight,
        lambda_focal=cfg.other_weight,
    )


def _dice_ce(cfg: LossConfig, common: dict[str, bool]) -> nn.Module:
    return DiceCELoss(**common, weight=_class_weights(cfg), lambda_dice=cfg.dice_weight, lambda_ce=cfg.other_weight)


def _tversky(cfg: LossConfig, common: dict[str, bool]) -> nn.Module:
    return TverskyLoss(**common, alpha=cfg.tversky_alpha, beta=cfg.tversky_beta)


def _focal_tversky(cfg: LossConfig, common: dict[str, bool]) -> nn.Module:
    tversky = TverskyLoss(**common, alpha=cfg.tversky_alpha, beta=cfg.tversky_beta, reduction="none")
    return FocalTversky(tversky, gamma=cfg.tversky_gamma)


def _class_weights(cfg: LossConfig) -> torch.Tensor | None:
    return torch.tensor(cfg.class_weights, dtype=torch.float32) if cfg.class_weights else None


LOSSES: dict[str, Callable[[LossConfig, dict[str, bool]], nn.Module]] = {
    "dice_focal": _dice_focal,
    "dice_ce": _dice_ce,
    "tversky": _tversky,
    "focal_tversky": _focal_tversky,
}
"""Each ``loss.name``'s builder: ``(config, {"sigmoid", "softmax", "to_onehot_y"}) -> loss(logits, target)``."""


class FocalTversky(nn.Module):
    """The focal Tversky loss of Abraham and Khan (ISBI 2019): the mean over samples and outputs of
    ``(1 - TI) ** (1 / gamma)``, where ``tversky`` (MONAI's :class:`TverskyLoss` with ``reduction="none"``)
    gives ``1 - TI`` per sample and output, ``(B, C)``. ``gamma`` > 1 weights the outputs it segments
    poorly (small TI) more than Tversky does."""

    def __init__(self, tversky: TverskyLoss, *, gamma: float) -> None:
        super().__init__()
        self.tversky = tversky
        self.exponent = 1.0 / gamma

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``logits (B, C, X, Y, Z)``, ``target`` as for :func:`build_loss` -> a scalar."""
        # 1 - TI is 0 only for a perfect soft prediction, where x ** (1 / gamma) has no finite gradient
        return self.tversky(logits, target).clamp_min(1e-6).pow(self.exponent).mean()


class WithBoundary(nn.Module):
    """``loss`` plus the boundary loss of Kervadec et al. (MIDL 2019; MONAI's :class:`BoundaryLoss` over
    the foreground outputs, every region or every class but background: probability times the signed
    distance in voxels to the reference's surface, ``-(d - 1)`` at depth ``d`` inside and ``d`` outside,
    averaged over voxels, samples and outputs; 0 for an output whose reference is empty or fills the
    patch), weighted by ``cfg.boundary_weight_at(epoch)`` for the epoch that :meth:`set_epoch` set (0 until
    then)."""

    def __init__(self, loss: nn.Module, cfg: LossConfig, boundary: BoundaryLoss) -> None:
        super().__init__()
        self.loss = loss
        self.boundary = boundary
        self.cfg = cfg
        self.weight = cfg.boundary_weight_at(0)

    def set_epoch(self, epoch: int) -> None:
        """Weight the boundary term as the schedule says for epoch ``epoch`` (from 0)."""
        self.weight = self.cfg.boundary_weight_at(epoch)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``logits (B, C, X, Y, Z)``, ``target`` as for :func:`build_loss` -> a scalar."""
        value = self.loss(logits, target)
        if self.weight > 0:
            value = value + self.weight * self.boundary(logits, target)
        return value


def merge_unlabelled(logits: torch.Tensor, labelled: torch.Tensor) -> torch.Tensor:
    """Softmax logits whose classes not annotated in a sample are merged into background.

    Args:
        logits: ``(B, C, X, Y, Z)``, or ``(B, H, C, X, Y, Z)`` with ``H`` deep-supervision heads.
        labelled: ``(B, C)`` bool, per sample which classes were annotated (column 0, background,
            is taken as annotated whatever it says).

    Returns:
        Logits of the same shape whose softmax gives background the summed probability of background
        and every class not annotated in that sample, and each such class probability 0 (the marginal
        loss of Shi et al., "Marginal loss and exclusion loss for partially supervised multi-organ
        segmentation", MedIA 2021). Where every class is annotated the softmax is unchanged.
    """
    class_dim = logits.dim() - 4
    missing = ~labelled.to(device=logits.device, dtype=torch.bool)
    missing[:, 0] = False
    shape = [missing.shape[0], *[1] * (class_dim - 1), missing.shape[1], 1, 1, 1]
    missing = missing.view(shape)
    joins_background = missing.clone()
    joins_background.select(class_dim, 0).fill_(True)
    lowest = torch.finfo(logits.dtype).min
    background = torch.logsumexp(logits.masked_fill(~joins_background, lowest), dim=class_dim, keepdim=True)
    merged = logits.masked_fill(missing, lowest / 2)
    first = [slice(None)] * logits.dim()
    first[class_dim] = slice(0, 1)
    rest = first.copy()
    rest[class_dim] = slice(1, None)
    return torch.cat([background, merged[tuple(rest)]], dim=class_dim)


class _HeadsLoss(nn.Module):
    """Apply ``loss`` to plain logits, or MONAI's deep-supervision weighting to stacked heads; with
    ``labelled`` (class tables), classes not annotated in a sample are merged into background first
    (:func:`merge_unlabelled`)."""

    def __init__(self, loss: nn.Module) -> None:
        super().__init__()
        self.loss = loss
        self.deep = DeepSupervisionLoss(loss)

    def set_epoch(self, epoch: int) -> None:
        """Tell a scheduled term (:class:`WithBoundary`) the epoch (from 0); other losses do not change."""
        if isinstance(self.loss, WithBoundary):
            self.loss.set_epoch(epoch)

    def forward(self, logits: torch.Tensor, target: torch.Tensor, labelled: torch.Tensor | None = None) -> torch.Tensor:
        if labelled is not None:
            logits = merge_unlabelled(logits, labelled)
        if logits.dim() == target.dim() + 1:
            return self.deep(list(torch.unbind(logits, dim=1)), target)
        return self.loss(logits, target)


class WindowConsistency(nn.Module):
    """How much a network's answer depends on what else its window holds: the divergence of its logits
    on a random sub-window of a training patch, seen in a window that is background (zeros) elsewhere,
    from its logits on the same voxels seen with the whole patch around them.

    Sliding-window inference sees each voxel in windows that hold more or less background, depending
    on where they fall (a crop to the foreground moves them all); instance norm takes its statistics
    from the whole window, so a briefly trained network answers differently in them, mostly by
    adding false positives along the foreground's edge. This term teaches it not to. The sub-window
    is, per axis, a multiple of ``divisor`` from half the patch up to one ``divisor`` short of it, at
    a random offset; the whole patch's answer is the target and gets no gradient from this term.

    ``net`` maps ``(B, C_in, X, Y, Z)`` to logits ``(B, C, X, Y, Z)`` or, in training mode with deep
    supervision, ``(B, H, C, X, Y, Z)`` (head 0 is the full-resolution one). The value is the mean
    KL divergence per voxel of the sub-window (and per region for region tables, whose outputs are
    independent sigmoids; across classes for class tables, whose outputs are a softmax): 0 when the
    two answers agree.
    """

    def __init__(self, regions: bool, divisor: int) -> None:
        super().__init__()
        self.regions = regions
        self.divisor = divisor

    def sub_window(self, shape: tuple[int, ...], generator: torch.Generator | None = None) -> tuple[slice, ...]:
        """A random sub-window of a patch of spatial ``shape`` (voxels), one slice per axis."""
        out = []
        for size in shape:
            sizes = [s for s in range(self.divisor, size, self.divisor) if 2 * s >= size] or [size]
            q = sizes[int(torch.randint(len(sizes), (1,), generator=generator))]
            start = int(torch.randint(size - q + 1, (1,), generator=generator))
            out.append(slice(start, start + q))
        return tuple(out)

    def forward(self, net: nn.Module, image: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """``image (B, C_in, X, Y, Z)`` and ``net``'s ``logits`` on it -> a scalar (see the class)."""
        window = (..., *self.sub_window(tuple(image.shape[2:])))
        padded = torch.zeros_like(image)
        padded[window] = image[window]
        inner, outer = net(padded), logits
        if inner.dim() == image.dim() + 1:  # deep-supervision heads: the full-resolution one
            inner, outer = inner[:, 0], outer[:, 0]
        inner, target = inner[window].float(), outer[window].detach().float()  # fp32 under autocast too
        soft = nn.functional.binary_cross_entropy_with_logits if self.regions else nn.functional.cross_entropy
        p = torch.sigmoid(target) if self.regions else torch.softmax(target, dim=1)
        return soft(inner, p) - soft(target, p)  # cross-entropy minus entropy: KL(target || inner)
