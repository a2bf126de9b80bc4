"""Probabilities to labels: the semantic mask, and instances (connected objects, optional watershed split)."""

from __future__ import annotations

import numpy as np

from ..model.metadata import OBJECTS

# SciPy and scikit-image are imported in the functions that use them: the semantic mask needs neither, and their
# import costs a command line that only thresholds about a quarter of torch's own (benchmarks/startup.py).

#: Watershed markers: distance-transform maxima at least this many pixels above their surroundings.
MARKER_HEIGHT = 2.0
#: A split between two touching pieces stands only at a neck: where the widest point of the pass between them (the
#: largest distance to the background along their shared boundary) is at most this fraction of the smaller piece's
#: own largest distance. Without it, a large cell whose distance transform has two maxima a few pixels apart was
#: cut along long straight lines (the flooding fronts meeting on the transform's flat slopes) that no membrane
#: shows; on ISBI 2012 test slices such cuts had ratios 0.65-0.99, splits at faint membranes 0.05-0.51.
NECK_RATIO = 0.6


def check_probabilities(prob: np.ndarray) -> np.ndarray:
    """``prob`` as an array, or ``ValueError`` when it holds NaN or infinite values (a broken model or input: labels
    from them would be silently empty or one image-wide object)."""
    prob = np.asarray(prob)
    if not np.isfinite(prob).all():
        bad = int(np.size(prob) - np.count_nonzero(np.isfinite(prob)))
        raise ValueError(f"the network produced {bad} NaN/infinite probabilities (of {prob.size}); the weight file or "
                         "the input is broken, so no labels were made from them")
    return prob


def semantic_labels(prob: np.ndarray, threshold: float) -> np.ndarray:
    """uint8 mask, 1 where ``prob > threshold`` (foreground), 0 elsewhere; ``ValueError`` for NaN/inf."""
    return (check_probabilities(prob) > threshold).astype(np.uint8)


def instance_labels(prob: np.ndarray, threshold: float, objects: str = "foreground", *, min_size: int = 16,
                    watershed: bool = False) -> np.ndarray:
    """int32 instance ids (0 = none) of a (Y, X) or (Z, Y, X) probability map.

    Objects are the 4-connected regions of foreground (``prob > threshold``), or of background with
    ``objects='background'`` (EM membrane models: the cells between membranes). Objects smaller than ``min_size``
    pixels are dropped; ``watershed`` splits touching objects at the ridges of their distance transform
    (``split_objects``, on the pixel grid). Stacks are labelled slice by slice, with ids unique across the stack.
    """
    from skimage.measure import label

    if objects not in OBJECTS:
        raise ValueError(f"objects must be one of {OBJECTS}, got {objects!r}")
    prob = check_probabilities(prob)
    if prob.ndim == 3:
        out = np.zeros(prob.shape, np.int32)
        next_id = 0
        for z, plane in enumerate(prob):
            ids = instance_labels(plane, threshold, objects, min_size=min_size, watershed=watershed)
            out[z], next_id = offset_ids(ids, next_id)
        return out
    if prob.ndim != 2:
        raise ValueError(f"expected a (Y, X) or (Z, Y, X) probability map, got shape {prob.shape}")
    mask = prob > threshold
    if objects == "background":
        mask = ~mask
    lab = in_raster_order(split_objects(mask)) if watershed else label(mask, connectivity=1)
    return _drop_small(lab, min_size)


def in_raster_order(ids: np.ndarray) -> np.ndarray:
    """``ids`` renumbered 1..n in the order of each object's first pixel (as ``label`` numbers components)."""
    return raster_order_table(ids, dtype=ids.dtype)[ids]


