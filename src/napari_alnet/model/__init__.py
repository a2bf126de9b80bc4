"""The AL-Net network (PyTorch only; no Qt)."""

from .alnet import STRIDE, ALNet, count_parameters
from .blocks import ConvBNAct, RepVGGBlock, fuse_conv_bn
from .config import ALNetConfig
from .context import ASPP, LiteRASPP
from .decoders import ADecoder, UDecoder
from .encoder import RepVGGEncoder

__all__ = [
           "ASPP",
           "STRIDE",
           "ADecoder",
           "ALNet",
           "ALNetConfig",
           "ConvBNAct",
           "LiteRASPP",
           "RepVGGBlock",
           "RepVGGEncoder",
           "UDecoder",
           "count_parameters",
           "fuse_conv_bn",
]
