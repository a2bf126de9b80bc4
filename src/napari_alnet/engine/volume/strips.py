"""Whole planes through AL-Net in row strips: the same logits as one whole-plane forward, in less memory traffic.

A 2048² plane's high-resolution activations (the decoder's stride-2 grid: 1024² x 32 channels, several of them;
the first encoder stages) are far larger than the CPU's caches, so a whole-plane forward costs about twice as much
per megapixel as a 512² one. The decoder's work at those resolutions reaches only a few pixels, so
``StripedNetwork`` runs it in strips of ``STRIP_ROWS`` rows plus a halo (its projections, upsampling and 3x3
convolutions: ``single_pass._low`` over each strip plus ``DECODER_HALO``; optionally the first ``stages`` encoder
stages as well), and the rest (the encoder, the context module, the final upsampling of a ``num_classes``-channel
map) whole. Strip edges lie on the 32-pixel grid, so every bilinear weight and convolution window of a kept row is
the whole plane's: in bf16 the logits are equal bit for bit on the CPUs tested (``tests/test_volumes_strips.py``
checks it on the one it runs on; ``benchmarks/volume.py strips`` measures it on real planes). Used only for
whole-plane blocks of the paper's network in torch bf16 (``striped``); fp32 (see ``STRIPED_PRECISIONS``), tiles,
int8 graphs and other networks run as before.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ...model.alnet import STRIDE, pad_to_stride
from ...model.context import resize
from ...model.metadata import ModelMetadata
from ...model.network import ForwardPasses, ReadyModel
from ..single_pass import DECODER_HALO, _low, splittable

#: Rows per strip (a multiple of 32); planes no taller than two strips run whole.
STRIP_ROWS = 256
#: Encoder stages run in strips by default (their 3x3 convolutions reach ``encoder_halo`` pixels). None: striping
#: the first two as well was slower in every interleaved run (assembling their 1024² x 48 outputs costs ~0.1 s
#: per 2048² plane; ``benchmarks/volume.py strips --variants 256:2``).
ENCODER_STAGES = 0
#: Precisions whose strips give the whole plane's bits. Not fp32: with 2 torch threads oneDNN's fp32 kernels
#: split their work by the input's size, so a strip's logits differ from the whole plane's by ~1e-6 (1 thread:
#: equal); fp32 planes therefore keep one whole-plane forward.
STRIPED_PRECISIONS = ("bf16",)


@dataclass(frozen=True)
class StripedModel:
    """A ``ReadyModel`` whose ``runner`` is a ``StripedNetwork`` of another's network."""

    metadata: ModelMetadata
    device: torch.device
    precision: str
    runner: ForwardPasses


def striped(model: ReadyModel, *, rows: int = STRIP_ROWS, stages: int = ENCODER_STAGES) -> ReadyModel:
    """``model`` with its network run in row strips where that gives the same bits (the paper's AL-Net in torch
    bf16 on a CPU); else ``model`` itself."""
    net = model.runner
    if model.device.type != "cpu" or model.precision not in STRIPED_PRECISIONS or not splittable(net):
        return model
    return StripedModel(model.metadata, model.device, model.precision, StripedNetwork(net, rows=rows, stages=stages))


def encoder_halo(net, stages: int) -> int:
    """Input pixels the first ``stages`` encoder stages reach beyond a strip (3x3 convolutions: one pixel of the
    grid each reads), rounded up to the 32-pixel grid."""
    reach, stride = 0, 1
    for stage in net.encoder.stages[:stages]:
        reach += stride  # the first block's stride-2 convolution reads its input grid
        stride *= 2
        reach += stride * (len(stage) - 1)
    return -(-reach // STRIDE) * STRIDE


class StripedNetwork:
    """``net``'s forward pass (``ForwardPasses``) with its high-resolution parts in strips of ``rows`` rows."""

    def __init__(self, net, *, rows: int = STRIP_ROWS, stages: int = ENCODER_STAGES) -> None:
        if rows % STRIDE or rows <= 0:
            raise ValueError(f"rows must be a positive multiple of {STRIDE}, got {rows}")
        self.net, self.rows, self.stages = net, rows, stages
        self.config = net.config
        self.halo = encoder_halo(net, stages)

    def deepest_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.deepest_features(x)

    def __call__(self, x: torch.Tensor, pooled: torch.Tensor | None = None) -> torch.Tensor:
        h, w = x.shape[-2:]
        x = pad_to_stride(x)
        if x.shape[-2] <= 2 * self.rows:
            return self.net(x, pooled)[..., :h, :w]
        *skips, deepest = self._encode(x)
        dec = self.net.decoder
        context = self.net.context(deepest, pooled)
        f_high = F.conv2d(dec.high(context), dec.classify.weight)  # ADecoder's eval order
        low = torch.cat(list(self._low_strips(skips, x.shape[-2:])), 2)
        half = (f_high.shape[-2] * 2, f_high.shape[-1] * 2)
        logits = resize(low + resize(resize(f_high, half), tuple(low.shape[-2:])), tuple(x.shape[-2:]))
        return logits[..., :h, :w]

    def _spans(self, height: int, halo: int) -> Iterator[tuple[int, int, int, int]]:
        """(core start, core stop, window start, window stop) rows of each strip."""
        for r0 in range(0, height, self.rows):
            r1 = min(height, r0 + self.rows)
            yield r0, r1, max(0, r0 - halo), min(height, r1 + halo)

    def _encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The five stages' outputs: the first ``stages`` strip by strip, the others whole."""
        stages = self.net.encoder.stages
        parts: list[list[torch.Tensor]] = [[] for _ in range(self.stages)]
        for r0, r1, a, b in self._spans(x.shape[-2], self.halo):
            y = x[:, :, a:b]
            for i in range(self.stages):
                y = stages[i](y)
                s = 2 ** (i + 1)
                parts[i].append(y[:, :, (r0 - a) // s:(r1 - a) // s])
        features = [torch.cat(p, 2) for p in parts]
        y = features[-1] if features else x
        for stage in stages[self.stages:]:
            y = stage(y)
            features.append(y)
        return features

    def _low_strips(self, skips: list[torch.Tensor], size: tuple[int, int]) -> Iterator[torch.Tensor]:
        """classify(F_low) on the decoder's grid, strip by strip (each over its core plus ``DECODER_HALO``)."""
        dec = self.net.decoder
        g = dec.grid_stride
        for r0, r1, a, b in self._spans(size[0], DECODER_HALO):
            parts = [f[:, :, a // (size[0] // f.shape[-2]):b // (size[0] // f.shape[-2])] for f in skips]
            yield _low(dec, parts, (b - a, size[1]))[:, :, (r0 - a) // g:(r1 - a) // g]
