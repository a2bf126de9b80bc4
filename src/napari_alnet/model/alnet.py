"""The AL-Net network: RepVGG encoder, context module, decoder; structural re-parameterization."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import ConvBNAct, RepVGGBlock
from .config import ALNetConfig
from .context import ASPP, LiteRASPP
from .decoders import ADecoder, UDecoder
from .encoder import RepVGGEncoder

#: Inputs are padded to a multiple of the encoder's total stride.
STRIDE = 32


class ALNet(nn.Module):
    """AL-Net; ``forward`` returns logits of shape (N, num_classes, H, W) for any H, W."""

    def __init__(self, config: ALNetConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or ALNetConfig()
        self.encoder = RepVGGEncoder(config.in_channels, config.stage_depths, config.stage_widths)
        deep = config.stage_widths[-1]
        if config.context == "lraspp":
            self.context = LiteRASPP(deep, config.context_width)
        else:
            self.context = ASPP(deep, config.context_width, config.aspp_rates)
        skips = config.stage_widths[:4]
        if config.decoder == "asymmetric":
            self.decoder = ADecoder(skips, config.context_width, config.decoder_width, config.num_classes,
                                    config.decoder_stride)
        else:
            self.decoder = UDecoder(skips, config.context_width, config.unet_widths, config.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        ph, pw = (-h) % STRIDE, (-w) % STRIDE
        if ph or pw:
            x = F.pad(x, [0, pw, 0, ph], mode="replicate")
        *skips, deepest = self.encoder(x)
        logits = self.decoder(skips, self.context(deepest), tuple(x.shape[-2:]))
        return logits[..., :h, :w]

    @property
    def is_reparameterized(self) -> bool:
        return not any(isinstance(m, nn.BatchNorm2d) for m in self.modules())

    @torch.no_grad()
    def reparameterize(self) -> ALNet:
        """Fold every RepVGG block and every conv+BN into single convolutions (in place); eval mode."""
        self.eval()
        for module in list(self.modules()):
            if isinstance(module, (RepVGGBlock, ConvBNAct)):
                module.reparameterize()
        return self


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
