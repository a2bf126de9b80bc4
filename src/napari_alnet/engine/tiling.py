"""Overlapping tiles on AL-Net's stride-32 grid: positions and cores (no torch).

Every tile starts on a multiple of 32 inside the image padded to a multiple of 32 (as whole-image inference pads
it), so its stride-32 features line up with the whole image's. AL-Net's receptive field is wide: outputs and
features within ``CONTEXT_MARGIN`` pixels of a tile edge inside the image differ from whole-image inference
(zero padding instead of image), so that margin is discarded. The remaining *valid* regions of neighbouring tiles
overlap by ``overlap`` pixels. Each tile owns a *core* inside its valid region, at least ``CONTEXT_MARGIN +
overlap / 2`` from its inner edges (the cores partition the padded image on the 32-pixel grid): a tiled prediction
takes each pixel from the tile whose core holds it, and the image's pooled context vector is the mean of the
tiles' core features.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise

from ..model import STRIDE

#: ``tile=None``: images up to this many (padded) pixels run whole (about 1 GB peak RSS on CPU), larger ones in
#: tiles of ``DEFAULT_TILE``; also the most pixels per forward batch.
WHOLE_IMAGE_PIXELS = 2048 * 2048
DEFAULT_TILE = 1536
#: Pixels discarded at each tile edge inside the image (measured: beyond 224 px the error is < 1e-4).
CONTEXT_MARGIN = 224


def ceil_to(n: int, multiple: int = STRIDE) -> int:
    return -(-n // multiple) * multiple


@dataclass(frozen=True)
class Tile:
    """A window of ``size`` at (``y``, ``x``) of the padded image; ``core`` = the pixels whose features it
    contributes to the pooled vector (y0, y1, x0, x1, absolute, on the 32-pixel grid); ``edges`` = whether its
    (top, bottom, left, right) edge lies inside the image (and so carries a discarded margin)."""

    y: int
    x: int
    size: tuple[int, int]
    core: tuple[int, int, int, int]
    edges: tuple[bool, bool, bool, bool]

    @property
    def window(self) -> tuple[slice, slice]:
        return slice(self.y, self.y + self.size[0]), slice(self.x, self.x + self.size[1])

    def core_cells(self) -> tuple[slice, slice]:
        """The core as a slice of this tile's stride-32 feature map."""
        y0, y1, x0, x1 = self.core
        return (slice((y0 - self.y) // STRIDE, (y1 - self.y) // STRIDE),
                slice((x0 - self.x) // STRIDE, (x1 - self.x) // STRIDE))


def check_tile(tile: int, overlap: int = 64) -> int:
    """``tile`` if it is a usable tile size (a multiple of 32, at least ``min_tile(overlap)``), else ``ValueError``."""
    if tile < STRIDE or tile % STRIDE:
        raise ValueError(f"tile size must be a positive multiple of {STRIDE}, got {tile}")
    check_overlap(tile, overlap)
    return tile


def choose_tile(shape: tuple[int, int], tile: int | None) -> int | None:
    """The tile size to use for a (Y, X) image, or ``None`` to run it whole."""
    padded = (ceil_to(shape[0]), ceil_to(shape[1]))
    if tile is None:
        return None if padded[0] * padded[1] <= WHOLE_IMAGE_PIXELS else DEFAULT_TILE
    if tile < STRIDE or tile % STRIDE:
        raise ValueError(f"tile size must be a positive multiple of {STRIDE}, got {tile}")
    return None if max(padded) <= tile else tile


def batch_limit(shape: tuple[int, int], batch_size: int) -> int:
    """Images of (padded) ``shape`` per forward pass: ``batch_size``, capped at ``WHOLE_IMAGE_PIXELS`` in all."""
    return max(1, min(batch_size, WHOLE_IMAGE_PIXELS // (ceil_to(shape[0]) * ceil_to(shape[1]))))


def min_tile(overlap: int) -> int:
    """The smallest tile that leaves room for the context margins and ``overlap``."""
    return 2 * CONTEXT_MARGIN + ceil_to(overlap) + STRIDE


def check_overlap(tile: int, overlap: int) -> int:
    """``overlap`` rounded up to the 32-pixel grid; ``ValueError`` when ``tile`` is too small for it."""
    if overlap < 0:
        raise ValueError(f"overlap must be >= 0, got {overlap}")
    if tile < min_tile(overlap):
        raise ValueError(f"tile size {tile} is too small: AL-Net's context reaches about {CONTEXT_MARGIN} px, so "
                         f"with overlap {overlap} tiles must be at least {min_tile(overlap)} px "
                         "(or leave the tile size automatic)")
    return ceil_to(overlap)


def balanced(length: int, tile: int, overlap: int) -> int:
    """The smallest tile (a multiple of 32, at most ``tile``) that covers a padded axis of ``length`` in as few
    tiles as ``tile`` does: each tile's ``2 * CONTEXT_MARGIN + overlap`` of shared context is paid once per tile,
    so evening the tiles out saves the encoder work a last, mostly overlapping tile would repeat."""
    shared = 2 * CONTEXT_MARGIN + overlap
    count = -(-(length - tile) // (tile - shared)) + 1
    return min(tile, ceil_to(-(-(length + (count - 1) * shared) // count)))


def _axis(length: int, tile: int, overlap: int) -> list[tuple[int, int, int, int]]:
    """(origin, size, core start, core end) along one padded axis of ``length`` (a multiple of 32), in tiles of at
    most ``tile`` (``balanced``)."""
    if length <= tile:
        return [(0, length, 0, length)]
    tile = balanced(length, tile, overlap)
    step = tile - 2 * CONTEXT_MARGIN - overlap
    origins = [*range(0, length - tile, step), length - tile]
    bounds = [0]
    for prev, nxt in pairwise(origins):
        valid_start, valid_end = nxt + CONTEXT_MARGIN, prev + tile - CONTEXT_MARGIN
        bounds.append((valid_start + valid_end) // 2 // STRIDE * STRIDE)
    bounds.append(length)
    return [(o, tile, bounds[i], bounds[i + 1]) for i, o in enumerate(origins)]


def plan_tiles(shape: tuple[int, int], tile: int, overlap: int) -> list[Tile]:
    """Tiles covering a (Y, X) image padded to a multiple of 32."""
    overlap = check_overlap(tile, overlap)
    ys = _axis(ceil_to(shape[0]), tile, overlap)
    xs = _axis(ceil_to(shape[1]), tile, overlap)
    tiles = []
    for iy, (y, h, cy0, cy1) in enumerate(ys):
        for ix, (x, w, cx0, cx1) in enumerate(xs):
            edges = (iy > 0, iy < len(ys) - 1, ix > 0, ix < len(xs) - 1)
            tiles.append(Tile(y, x, (h, w), (cy0, cy1, cx0, cx1), edges))
    return tiles
