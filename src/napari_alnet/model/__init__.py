"""The AL-Net network and the seam for other network families (PyTorch only; no Qt)."""

from .alnet import STRIDE, ALNet, count_parameters
from .blocks import ConvBNAct, RepVGGBlock, fuse_conv_bn
from .config import ALNetConfig
from .context import ASPP, LiteRASPP
from .decoders import ADecoder, UDecoder
from .encoder import RepVGGEncoder
from .family import (
    DEFAULT_FAMILY,
    Family,
    UnknownFamily,
    build_network,
    family_named,
    family_of,
    known_families,
    register_family,
    unregister_family,
)
from .network import ForwardPasses, NetworkConfig, ReadyModel, SegmentationNetwork, is_network

__all__ = [
           "ASPP",
           "DEFAULT_FAMILY",
           "STRIDE",
           "ADecoder",
           "ALNet",
           "ALNetConfig",
           "ConvBNAct",
           "Family",
           "ForwardPasses",
           "LiteRASPP",
           "NetworkConfig",
           "ReadyModel",
           "RepVGGBlock",
           "RepVGGEncoder",
           "SegmentationNetwork",
           "UDecoder",
           "UnknownFamily",
           "build_network",
           "count_parameters",
           "family_named",
           "family_of",
           "fuse_conv_bn",
           "is_network",
           "known_families",
           "register_family",
           "unregister_family",
]
