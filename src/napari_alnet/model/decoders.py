"""Decoders: the paper's asymmetric A-Decoder (eqs. 1-3) and a symmetric U-Decoder (ablation)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import ConvBNAct
from .context import resize


class ADecoder(nn.Module):
    """``out = C1(Flow + Fhigh)``, ``Flow = C1(C3(C3(F1+F2+F3+F4)))``, ``Fhigh = C1(Up(F5))``.

    F1..F4 (strides 2..16) are projected to ``width`` by 1x1 conv+BN and summed on the grid of stride
    ``grid_stride`` (2 or 1); the logits are upsampled to the input size at the end.
    """

    def __init__(self, skip_widths: tuple[int, ...], context_width: int, width: int, num_classes: int,
                 grid_stride: int) -> None:
        super().__init__()
        self.grid_stride = grid_stride
        self.project = nn.ModuleList([ConvBNAct(c, width, 1, act=False) for c in skip_widths])
        self.refine = nn.Sequential(ConvBNAct(width, width, 3), ConvBNAct(width, width, 3),
                                    ConvBNAct(width, width, 1, act=False))
        self.high = ConvBNAct(context_width, width, 1, act=False)
        self.classify = nn.Conv2d(width, num_classes, 1)

    def forward(self, skips: list[torch.Tensor], context: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        grid = (size[0] // self.grid_stride, size[1] // self.grid_stride)
        fused = sum(resize(proj(f), grid) for proj, f in zip(self.project, skips, strict=True))
        f_low = self.refine(fused)
        half = (context.shape[-2] * 2, context.shape[-1] * 2)
        if self.training:  # BatchNorm's batch statistics depend on the grid: the paper's order
            return resize(self.classify(f_low + self.high(resize(resize(context, half), grid))), size)
        # classify(Flow + Fhigh) = classify(Flow) + W·Fhigh, and the 1x1 conv(+BN) of Fhigh and W (no bias) are
        # per-pixel affine maps that commute with the bilinear upsamplings (whose weights sum to 1): Fhigh is reduced
        # to num_classes channels on the stride-32 grid and only those are upsampled. The same function up to float
        # rounding, -20 % CPU time per 512² image (docs/performance.md).
        f_high = F.conv2d(self.high(context), self.classify.weight)
        return resize(self.classify(f_low) + resize(resize(f_high, half), grid), size)


class UDecoder(nn.Module):
    """Symmetric U-Net decoder: at each level upsample x2, concatenate the skip, two 3x3 conv+BN+ReLU."""

    def __init__(self, skip_widths: tuple[int, ...], context_width: int, widths: tuple[int, ...],
                 num_classes: int) -> None:
        super().__init__()
        levels = []
        cin = context_width
        skips_deep_first = [*reversed(skip_widths), 0]
        for skip, width in zip(skips_deep_first, widths, strict=True):
            levels.append(nn.Sequential(ConvBNAct(cin + skip, width, 3), ConvBNAct(width, width, 3)))
            cin = width
        self.levels = nn.ModuleList(levels)
        self.classify = nn.Conv2d(cin, num_classes, 1)

    def forward(self, skips: list[torch.Tensor], context: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        x = context
        deep_first = [*reversed(skips), None]
        for skip, level in zip(deep_first, self.levels, strict=True):
            target = skip.shape[-2:] if skip is not None else size
            x = resize(x, tuple(target))
            if skip is not None:
                x = torch.cat([x, skip], dim=1)
            x = level(x)
        return self.classify(x)
