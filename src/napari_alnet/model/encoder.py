"""RepVGG-A1-style encoder: five stages of RepVGG blocks, the first of each with stride 2."""

from __future__ import annotations

import torch
from torch import nn

from .blocks import RepVGGBlock


class RepVGGEncoder(nn.Module):
    """Returns the outputs of all five stages (strides 2, 4, 8, 16, 32)."""

    def __init__(self, in_channels: int, depths: tuple[int, ...], widths: tuple[int, ...]) -> None:
        super().__init__()
        stages = []
        cin = in_channels
        for depth, width in zip(depths, widths, strict=True):
            blocks = [RepVGGBlock(cin, width, stride=2)]
            blocks += [RepVGGBlock(width, width, stride=1) for _ in range(depth - 1)]
            stages.append(nn.Sequential(*blocks))
            cin = width
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features
