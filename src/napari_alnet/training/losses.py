"""Dice + BCE-with-logits loss (the paper's eqs. 4-6) with an optional ignore mask."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def dice_bce_loss(logits: torch.Tensor, target: torch.Tensor, ignore: torch.Tensor | None = None,
                  smooth: float = 1.0) -> torch.Tensor:
    """``L = L_Dice + L_BCE`` for binary logits (N, 1, H, W) and targets in [0, 1] (soft where interpolated).

    ``ignore`` (same shape, nonzero = ignored) removes pixels from both terms: they contribute neither to
    the BCE mean nor to the soft-Dice sums, so their gradient is exactly zero.
    """
    if logits.shape != target.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and target {tuple(target.shape)} differ in shape")
    target = target.to(logits.dtype)
    weight = torch.ones_like(logits) if ignore is None else (ignore == 0).to(logits.dtype)
    counted = weight.sum()
    bce = F.binary_cross_entropy_with_logits(logits, target, weight=weight, reduction="sum")
    bce = bce / counted.clamp_min(1.0)
    prob = torch.sigmoid(logits) * weight
    target = target * weight
    intersection = (prob * target).sum()
    dice = 1.0 - (2.0 * intersection + smooth) / (prob.sum() + target.sum() + smooth)
    return dice + bce
