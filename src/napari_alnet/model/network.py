"""What the engine and training use of a segmentation network (``typing.Protocol``; no Qt, no engine).

A network family (AL-Net, or another registered with ``family.register_family``) provides an ``nn.Module`` with
these members; the engine never names a family's class. ``ForwardPasses`` is the part inference runs (a network,
or AL-Net's quantized int8 graph); ``ReadyModel`` what inference needs of a model ready to run
(``engine.segmenter.Segmenter``), so that the engine's modules can name it without importing each other.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import torch
from torch import nn

if TYPE_CHECKING:  # a description only: metadata imports the registry, which imports the networks
    from .metadata import ModelMetadata


@runtime_checkable
class NetworkConfig(Protocol):
    """A family's configuration (a frozen dataclass): it builds the network and is stored in weight files as JSON;
    its type has ``from_json(text)`` (``ValueError`` for unusable text)."""

    in_channels: int
    num_classes: int

    def to_json(self) -> str: ...


@runtime_checkable
class ForwardPasses(Protocol):
    """The forward passes inference runs: logits with an optional pooled context, and the features it pools."""

    config: NetworkConfig

    def __call__(self, x: torch.Tensor, pooled: torch.Tensor | None = None) -> torch.Tensor:
        """(N, num_classes, H, W) logits of normalized (N, C, H, W) input of any H, W (padded internally);
        ``pooled`` (N, C', 1, 1) replaces the network's own global average of ``deepest_features`` (tiles get
        the whole image's)."""
        ...

    def deepest_features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C', ceil(H / stride), ceil(W / stride)) features whose mean is the global context."""
        ...


@runtime_checkable
class SegmentationNetwork(ForwardPasses, Protocol):
    """A segmentation network (an ``nn.Module``): ``ForwardPasses`` plus its total ``stride`` (inputs are padded to
    a multiple of it; the engine tiles on a 32-pixel grid and refuses other strides), structural fusion for
    inference (``reparameterize``: in place, eval mode, BatchNorm folded; ``is_reparameterized``), the stages
    fine-tuning may freeze (``input_stages``: from the input side) and the last convolution (``output_layer``:
    negating it swaps what label 1 means)."""

    stride: int

    @property
    def is_reparameterized(self) -> bool: ...

    def reparameterize(self) -> SegmentationNetwork: ...

    def input_stages(self) -> Sequence[nn.Module]: ...

    def output_layer(self) -> nn.Conv2d: ...


@runtime_checkable
class ReadyModel(Protocol):
    """A model ready to run (``engine.segmenter.Segmenter``): its ``metadata``, ``device``, ``precision`` and the
    forward passes in that precision (``runner``)."""

    metadata: ModelMetadata
    device: torch.device
    precision: str

    @property
    def runner(self) -> ForwardPasses: ...


def is_network(obj: object) -> bool:
    """Whether ``obj`` is a segmentation network: an ``nn.Module`` with ``SegmentationNetwork``'s members."""
    return isinstance(obj, nn.Module) and isinstance(obj, SegmentationNetwork)