def raster_order_table(ids: np.ndarray, *, size: int | None = None, dtype=np.int32) -> np.ndarray:
    """The table from the ids in ``ids`` to 1..n in the order of each one's first pixel (0 and absent ids map to
    0); ``size``: its length, default ``ids.max() + 1``."""
    found, first = np.unique(ids.ravel(), return_index=True)
    first, found = first[found > 0], found[found > 0]
    table = np.zeros(size if size is not None else int(ids.max()) + 1 if ids.size else 1, dtype)
    table[found[np.argsort(first, kind="stable")]] = np.arange(1, len(found) + 1, dtype=dtype)
    return table


def watershed_seeds(dist: np.ndarray, regions: np.ndarray, *, height: float = MARKER_HEIGHT) -> np.ndarray:
    """int32 seeds 1..n: the h-maxima of ``dist`` (plateaus at least ``height`` above every path to a higher
    value), found in each region of ``regions`` (face-connected components, 0 = background) on its own, so every
    region gets at least one seed (its highest plateau) and no region's seeds depend on another's. A plateau is one
    seed when fully connected, and never spans two regions."""
    from scipy import ndimage as ndi
    from skimage.measure import label
    from skimage.morphology import reconstruction

    mask = regions > 0
    dist = np.asarray(dist, np.float32)
    low = np.float32(-height - 1.0)  # below every seed: the background never carries the reconstruction
    image = np.where(mask, dist, low)
    resolution = 2 * np.finfo(np.float32).resolution * np.abs(dist)  # as skimage's h_maxima, against rounding
    seed = np.where(mask, dist - np.float32(height) - resolution, low).astype(np.float32)
    rec = reconstruction(seed, image, method="dilation", footprint=ndi.generate_binary_structure(mask.ndim, 1))
    top = mask & (image - rec >= height)
    return label(np.where(top, regions, 0), connectivity=mask.ndim).astype(np.int32)


def split_objects(mask: np.ndarray, *, sampling: tuple[float, ...] | None = None,
                  height: float = MARKER_HEIGHT) -> np.ndarray:
    """int32 ids 1..n of ``mask`` (2D or 3D) with touching objects split at the ridges of its distance transform:
    a watershed of the Euclidean distance to the background (``sampling``: voxel size per axis, default 1) from
    ``watershed_seeds``, whose pieces are then merged again wherever they meet without a neck (``NECK_RATIO``,
    ``merge_without_neck``). Every mask voxel gets an id (no object is dropped); ids follow the seeds' raster order.

    Each face-connected region is flooded on its own (in its bounding box; a region with one seed is that seed's
    object), so a region's result depends on that region only, not on what else the array holds: the same region
    in two overlapping blocks is split the same way, ties between equal seeds included.
    """
    from scipy import ndimage as ndi
    from skimage.measure import label
    from skimage.segmentation import watershed as skwatershed

    regions = label(np.asarray(mask, bool), connectivity=1)
    if not regions.any():
        return np.zeros(regions.shape, np.int32)
    dist = ndi.distance_transform_edt(regions > 0, sampling=sampling).astype(np.float32)
    seeds = watershed_seeds(dist, regions, height=height)
    at = seeds > 0
    pairs = np.unique(np.stack([regions[at], seeds[at]], 1), axis=0)  # (region, seed), each seed in one region
    per_region = np.bincount(pairs[:, 0], minlength=int(regions.max()) + 1)
    owner = np.zeros(len(per_region), np.int32)
    owner[pairs[:, 0]] = pairs[:, 1]  # the seed of single-seed regions
    out = np.where(per_region[regions] == 1, owner[regions], 0).astype(np.int32)
    boxes = ndi.find_objects(regions)
    for region in np.flatnonzero(per_region > 1):
        box = boxes[region - 1]
        inside = regions[box] == region
        flooded = skwatershed(-dist[box], np.where(inside, seeds[box], 0), mask=inside)
        out[box][inside] = merge_without_neck(flooded, dist[box])[inside]
    kept = np.unique(out[out > 0])  # merged seeds: ids 1..n again, in the seeds' order
    table = np.zeros(int(kept[-1]) + 1 if len(kept) else 1, np.int32)
    table[kept] = np.arange(1, len(kept) + 1, dtype=np.int32)
    return table[out]


