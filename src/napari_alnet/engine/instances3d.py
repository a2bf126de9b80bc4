"""Instance labels of a volume cut into blocks, consistent across block faces (numpy/scipy only, no I/O).

Each block is labelled on its own (``local_labels``: connected components of foreground, or of background for
``objects='background'``, face-connected; in 3D, or slice by slice in 2D), ids 1..n local to the block. Blocks are
then given disjoint id ranges (``offsets``), the voxels that face each other across every block face are paired
(``face_pairs``: the union-find edges, as dask-image's ``ndmeasure.label`` and cellpose's distributed
segmentation merge labels across block faces), and ``merge`` turns all blocks' ids into final ones: the connected
components of the pairing graph, objects under ``min_size`` voxels (summed over blocks) dropped, numbered 1..N in
the order of their first voxel in block order, uint32 (uint64 beyond 2**32 - 1 objects). For blocks that hold
whole planes in 2D mode this numbering is exactly ``postprocess.instance_labels`` of the whole stack.

With the watershed split, each block is split in its window (the block plus a halo, ``watershed_window``) from the
mask of the window (``split_block``: ``postprocess.split_objects`` in 3D, or per slice); the block keeps its core
(``core_ids``) and records what its window's watershed makes of the plane just beyond each inner face
(``ghost_plane``). Ids on the two sides of a face are then paired only where the two watersheds agree that they are
one object (``face_votes``: the majority over the face), not merely where they touch. When every object that
reaches into a block lies inside its window, each block's core equals the watershed of the whole volume there and
the pairs are exactly the objects that cross faces.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import sparse
from scipy.sparse.csgraph import connected_components
from skimage.measure import label

from ..model.metadata import OBJECTS
from .postprocess import raster_order_table, split_objects

MODES = ("2d", "3d")
#: The axes across which blocks' ids are merged: z, y and x for 3D instances, y and x for 2D (per slice).
FACE_AXES = {"3d": (0, 1, 2), "2d": (1, 2)}
#: OME-NGFF length units in meters (to compare voxel sizes given in different units).
LENGTH_UNITS = {"angstrom": 1e-10, "nanometer": 1e-9, "micrometer": 1e-6, "millimeter": 1e-3, "centimeter": 1e-2,
                "meter": 1.0}


def object_mask(prob: np.ndarray, threshold: float, objects: str) -> np.ndarray:
    """Where objects are: ``prob > threshold``, or its complement for ``objects='background'``."""
    if objects not in OBJECTS:
        raise ValueError(f"objects must be one of {OBJECTS}, got {objects!r}")
    mask = np.asarray(prob) > threshold
    return ~mask if objects == "background" else mask


def local_labels(mask: np.ndarray, mode: str) -> tuple[np.ndarray, int]:
    """uint32 ids 1..n of the face-connected components of a (Z, Y, X) block mask (``mode='3d'``) or of each of
    its slices (``'2d'``: ids run on through the slices), and n."""
    if mode not in MODES:
        raise ValueError(f"instances must be one of {MODES}, got {mode!r}")
    if mode == "3d":
        lab, n = label(mask, connectivity=1, return_num=True)
        return lab.astype(np.uint32), int(n)
    out = np.zeros(mask.shape, np.uint32)
    n = 0
    for z, plane in enumerate(mask):
        lab, k = label(plane, connectivity=1, return_num=True)
        out[z] = np.where(lab > 0, lab.astype(np.uint32) + np.uint32(n), 0)
        n += int(k)
    return out, n


def offsets(counts: np.ndarray) -> np.ndarray:
    """Global id of each block's local id 0 (its ids are offset + 1 .. offset + count), as int64."""
    counts = np.asarray(counts, np.int64).ravel()
    return np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)


def face_pairs(low: np.ndarray, high: np.ndarray, low_offset: int, high_offset: int) -> np.ndarray:
    """(k, 2) int64 unique pairs of global ids facing each other across a face: ``low`` is the last plane of one
    block, ``high`` the first plane of its neighbour (same shape); background (0) pairs nothing."""
    low, high = np.asarray(low).ravel(), np.asarray(high).ravel()
    both = (low > 0) & (high > 0)
    if not both.any():
        return np.zeros((0, 2), np.int64)
    pairs = np.stack([low[both].astype(np.int64) + low_offset, high[both].astype(np.int64) + high_offset], 1)
    return np.unique(pairs, axis=0)


