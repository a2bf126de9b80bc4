"""Instance labels of a volume cut into blocks, consistent across block faces (numpy/scipy only, no I/O).

Each block is labelled on its own (``local_labels``: connected components of foreground, or of background for
``objects='background'``, face-connected; in 3D, or slice by slice in 2D), ids 1..n local to the block. Blocks are
then given disjoint id ranges (``offsets``), the voxels that face each other across every block face are paired
(``face_pairs``: the union-find edges, as dask-image's ``ndmeasure.label`` and cellpose's distributed
segmentation merge labels across block faces), and ``merge`` turns all blocks' ids into final ones: the connected
components of the pairing graph, objects under ``min_size`` voxels (summed over blocks) dropped, numbered 1..N in
the order of their first voxel in block order, uint32 (uint64 beyond 2**32 - 1 objects). For blocks that hold
whole planes in 2D mode this numbering is exactly ``postprocess.instance_labels`` of the whole stack.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import sparse
from scipy.sparse.csgraph import connected_components
from skimage.measure import label

from ..model.metadata import OBJECTS

MODES = ("2d", "3d")


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
