"""Segmentation losses, built from config. Thin wrappers choosing and configuring MONAI's losses."""

from __future__ import annotations

import torch
from monai.losses import DeepSupervisionLoss, DiceCELoss, DiceFocalLoss
from torch import nn

from medseg.config import LossConfig
from medseg.labels import LabelTable


def build_loss(cfg: LossConfig, table: LabelTable) -> nn.Module:
    """The configured loss for ``table``'s output mode.

    Region tables (BraTS) use sigmoid outputs with one multi-hot target channel per region,
    ``target (B, R, X, Y, Z)``; class tables (CT organs) use softmax over mutually exclusive labels,
    ``target (B, 1, X, Y, Z)`` holding class indices. ``logits`` are ``(B, C, X, Y, Z)``, or
    ``(B, H, C, X, Y, Z)`` for networks with ``H`` deep-supervision heads (weighted by MONAI's
    :class:`DeepSupervisionLoss`).
    """
    regions = table.kind == "regions"
    weight = torch.tensor(cfg.class_weights, dtype=torch.float32) if cfg.class_weights else None
    common = {"sigmoid": regions, "softmax": not regions, "to_onehot_y": not regions, "weight": weight}
    if cfg.name == "dice_focal":
        loss: nn.Module = DiceFocalLoss(
            **common, gamma=cfg.gamma, lambda_dice=cfg.dice_weight, lambda_focal=cfg.other_weight
        )
    else:
        loss = DiceCELoss(**common, lambda_dice=cfg.dice_weight, lambda_ce=cfg.other_weight)
    return _HeadsLoss(loss)


class _HeadsLoss(nn.Module):
    """Apply ``loss`` to plain logits, or MONAI's deep-supervision weighting to stacked heads."""

    def __init__(self, loss: nn.Module) -> None:
        super().__init__()
        self.loss = loss
        self.deep = DeepSupervisionLoss(loss)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if logits.dim() == target.dim() + 1:
            return self.deep(list(torch.unbind(logits, dim=1)), target)
        return self.loss(logits, target)