def block_sizes(local: np.ndarray, count: int) -> np.ndarray:
    """Voxels per local id (index 0 = background) of one block, int64 of length count + 1."""
    return np.bincount(np.asarray(local).ravel(), minlength=count + 1).astype(np.int64)


@dataclass(frozen=True)
class Merge:
    """Final id of every global local id (``lut``: index = global id, 0 -> 0) and the number of objects."""

    lut: np.ndarray
    objects: int

    def for_block(self, offset: int, count: int) -> np.ndarray:
        """The lookup table of one block's local ids 0..count."""
        sub = self.lut[offset: offset + count + 1].copy()
        sub[0] = 0
        return sub


def label_dtype(objects: int) -> np.dtype:
    """uint32, or uint64 when there are more objects than uint32 holds."""
    return np.dtype(np.uint32) if objects <= np.iinfo(np.uint32).max else np.dtype(np.uint64)


def merge(counts: np.ndarray, pairs: list[np.ndarray], sizes: np.ndarray, min_size: int = 1) -> Merge:
    """The final numbering of all blocks' ids from the face ``pairs`` (global ids) and ``sizes`` (voxels per global
    id, index 0 = background), dropping objects under ``min_size`` voxels."""
    total = int(np.sum(counts)) + 1
    edges = np.concatenate([p for p in pairs if len(p)] or [np.zeros((0, 2), np.int64)])
    graph = sparse.coo_matrix((np.ones(len(edges), np.int8), (edges[:, 0], edges[:, 1])), shape=(total, total))
    _, comp = connected_components(graph, directed=False)
    comp_sizes = np.bincount(comp, weights=np.asarray(sizes, np.float64), minlength=comp.max() + 1)
    keep = comp_sizes >= max(int(min_size), 1)
    keep[comp[0]] = False  # the background node pairs nothing, so it is its own component
    _, first = np.unique(comp, return_index=True)  # components in the order of their first (lowest) id
    order = np.argsort(first, kind="stable")
    kept = order[keep[order]]
    new_ids = np.zeros(len(comp_sizes), np.int64)
    new_ids[kept] = np.arange(1, len(kept) + 1)
    lut = new_ids[comp]
    return Merge(lut.astype(label_dtype(len(kept))), len(kept))


def relabel(local: np.ndarray, table: np.ndarray) -> np.ndarray:
    """A block's local ids mapped through its lookup ``table`` (``Merge.for_block``)."""
    return table[np.asarray(local)]


# --- the watershed split, blockwise -------------------------------------------------------------------------------

def voxel_sampling(scale: tuple[float, ...], units: tuple[str | None, ...]) -> tuple[float, float, float]:
    """The (z, y, x) voxel size relative to the finest axis (which is 1) from a volume's ``scale`` and ``units``
    ((y, x) ones: z is 1); isotropic (1, 1, 1) when a size is not positive and finite, or when the axes' units
    differ and are not all lengths we know (then their sizes cannot be compared)."""
    scale = tuple(float(v) for v in scale)
    units = tuple(units)
    if len(scale) == 2:
        scale, units = (1.0, *scale), (units[0] if units else None, *units)
    if len(scale) != 3 or not all(np.isfinite(v) and v > 0 for v in scale):
        return (1.0, 1.0, 1.0)
    if len(set(units)) > 1:
        if not all(u in LENGTH_UNITS for u in units):
            return (1.0, 1.0, 1.0)
        scale = tuple(v * LENGTH_UNITS[u] for v, u in zip(scale, units, strict=True))
    finest = min(scale)
    return tuple(v / finest for v in scale)  # type: ignore[return-value]


def plane_sampling(sampling: tuple[float, ...], mode: str) -> tuple[float, ...]:
    """The voxel size the split uses: (z, y, x) for '3d'; for '2d' (y, x) relative to the finer of the two."""
    if mode == "3d":
        return tuple(sampling)
    finest = min(sampling[1:])
    return tuple(v / finest for v in sampling[1:])


