"""Context modules on the stride-32 features: Lite R-ASPP (the paper), ASPP and none (ablations)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import ConvBNAct


class LiteRASPP(nn.Module):
    """1x1 conv+BN+ReLU branch multiplied by an attention branch (GAP -> 1x1 conv -> hard-sigmoid)."""

    def __init__(self, cin: int, width: int) -> None:
        super().__init__()
        self.features = ConvBNAct(cin, width, 1)
        self.attention = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(cin, width, 1), nn.Hardsigmoid())

    def forward(self, x: torch.Tensor, pooled: torch.Tensor | None = None) -> torch.Tensor:
        """``pooled`` (N, C, 1, 1) replaces the global average of ``x`` (tiled inference passes the image's)."""
        pooled = self.attention[0](x) if pooled is None else pooled
        return self.features(x) * self.attention[2](self.attention[1](pooled))


class ASPP(nn.Module):
    """DeepLabV3 ASPP: 1x1 branch, atrous 3x3 branches, image pooling; concatenated and projected."""

    def __init__(self, cin: int, width: int, rates: tuple[int, ...]) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            [ConvBNAct(cin, width, 1)] + [ConvBNAct(cin, width, 3, dilation=r) for r in rates]
        )
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(cin, width, 1), nn.ReLU(inplace=True))
        self.project = ConvBNAct(width * (len(rates) + 2), width, 1)

    def forward(self, x: torch.Tensor, pooled: torch.Tensor | None = None) -> torch.Tensor:
        """``pooled`` (N, C, 1, 1) replaces the global average of ``x`` (tiled inference passes the image's)."""
        outs = [branch(x) for branch in self.branches]
        pooled = self.pool[0](x) if pooled is None else pooled
        outs.append(self.pool[2](self.pool[1](pooled)).expand(-1, -1, x.shape[-2], x.shape[-1]))
        return self.project(torch.cat(outs, dim=1))


class NoContext(nn.Module):
    """No context module (the paper's "baseline"): a 1x1 conv+BN+ReLU that only matches the decoder's width."""

    def __init__(self, cin: int, width: int) -> None:
        super().__init__()
        self.project = ConvBNAct(cin, width, 1)

    def forward(self, x: torch.Tensor, pooled: torch.Tensor | None = None) -> torch.Tensor:
        """``pooled`` is accepted for a uniform interface and ignored: nothing here is global."""
        return self.project(x)


def resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize (no-op when the size already matches)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)
