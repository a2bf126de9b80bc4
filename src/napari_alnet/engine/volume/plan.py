"""How a (Z, Y, X) volume is cut into blocks: whole YX planes when a plane fits the whole-image limit, else YX
tiles (multiples of the source chunks, so parallel writers never share a chunk)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...io.volumes import Volume, open_volume
from ...model.metadata import ModelMetadata
from ..segmenter import Segmenter
from ..tiling import STRIDE, WHOLE_IMAGE_PIXELS, ceil_to

#: Automatic blocks of whole planes hold about this many voxels (bz = this / plane, at least 1).
BLOCK_VOXELS = 4 * 2048 * 2048
#: Automatic blocks that cut YX planes are about this many pixels on a side (a multiple of the source chunks; less
#: when the whole-image limit is lowered: 3/4 of its side).
CUT_BLOCK = 1536


@dataclass(frozen=True)
class Block:
    """One block: its ``index`` (C order over the grid), grid ``position`` and (z, y, x) ``region``."""

    index: int
    position: tuple[int, int, int]
    region: tuple[slice, slice, slice]

    @property
    def bounds(self) -> tuple[int, int, int, int, int, int]:
        """(z0, z1, y0, y1, x0, x1)."""
        return tuple(v for s in self.region for v in (s.start, s.stop))  # type: ignore[return-value]

    @property
    def voxels(self) -> int:
        return int(np.prod([s.stop - s.start for s in self.region]))


@dataclass(frozen=True)
class BlockPlan:
    """How a (Z, Y, X) volume is cut: ``block`` shape, output ``chunks`` (each divides the block where the axis has
    several blocks), and whether blocks cut YX planes (then the per-slice context pass runs first)."""

    shape: tuple[int, int, int]
    block: tuple[int, int, int]
    chunks: tuple[int, int, int]

    @property
    def grid(self) -> tuple[int, int, int]:
        return tuple(-(-n // b) for n, b in zip(self.shape, self.block, strict=True))  # type: ignore[return-value]

    @property
    def cuts_planes(self) -> bool:
        return self.block[1] < self.shape[1] or self.block[2] < self.shape[2]

    def __len__(self) -> int:
        return int(np.prod(self.grid))

    def blocks(self) -> list[Block]:
        out = []
        for i, pos in enumerate(np.ndindex(*self.grid)):
            region = tuple(slice(p * b, min((p + 1) * b, n)) for p, b, n in zip(pos, self.block, self.shape,
                                                                                   strict=True))
            out.append(Block(i, tuple(int(p) for p in pos), region))  # type: ignore[arg-type]
        return out

    def index_of(self, position: tuple[int, ...]) -> int:
        return int(np.ravel_multi_index(position, self.grid))


def plan_blocks(shape: tuple[int, int, int], *, chunks: tuple[int, int, int] | None = None,
                block: tuple[int, int, int] | None = None, whole_pixels: int = WHOLE_IMAGE_PIXELS,
                can_cut: bool = True) -> BlockPlan:
    """The blocks of a (Z, Y, X) volume with source ``chunks``; ``block``: an explicit (Z, Y, X) block shape.

    Automatic: whole planes when the padded plane has at most ``whole_pixels`` pixels (or when ``can_cut`` is
    False: models that resize images for their network), ``BLOCK_VOXELS`` per block; else ``CUT_BLOCK`` tiles.
    Blocks are rounded to multiples of the source chunks where that keeps them near the intended size.
    """
    shape = tuple(int(s) for s in shape)  # type: ignore[assignment]
    chunks = tuple(max(1, min(int(c), n)) for c, n in zip(chunks or (1, *shape[1:]), shape, strict=True))
    if block is None:
        block = _auto_block(shape, chunks, whole_pixels, can_cut)
    else:
        if len(block) != 3 or any(int(b) < 1 for b in block):
            raise ValueError(f"block must be three positive sizes (Z, Y, X), got {tuple(block)}")
        block = tuple(min(int(b), n) for b, n in zip(block, shape, strict=True))
    plan_chunks = tuple(c if (b >= n or b % c == 0) else b for b, c, n in zip(block, chunks, shape, strict=True))
    plan = BlockPlan(shape, block, plan_chunks)  # type: ignore[arg-type]
    if plan.cuts_planes:
        if not can_cut:
            raise ValueError(f"block {block} cuts the {shape[1]} x {shape[2]} planes, but this model resizes "
                             "images for its network: blocks must hold whole YX planes (--block BZ Y X)")
        if min(block[1:]) < STRIDE:
            raise ValueError(f"blocks that cut YX planes must be at least {STRIDE} px on a side, got {block}")
    return plan


def _auto_block(shape: tuple[int, ...], chunks: tuple[int, ...], whole_pixels: int,
                can_cut: bool) -> tuple[int, int, int]:
    depth, height, width = shape
    if ceil_to(height) * ceil_to(width) <= whole_pixels or not can_cut:
        bz = max(1, min(depth, BLOCK_VOXELS // (height * width)))
        if chunks[0] <= bz:
            bz = bz // chunks[0] * chunks[0]
        return (bz, height, width)
    target = max(STRIDE, min(CUT_BLOCK, math.isqrt(whole_pixels) * 3 // 4))  # 1536 for the 2048^2 limit
    side = [min(n, max(c, target // c * c)) if c <= target else min(n, target)
            for c, n in zip(chunks[1:], shape[1:], strict=True)]
    bz = chunks[0] if chunks[0] <= 16 else 1
    return (min(bz, depth), side[0], side[1])


def plan_volume(model: Segmenter, source: Any, *, block: tuple[int, int, int] | None = None,
                whole_pixels: int = WHOLE_IMAGE_PIXELS) -> tuple[Volume, BlockPlan]:
    """The opened source and its block plan (for an estimate before a run: ``len(plan)`` blocks)."""
    volume = source if isinstance(source, Volume) else open_volume(source)
    return volume, plan_blocks(volume.shape, chunks=volume.chunks, block=block, whole_pixels=whole_pixels,
                               can_cut=can_cut(model.metadata, volume.shape))


def can_cut(metadata: ModelMetadata, shape: tuple[int, ...]) -> bool:
    """Whether blocks of a (Z, Y, X) ``shape`` may cut YX planes: not for models that resize images for their
    network (``metadata.network_shape``)."""
    plane = tuple(int(n) for n in shape[-2:])
    return metadata.network_shape(plane) == plane


#: The most voxels a block's watershed window may hold when the block shape is automatic: about 2.7 GB at the
#: split's ~80 bytes per window voxel (``benchmarks/watershed.py``).
WATERSHED_WINDOW_VOXELS = 32 * 1024 * 1024


def watershed_block(plan: BlockPlan, halo: tuple[int, int, int], *, can_cut: bool,
                    budget: int | None = None) -> tuple[int, int, int]:
    """The block shape for a watershed run: the automatic ``plan``'s block if its window (block + ``halo`` on each
    side) fits ``budget`` voxels, else the first that fits of whole-plane blocks of fewer slices, then (``can_cut``)
    YX tiles of 1024, 512 and 256 px of 16 down to 1 slice; the smallest of them if none fits. ``budget``: default
    ``WATERSHED_WINDOW_VOXELS``."""
    budget = WATERSHED_WINDOW_VOXELS if budget is None else budget
    shape = plan.shape
    whole = [(z, shape[1], shape[2]) for z in range(plan.block[0], 0, -1)]
    tiles = [(z, t, t) for t in (1024, 512, 256) for z in (16, 8, 4, 2, 1)] if can_cut else []
    candidates = [tuple(min(b, n) for b, n in zip(c, shape, strict=True)) for c in [plan.block, *whole, *tiles]]
    for block in candidates:
        if math.prod(min(n, b + 2 * h) for b, n, h in zip(block, shape, halo, strict=True)) <= budget:
            return block  # type: ignore[return-value]
    return candidates[-1]  # type: ignore[return-value]
