"""Building blocks: conv+BN+ReLU and the re-parameterizable RepVGG block."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def fuse_conv_bn(
    weight: torch.Tensor, bias: torch.Tensor | None, bn: nn.BatchNorm2d
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold an eval-mode BatchNorm into the preceding convolution's weight and bias."""
    std = torch.sqrt(bn.running_var + bn.eps)
    scale = bn.weight / std
    fused_w = weight * scale.reshape(-1, 1, 1, 1)
    conv_b = bias if bias is not None else torch.zeros_like(bn.running_mean)
    fused_b = bn.bias + (conv_b - bn.running_mean) * scale
    return fused_w, fused_b


class ConvBNAct(nn.Module):
    """Convolution, BatchNorm and an optional ReLU; ``reparameterize`` folds the BN into the conv."""

    def __init__(self, cin: int, cout: int, kernel: int = 1, dilation: int = 1, act: bool = True) -> None:
        super().__init__()
        pad = dilation * (kernel // 2)
        self.conv = nn.Conv2d(cin, cout, kernel, padding=pad, dilation=dilation, bias=False)
        self.bn: nn.BatchNorm2d | None = nn.BatchNorm2d(cout)
        self.act = nn.ReLU(inplace=True) if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        return self.act(x)

    @torch.no_grad()
    def reparameterize(self) -> None:
        if self.bn is None:
            return
        w, b = fuse_conv_bn(self.conv.weight, self.conv.bias, self.bn)
        conv = self.conv
        fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, padding=conv.padding,
                          dilation=conv.dilation, bias=True).to(w.device, w.dtype)
        fused.weight.copy_(w)
        fused.bias.copy_(b)
        self.conv, self.bn = fused, None


class RepVGGBlock(nn.Module):
    """``ReLU(BN(conv3x3 x) + BN(conv1x1 x) + BN(x))``; one 3x3 conv with bias after ``reparameterize``.

    The identity branch exists only for stride 1 and equal input/output widths.
    """

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.cin, self.cout, self.stride = cin, cout, stride
        self.branch3 = nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout))
        self.branch1 = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, 0, bias=False), nn.BatchNorm2d(cout))
        self.identity = nn.BatchNorm2d(cin) if stride == 1 and cin == cout else None
        self.fused: nn.Conv2d | None = None
        self.act = nn.ReLU(inplace=True)

    @property
    def is_fused(self) -> bool:
        return self.fused is not None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused is not None:
            return self.act(self.fused(x))
        out = self.branch3(x) + self.branch1(x)
        if self.identity is not None:
            out = out + self.identity(x)
        return self.act(out)

    @torch.no_grad()
    def fused_kernel(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The equivalent 3x3 kernel and bias (branches BN-folded, 1x1 and identity padded to 3x3, summed)."""
        w3, b3 = fuse_conv_bn(self.branch3[0].weight, None, self.branch3[1])
        w1, b1 = fuse_conv_bn(self.branch1[0].weight, None, self.branch1[1])
        kernel = w3 + F.pad(w1, [1, 1, 1, 1])
        bias = b3 + b1
        if self.identity is not None:
            eye = torch.zeros_like(w3)
            idx = torch.arange(self.cin, device=w3.device)
            eye[idx, idx, 1, 1] = 1.0
            wi, bi = fuse_conv_bn(eye, None, self.identity)
            kernel, bias = kernel + wi, bias + bi
        return kernel, bias

    @torch.no_grad()
    def reparameterize(self) -> None:
        if self.fused is not None:
            return
        kernel, bias = self.fused_kernel()
        conv = nn.Conv2d(self.cin, self.cout, 3, self.stride, 1, bias=True).to(kernel.device, kernel.dtype)
        conv.weight.copy_(kernel)
        conv.bias.copy_(bias)
        self.fused = conv
        del self.branch3, self.branch1, self.identity
        self.identity = None