def _passes(pieces: np.ndarray, dist: np.ndarray) -> dict[tuple[int, int], float]:
    """``{(a, b): height}`` for every two touching pieces a < b: the highest ``min(dist)`` over face-adjacent pixel
    pairs across their boundary (the widest point of the pass between them)."""
    keys, heights = [], []
    for axis in range(pieces.ndim):
        first, second = ((slice(None),) * axis + (part,) for part in (slice(None, -1), slice(1, None)))
        low, high = pieces[first], pieces[second]
        cross = (low != high) & (low > 0) & (high > 0)
        a, b = np.minimum(low[cross], high[cross]).astype(np.int64), np.maximum(low[cross], high[cross])
        keys.append(a * (int(pieces.max()) + 1) + b)
        heights.append(np.minimum(dist[first], dist[second])[cross])
    keys, heights = np.concatenate(keys), np.concatenate(heights)
    if not len(keys):
        return {}
    order = np.lexsort((heights, keys))
    keys, heights = keys[order], heights[order]
    last = np.r_[keys[1:] != keys[:-1], True]  # each key's highest pass is its last entry
    size = int(pieces.max()) + 1
    return {(int(k // size), int(k % size)): float(h) for k, h in zip(keys[last], heights[last], strict=True)}


def merge_without_neck(pieces: np.ndarray, dist: np.ndarray, *, ratio: float = NECK_RATIO) -> np.ndarray:
    """``pieces`` (watershed ids of one region) with every two touching pieces merged whose pass is not a neck:
    the pass's height (the highest ``min(dist)`` over face-adjacent pixel pairs across their boundary) above
    ``ratio`` times the lower of the two pieces' peaks. Merged pieces take the smaller id; merging repeats on the
    merged pieces (the highest pass first) until every remaining boundary is a neck."""
    from scipy import ndimage as ndi

    ids = np.unique(pieces[pieces > 0])
    if len(ids) < 2:
        return pieces
    passes = _passes(pieces, dist)
    peak = dict(zip(ids.tolist(), ndi.maximum(dist, pieces, index=ids).tolist(), strict=True))
    owner = {int(i): int(i) for i in ids}
    while passes:
        (a, b), height = max(passes.items(), key=lambda item: (item[1] / min(peak[item[0][0]], peak[item[0][1]]),
                                                                 item[0]))
        if height <= ratio * min(peak[a], peak[b]):
            break
        owner.update({k: a for k, v in owner.items() if v == b})
        peak[a] = max(peak[a], peak.pop(b))
        merged: dict[tuple[int, int], float] = {}
        for (p, q), h in passes.items():
            p, q = (a if p == b else p), (a if q == b else q)
            if p != q:
                key = (min(p, q), max(p, q))
                merged[key] = max(merged.get(key, 0.0), h)
        passes = merged
    table = np.zeros(int(ids.max()) + 1, pieces.dtype)
    for k, v in owner.items():
        table[k] = v
    return table[pieces]


def offset_ids(labels: np.ndarray, start: int) -> tuple[np.ndarray, int]:
    """``labels`` (ids 1..n, 0 = none) shifted to start after id ``start``, and the last id used: how slice-by-slice
    labelling keeps ids unique across a stack."""
    top = int(labels.max()) if labels.size else 0
    return np.where(labels > 0, labels + start, 0).astype(labels.dtype), start + top


def _drop_small(lab: np.ndarray, min_size: int) -> np.ndarray:
    """Remove objects under ``min_size`` pixels and number the rest 1..n (int32)."""
    sizes = np.bincount(lab.ravel())
    keep = sizes >= max(min_size, 1)
    keep[0] = False
    new_ids = np.zeros(len(sizes), np.int32)
    new_ids[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    return new_ids[lab]
