"""AL-Net's forward pass in two parts around the pooled context, so a tiled plane runs its encoder once.

In eval mode the paper's network (Lite R-ASPP context, A-Decoder) computes
``logits = Up(classify(F_low) + Up(W_c·high(features(F5) ⊙ attention(pooled))))``: the pooled vector only scales
the context branch on the stride-32 grid. ``encode`` runs everything that does not depend on it — the encoder,
``classify(F_low)`` on the decoder's grid (``num_classes`` channels), ``features(F5)`` and F5 itself (whose mean
is the pooled vector); ``finish`` adds the context branch once the whole plane's pooled vector is known. Both parts
are ``ADecoder.forward``'s eval order (decoders.py), so ``finish(encode(x), pooled)`` is ``net(x, pooled)`` up to
float rounding. Other networks (ASPP, U-Decoder, int8 graphs, other families) are not ``splittable``.

Only the encoder needs a tile's whole context margin (stride-16 and -32 features see ~224 px); the decoder's
stride-2 work (projections, upsampling, two 3x3 convolutions) reaches a few pixels, so ``encode`` runs it only on
a ``crop`` of each tile — its core plus ``DECODER_HALO`` — and ``finish`` likewise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..model import ADecoder, ALNet, LiteRASPP
from ..model.context import resize

#: Pixels around a tile's core over which the decoder runs (a multiple of 32). Bilinear upsampling from the
#: stride-16/32 maps and the stride-2 3x3 convolutions reach < 32 px: beyond that the crop equals the whole tile.
DECODER_HALO = 32

#: (y0, y1, x0, x1) of a tile in its own pixels, each a multiple of 32.
Crop = tuple[int, int, int, int]


@dataclass(frozen=True)
class Encoded:
    """The pooled-independent part of a batch: ``low`` (N, classes, Y/g, X/g) logits of F_low on the decoder's
    grid (stride g), ``features`` (N, C, Y/32, X/32) the context module's features branch, ``deepest`` (N, C5,
    Y/32, X/32) the stride-32 encoder features (whose mean over a plane is its pooled vector)."""

    low: torch.Tensor
    features: torch.Tensor
    deepest: torch.Tensor


def splittable(net: object) -> bool:
    """Whether ``net`` is an AL-Net in eval mode with the paper's Lite R-ASPP and A-Decoder."""
    return (isinstance(net, ALNet) and not net.training and isinstance(net.context, LiteRASPP)
            and isinstance(net.decoder, ADecoder))


def grid_stride(net: ALNet) -> int:
    """Stride of the A-Decoder's grid (where ``Encoded.low`` lives)."""
    return net.decoder.grid_stride


def encode(net: ALNet, x: torch.Tensor, crops: Sequence[Crop | None] | None = None) -> list[Encoded]:
    """The pooled-independent part of ``net(x)`` for each image of a (N, C, Y, X) batch padded to a multiple of
    32: ``low`` over its crop (``None``: the whole image), ``features`` and ``deepest`` over the whole image."""
    *skips, deepest = net.encoder(x)
    features = net.context.features(deepest)
    out = []
    for i, crop in enumerate(crops or [None] * len(x)):
        y0, y1, x0, x1 = crop or (0, x.shape[-2], 0, x.shape[-1])
        parts = []
        for f in skips:
            s = x.shape[-1] // f.shape[-1]
            parts.append(f[i:i + 1, :, y0 // s:y1 // s, x0 // s:x1 // s])
        out.append(Encoded(_low(net.decoder, parts, (y1 - y0, x1 - x0)), features[i:i + 1], deepest[i:i + 1]))
    return out


def _low(dec: ADecoder, skips: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
    """classify(F_low) of ``skips`` (strides 2..16) for an input of padded ``size``, on the decoder's grid."""
    grid = (size[0] // dec.grid_stride, size[1] // dec.grid_stride)
    fused = sum(resize(proj(f), grid) for proj, f in zip(dec.project, skips, strict=True))
    return dec.classify(dec.refine(fused))


def finish(net: ALNet, low: torch.Tensor, features: torch.Tensor, pooled: torch.Tensor,
           size: tuple[int, int]) -> torch.Tensor:
    """(N, classes, Y, X) logits from ``encode``'s ``low`` and ``features`` and the (N, C5, 1, 1) ``pooled``
    vector, for inputs of padded ``size``."""
    dec, attention = net.decoder, net.context.attention
    context = features * attention[2](attention[1](pooled))
    f_high = F.conv2d(dec.high(context), dec.classify.weight)
    half = (f_high.shape[-2] * 2, f_high.shape[-1] * 2)
    return resize(low + resize(resize(f_high, half), tuple(low.shape[-2:])), size)