def halo_voxels(sampling: tuple[float, float, float], halo: int, mode: str) -> tuple[int, int, int]:
    """Voxels of context per axis for ``halo`` voxels of the finest axis (ceil(halo / size), at least 1); none in z
    for '2d' (slices are split one by one)."""
    if halo < 1:
        raise ValueError(f"the watershed halo must be at least 1 voxel, got {halo}")
    sizes = (1.0, *plane_sampling(sampling, "2d")) if mode == "2d" else sampling
    out = tuple(max(1, math.ceil(halo / v - 1e-9)) for v in sizes)
    return (0, *out[1:]) if mode == "2d" else out  # type: ignore[return-value]


def watershed_window(region: tuple[slice, ...], shape: tuple[int, ...], halo: tuple[int, ...]) -> tuple[slice, ...]:
    """A block's ``region`` grown by ``halo`` voxels per axis, clipped to the volume's ``shape``."""
    return tuple(slice(max(0, r.start - h), min(n, r.stop + h)) for r, n, h in zip(region, shape, halo, strict=True))


def split_block(mask: np.ndarray, mode: str, sampling: tuple[float, float, float]) -> np.ndarray:
    """int64 watershed ids of a (Z, Y, X) window's mask: ``split_objects`` in 3D with the voxel ``sampling``, or of
    each slice ('2d', ids running on through the slices)."""
    if mode not in MODES:
        raise ValueError(f"instances must be one of {MODES}, got {mode!r}")
    size = plane_sampling(sampling, mode)
    if mode == "3d":
        return split_objects(mask, sampling=size).astype(np.int64)
    out = np.zeros(mask.shape, np.int64)
    top = 0
    for z, plane in enumerate(mask):
        ids = split_objects(plane, sampling=size).astype(np.int64)
        out[z] = np.where(ids > 0, ids + top, 0)
        top += int(ids.max())
    return out


def core_ids(ids: np.ndarray, core: tuple[slice, ...]) -> tuple[np.ndarray, int, np.ndarray]:
    """The window ``ids`` of a block's ``core`` renumbered 1..n in the order of their first voxel (as ``label``
    numbers), n, and the table from window ids to them (0 for ids that are not in the core)."""
    inner = ids[core]
    table = raster_order_table(inner, size=int(ids.max()) + 1 if ids.size else 1, dtype=np.uint32)
    return table[inner], int(table.max()), table


def ghost_plane(ids: np.ndarray, core: tuple[slice, ...], axis: int, side: int, table: np.ndarray) -> np.ndarray:
    """The core's ids (``table``) that the window's watershed gives the plane just beyond the core's low
    (``side`` 0) or high (1) face along ``axis``, over the core's extent on the other axes; 0 elsewhere."""
    region = list(core)
    at = core[axis].start - 1 if side == 0 else core[axis].stop
    if not 0 <= at < ids.shape[axis]:
        raise ValueError(f"the window has no plane beyond the block's face on axis {axis} (halo 0)")
    region[axis] = slice(at, at + 1)
    return table[ids[tuple(region)]]


def face_votes(own: np.ndarray, seen: np.ndarray, own_offset: int, seen_offset: int) -> np.ndarray:
    """(k, 2) int64 pairs of global ids that are one object: for each id of ``own`` (one block's ids on a face
    plane), the neighbour's id that the neighbour's watershed gave most of the same voxels (``seen``; 0: none of
    its core's objects, and then no pair). Ties go to the smaller id."""
    own, seen = np.asarray(own).ravel(), np.asarray(seen).ravel()
    keep = own > 0
    if not keep.any():
        return np.zeros((0, 2), np.int64)
    pairs, counts = np.unique(np.stack([own[keep], seen[keep]], 1).astype(np.int64), axis=0, return_counts=True)
    pairs = pairs[np.lexsort((pairs[:, 1], -counts, pairs[:, 0]))]
    best = pairs[np.r_[True, pairs[1:, 0] != pairs[:-1, 0]]]
    best = best[best[:, 1] > 0]
    return np.stack([best[:, 0] + own_offset, best[:, 1] + seen_offset], 1)
