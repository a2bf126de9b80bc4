"""The AL-Net network: RepVGG encoder, context module, decoder; structural re-parameterization."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import ConvBNAct, RepVGGBlock
from .config import ALNetConfig
from .context import ASPP, LiteRASPP, NoContext
from .decoders import ADecoder, UDecoder
from .encoder import RepVGGEncoder

#: Inputs are padded to a multiple of the encoder's total stride.
STRIDE = 32


class ALNet(nn.Module):
    """AL-Net; ``forward`` returns logits of shape (N, num_classes, H, W) for any H, W (the ``alnet`` family of
    ``family``: a ``network.SegmentationNetwork``)."""

    #: Total stride of the encoder: inputs are padded to a multiple of it.
    stride = STRIDE

    def __init__(self, config: ALNetConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or ALNetConfig()
        self.encoder = RepVGGEncoder(config.in_channels, config.stage_depths, config.stage_widths)
        deep = config.stage_widths[-1]
        if config.context == "lraspp":
            self.context = LiteRASPP(deep, config.context_width)
        elif config.context == "aspp":
            self.context = ASPP(deep, config.context_width, config.aspp_rates)
        else:
            self.context = NoContext(deep, config.context_width)
        skips = config.stage_widths[:4]
        if config.decoder == "asymmetric":
            self.decoder = ADecoder(skips, config.context_width, config.decoder_width, config.num_classes,
                                    config.decoder_stride)
        else:
            self.decoder = UDecoder(skips, config.context_width, config.unet_widths, config.num_classes)

    def forward(self, x: torch.Tensor, pooled: torch.Tensor | None = None) -> torch.Tensor:
        """Logits for ``x``; ``pooled`` (N, C5, 1, 1) overrides the context module's global average pool of
        the stride-32 features (tiled inference computes it over the whole image, see ``deepest_features``)."""
        h, w = x.shape[-2:]
        x = pad_to_stride(x)
        *skips, deepest = self.encoder(x)
        logits = self.decoder(skips, self.context(deepest, pooled), tuple(x.shape[-2:]))
        return logits[..., :h, :w]

    def deepest_features(self, x: torch.Tensor) -> torch.Tensor:
        """The stride-32 encoder features of ``x`` (padded to a multiple of 32) that the context module pools."""
        return self.encoder(pad_to_stride(x))[-1]

    def input_stages(self) -> list[nn.Module]:
        """The encoder's five stages from the input side (what fine-tuning may freeze)."""
        return list(self.encoder.stages)

    def output_layer(self) -> nn.Conv2d:
        """The decoder's classifier: the last convolution before the logits."""
        return self.decoder.classify

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


def pad_to_stride(x: torch.Tensor) -> torch.Tensor:
    """Replicate-pad the bottom/right of ``x`` to a multiple of ``STRIDE``."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % STRIDE, (-w) % STRIDE
    return F.pad(x, [0, pw, 0, ph], mode="replicate") if ph or pw else x


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
