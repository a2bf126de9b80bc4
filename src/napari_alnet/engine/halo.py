"""Network passes on parts of one large plane, for blocks that cut YX planes (see ``blockwise``).

A plane too large to run whole is split into blocks; each block is run in a *window*: the block plus a halo of
``tiling.CONTEXT_MARGIN`` pixels, its origin on the 32-pixel grid of the plane padded to a multiple of 32 (as the
whole image is), clipped to the padded plane. The network sees, in every window, the pooled global context and the
normalization bounds of the **whole** plane, computed once per slice beforehand (``plane_context``: the strided
bounds ``Normalization.bounds`` takes and the sum of stride-32 features over the cores of ``tiling.plan_tiles``,
as ``inference._predict_tiled``'s pass 1 does), so the block's probabilities match whole-plane inference. Edge
padding at the bottom/right border is the whole image's (``inference._pad``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ..model.metadata import ModelMetadata
from ..model.network import ReadyModel
from .inference import Context
from .normalization import bounds_pixels, to_channels
from .tiling import CONTEXT_MARGIN, STRIDE, batch_limit, ceil_to, plan_tiles

#: Reads a (rows, columns) region of one slice: ``read(ys, xs)`` -> (h, w) or (h, w, C) raw pixels.
RegionReader = Callable[[slice, slice], np.ndarray]


def make_context(segmenter: ReadyModel, tta: bool = False) -> Context:
    """The forward passes of ``segmenter``'s network (``inference.Context``) on its device, in its precision."""
    return Context(segmenter.runner, segmenter.device, tta, segmenter.precision)


@dataclass(frozen=True)
class PlaneContext:
    """What a window of a slice needs from the whole slice: normalization ``bounds`` and the pooled vector
    (``pooled``: (transforms, 1, C, 1, 1) float32, as ``Context.probs`` takes it)."""

    bounds: tuple[float, float]
    pooled: torch.Tensor

    def to_row(self) -> np.ndarray:
        """(2 + transforms * C,) float32: how it is stored (one row per slice)."""
        return np.concatenate([np.asarray(self.bounds, np.float32), self.pooled.numpy().ravel()]).astype(np.float32)

    @classmethod
    def from_row(cls, row: np.ndarray, transforms: int) -> PlaneContext:
        row = np.asarray(row, np.float32)
        pooled = torch.from_numpy(row[2:].copy()).reshape(transforms, 1, -1, 1, 1)
        return cls((float(row[0]), float(row[1])), pooled)


def context_width(ctx: Context) -> int:
    """Length of a ``PlaneContext`` row for this network and TTA setting."""
    with torch.inference_mode():
        feats = ctx.net.deepest_features(torch.zeros(1, ctx.net.config.in_channels, STRIDE, STRIDE, device=ctx.dev))
    return 2 + len(ctx.transforms) * int(feats.shape[1])


def window_input(read: RegionReader, shape: tuple[int, int], window: tuple[slice, slice],
                 bounds: tuple[float, float], meta: ModelMetadata) -> np.ndarray:
    """Normalized (C, h, w) float32 input of ``window`` (padded-plane coordinates, within ``ceil_to(shape)``):
    the raw pixels inside the plane, normalized with the whole slice's ``bounds``, edge-padded past its
    bottom/right border exactly as the whole padded plane is."""
    ys, xs = window
    raw = read(slice(ys.start, min(ys.stop, shape[0])), slice(xs.start, min(xs.stop, shape[1])))
    x = meta.normalization.apply(to_channels(raw, meta.in_channels), bounds)
    pad_y, pad_x = ys.stop - ys.start - x.shape[1], xs.stop - xs.start - x.shape[2]
    return np.pad(x, ((0, 0), (0, pad_y), (0, pad_x)), mode="edge") if pad_y or pad_x else x


def plane_context(ctx: Context, meta: ModelMetadata, read: RegionReader, shape: tuple[int, int], *, tile: int,
                  overlap: int = 64, batch_size: int = 4) -> PlaneContext:
    """Normalization bounds and pooled context of one whole slice of (Y, X) ``shape``, read tile by tile (the
    slice itself is read once, for the bounds, as the in-memory engine computes them)."""
    plane = read(slice(0, shape[0]), slice(0, shape[1]))
    bounds = meta.normalization.bounds(bounds_pixels(plane))

    def whole(ys: slice, xs: slice) -> np.ndarray:
        return plane[ys, xs]

    tiles = plan_tiles(shape, tile, overlap)
    per_batch = batch_limit((tile, tile), batch_size)
    sums = None
    for i in range(0, len(tiles), per_batch):
        batch = tiles[i:i + per_batch]
        x = np.stack([window_input(whole, shape, t.window, bounds, meta) for t in batch])
        part = ctx.core_sums(x, batch)
        sums = part if sums is None else sums + part
    cells = (ceil_to(shape[0]) // STRIDE) * (ceil_to(shape[1]) // STRIDE)
    return PlaneContext(bounds, sums / cells)


def halo_window(block: tuple[slice, slice], shape: tuple[int, int]) -> tuple[slice, slice]:
    """The window a block of a (Y, X) plane runs in: the block plus ``CONTEXT_MARGIN``, on the 32-pixel grid,
    clipped to the padded plane."""
    out = []
    for s, n in zip(block, shape, strict=True):
        start = max(0, (s.start - CONTEXT_MARGIN) // STRIDE * STRIDE)
        stop = min(ceil_to(n), ceil_to(s.stop + CONTEXT_MARGIN))
        out.append(slice(start, stop))
    return out[0], out[1]


def block_probabilities(ctx: Context, meta: ModelMetadata, read: RegionReader, shape: tuple[int, int],
                        block: tuple[slice, slice], context: PlaneContext) -> np.ndarray:
    """(h, w) float32 probabilities of ``block`` (plane coordinates) of one slice, run in its halo window with
    the slice's ``context``."""
    window = halo_window(block, shape)
    x = window_input(read, shape, window, context.bounds, meta)
    probs = ctx.probs(x[None], context.pooled)[0]
    ys, xs = block
    return probs[ys.start - window[0].start: ys.stop - window[0].start,
                 xs.start - window[1].start: xs.stop - window[1].start]
