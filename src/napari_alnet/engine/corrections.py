"""A result's corrections, kept apart from the network's labels, and the proofreading edits of instance ids.

``Corrections`` is a sparse record of the voxels a user changed in a result (painted, filled, erased, merged,
split): per tile (one slice of an in-memory result, one chunk of a Zarr-backed one) the voxels' flat indices and
their values. It is drawn over the network's labels whenever those are made again (a new threshold, a re-segmented
scope, a resumed or repeated run), so what a user corrected is never overwritten. Qt-free: the napari side
(``widgets._corrections``) tells it what a layer shows; this module decides what is a correction.

The rule (``reconcile``): a voxel is a correction when the layer shows another value than the network's labels,
or when it was recorded before and still shows the recorded value (an object edit keeps a merged object's own
voxels too, ``keep``). Erasing back to the network's value, or undoing a stroke, forgets the voxel.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi
from skimage.segmentation import watershed

Box = tuple[tuple[int, int], ...]
Index = tuple[np.ndarray, ...]


def as_box(region: Sequence[int | slice] | None, shape: Sequence[int]) -> Box:
    """``region`` (slices and integers, ``None`` = everything) as (start, stop) per axis of ``shape``."""
    region = tuple(region) if region is not None else ()
    region = region + (slice(None),) * (len(shape) - len(region))
    box = []
    for r, n in zip(region, shape, strict=True):
        if isinstance(r, slice):
            start, stop, step = r.indices(n)
            if step != 1:
                raise ValueError(f"corrections are kept in boxes; got the stepped slice {r}")
            box.append((start, max(stop, start)))
        else:
            box.append((int(r), int(r) + 1))
    return tuple(box)


def box_shape(box: Box) -> tuple[int, ...]:
    return tuple(b - a for a, b in box)


class Corrections:
    """Corrected voxels of a labels array of ``shape``, kept per tile (default: one slice; 2D: the whole image).

    ``reconcile`` records what a layer shows over the network's labels in a box, ``keep`` records voxels outright,
    ``draw`` writes the record over network labels, ``slices`` lists the corrected slices.
    """

    def __init__(self, shape: Sequence[int], *, tile: Sequence[int] | None = None, dtype=np.int64) -> None:
        self.shape = tuple(int(n) for n in shape)
        if tile is None:
            tile = (1, *self.shape[1:]) if len(self.shape) >= 3 else self.shape
        if len(tile) != len(self.shape):
            raise ValueError(f"tile {tuple(tile)} does not fit the shape {self.shape}")
        self.tile = tuple(max(1, min(int(t), n)) for t, n in zip(tile, self.shape, strict=True))
        self.dtype = np.dtype(dtype)
        self._tiles: dict[tuple[int, ...], tuple[np.ndarray, np.ndarray]] = {}

    # --- reading ------------------------------------------------------------------------------------------------

    @property
    def voxels(self) -> int:
        """How many voxels are corrected."""
        return sum(len(flat) for flat, _ in self._tiles.values())

    def __bool__(self) -> bool:
        return bool(self._tiles)

    def tiles(self) -> list[tuple[int, ...]]:
        """The keys (tile coordinates) of the tiles holding corrections."""
        return sorted(self._tiles)

    def slices(self) -> list[int]:
        """The corrected slices (axis 0 of a stack; ``[0]`` for a corrected 2D image)."""
        if not self._tiles:
            return []
        if len(self.shape) < 3:
            return [0]
        zs = [np.unique(flat // int(np.prod(self.shape[1:]))) for flat, _ in self._tiles.values()]
        return [int(z) for z in np.unique(np.concatenate(zs))]

    def max_value(self) -> int:
        """The largest corrected value (0 when none): new network ids go above it."""
        return max((int(values.max()) for _, values in self._tiles.values() if len(values)), default=0)

    def entries(self, region: Sequence[int | slice] | None = None) -> tuple[Index, np.ndarray]:
        """The corrected voxels inside ``region``: their coordinates (relative to the region's first voxel) and
        values."""
        box = as_box(region, self.shape)
        flats, values = [], []
        for key in self._keys_in(box):
            flat, vals = self._tiles[key]
            inside = self._inside(flat, box)
            flats.append(flat[inside])
            values.append(vals[inside])
        flat = np.concatenate(flats) if flats else np.zeros(0, np.int64)
        vals = np.concatenate(values) if values else np.zeros(0, self.dtype)
        coords = np.unravel_index(flat, self.shape)
        return tuple(c - a for c, (a, _) in zip(coords, box, strict=True)), vals

    def draw(self, labels: np.ndarray, region: Sequence[int | slice] | None = None) -> np.ndarray:
        """Write the corrections inside ``region`` over ``labels`` (the network's labels of that region, shaped
        as the region's box) in place; returns ``labels``."""
        index, values = self.entries(region)
        labels[_fit(index, region, labels.ndim)] = values.astype(labels.dtype, copy=False)
        return labels

    def mask(self, region: Sequence[int | slice] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The corrections of ``region`` as dense arrays shaped as its box: where (bool) and what (values)."""
        box = as_box(region, self.shape)
        where, what = np.zeros(box_shape(box), bool), np.zeros(box_shape(box), self.dtype)
        index, values = self.entries(box_slices(box))
        where[index], what[index] = True, values
        return where, what

    # --- writing ------------------------------------------------------------------------------------------------

    def reconcile(self, region: Sequence[int | slice] | None, shown: np.ndarray, network: np.ndarray) -> None:
        """Make the record of ``region`` match a layer that shows ``shown`` where the network's labels are
        ``network`` (both shaped as the region's box): voxels that differ from the network are corrections, and so
        are voxels recorded before that still show their recorded value; every other voxel of the region is
        forgotten."""
        box = as_box(region, self.shape)
        shape = box_shape(box)
        shown, network = np.asarray(shown).ravel(), np.asarray(network).ravel()  # flat: faster than N-d indices
        old, old_values = self.entries(box_slices(box))
        old = np.ravel_multi_index(old, shape) if len(old_values) else np.zeros(0, np.int64)
        keep = shown != network
        keep[old[shown[old] == old_values]] = True
        local = np.flatnonzero(keep)
        self._forget_box(box)
        index = np.unravel_index(local, shape)
        self._put(tuple(c + a for c, (a, _) in zip(index, box, strict=True)), shown[local])

    def keep(self, index: Index, values) -> None:
        """Record ``values`` at the voxels ``index`` (global coordinates) whatever the network says there."""
        index = tuple(np.asarray(i, np.int64).ravel() for i in index)
        self._put(index, np.broadcast_to(np.asarray(values), index[0].shape))

    def clear(self, region: Sequence[int | slice] | None = None) -> None:
        """Forget the corrections inside ``region`` (all of them by default)."""
        if region is None:
            self._tiles.clear()
        else:
            self._forget_box(as_box(region, self.shape))

    # --- inside -------------------------------------------------------------------------------------------------

    def _keys_in(self, box: Box) -> list[tuple[int, ...]]:
        lo = [a // t for (a, _), t in zip(box, self.tile, strict=True)]
        hi = [(b - 1) // t for (_, b), t in zip(box, self.tile, strict=True)]
        if any(b <= a for a, b in box):
            return []
        return [key for key in self._tiles if all(lo[i] <= k <= hi[i] for i, k in enumerate(key))]

    def _forget_box(self, box: Box) -> None:
        for key in self._keys_in(box):
            flat, values = self._tiles[key]
            inside = self._inside(flat, box)
            if inside.all():
                del self._tiles[key]
            elif inside.any():
                self._tiles[key] = (flat[~inside], values[~inside])

    def _inside(self, flat: np.ndarray, box: Box) -> np.ndarray:
        """Which of the flat indices ``flat`` lie inside ``box``."""
        inside = np.ones(len(flat), bool)
        for c, (a, b) in zip(np.unravel_index(flat, self.shape), box, strict=True):
            inside &= (c >= a) & (c < b)
        return inside

    def _put(self, index: Index, values: np.ndarray) -> None:
        """Record ``values`` at global ``index`` (later values win over earlier ones of the same voxel)."""
        if len(index[0]) == 0:
            return
        flat = np.ravel_multi_index(index, self.shape).astype(np.int64)
        values = np.asarray(values).astype(self.dtype, copy=False)
        grid = tuple(-(-n // t) for n, t in zip(self.shape, self.tile, strict=True))
        tile_of = np.ravel_multi_index(tuple(c // t for c, t in zip(index, self.tile, strict=True)), grid)
        order = np.argsort(tile_of, kind="stable")
        tile_of, flat, values = tile_of[order], flat[order], values[order]
        cuts = np.flatnonzero(np.diff(tile_of)) + 1
        for start, stop in zip([0, *cuts.tolist()], [*cuts.tolist(), len(flat)], strict=True):
            key = tuple(int(k) for k in np.unravel_index(int(tile_of[start]), grid))
            old_flat, old_values = self._tiles.get(key, (np.zeros(0, np.int64), np.zeros(0, self.dtype)))
            both = np.concatenate([flat[start:stop], old_flat])  # new first: np.unique's first index keeps it
            found, first = np.unique(both, return_index=True)
            self._tiles[key] = (found, np.concatenate([values[start:stop], old_values])[first])


def box_slices(box: Box) -> tuple[slice, ...]:
    return tuple(slice(a, b) for a, b in box)


def _fit(index: Index, region: Sequence[int | slice] | None, ndim: int) -> Index:
    """``index`` into a region's box, for an array of all its axes or of its sliced axes only (the integers of
    ``region`` dropped, as NumPy indexing drops them)."""
    if ndim == len(index):
        return index
    region = tuple(region or ()) + (slice(None),) * (len(index) - len(region or ()))
    kept = tuple(i for i, r in zip(index, region, strict=True) if isinstance(r, slice))
    if len(kept) != ndim:
        raise ValueError(f"an array of {ndim} dimensions does not fit the region {region}")
    return kept


# --- proofreading of instance ids ---------------------------------------------------------------------------------

def objects_at(ids: np.ndarray, points: Sequence[Sequence[int]]) -> list[int]:
    """The ids under ``points`` (data coordinates; 0 = background), in the points' order."""
    return [int(ids[tuple(int(np.rint(c)) for c in p)]) for p in points]


def merge_objects(ids: np.ndarray, objects: Sequence[int]) -> tuple[Index, int]:
    """Merge ``objects`` (at least two ids, 0 ignored) into the first: the voxels of all of them (as global
    coordinates, to record as corrections) and the id they get."""
    chosen = [int(o) for o in dict.fromkeys(objects) if int(o) != 0]
    if len(chosen) < 2:
        raise ValueError("merging needs two different objects: place a point on each object to merge")
    return np.nonzero(np.isin(ids, chosen)), chosen[0]


def delete_object(ids: np.ndarray, obj: int) -> tuple[Index, int]:
    """The voxels of ``obj`` and the value they get (0: background)."""
    if int(obj) == 0:
        raise ValueError("there is no object there (background): click inside the object to delete")
    return np.nonzero(ids == obj), 0


def split_object(ids: np.ndarray, seeds: Sequence[Sequence[int]], *, next_id: int | None = None
                 ) -> tuple[Index, np.ndarray]:
    """Split the object under ``seeds`` (two or more points inside it): each voxel goes to the point nearest to it
    along paths inside the object (a seeded watershed of a flat image, within the object's bounding box). Returns
    the object's voxels (global coordinates) and their new ids (the first point's part keeps the id; the others get
    ``next_id``, ``next_id + 1``, …, default above ``ids.max()``)."""
    points = [tuple(int(np.rint(c)) for c in p) for p in seeds]
    found = objects_at(ids, points)
    if len(points) < 2 or len(set(points)) < 2:
        raise ValueError("splitting needs two points inside the object, one in each part")
    if found[0] == 0 or any(o != found[0] for o in found):
        raise ValueError(f"the points are on objects {found}; place all of them inside the one object to split")
    obj = found[0]
    box = ndi.find_objects((ids == obj).astype(np.int8))[0]
    inside = ids[box] == obj
    markers = np.zeros(inside.shape, np.int32)
    for n, p in enumerate(points, 1):
        markers[tuple(c - s.start for c, s in zip(p, box, strict=True))] = n
    parts = watershed(np.zeros(inside.shape, np.uint8), markers, mask=inside)
    start = int(ids.max()) + 1 if next_id is None else int(next_id)
    table = np.array([0, obj, *range(start, start + len(points) - 1)], dtype=ids.dtype)
    local = np.nonzero(inside)
    index = tuple(c + s.start for c, s in zip(local, box, strict=True))
    return index, table[parts[local]]


def renumber_above(ids: np.ndarray, corrections: Corrections) -> np.ndarray:
    """Network instance ids moved above the largest corrected id (so a new threshold's objects never take the id of
    an object the user edited); ``ids`` unchanged when nothing is corrected."""
    top = corrections.max_value()
    return ids if top == 0 else np.where(ids > 0, ids + top, 0).astype(ids.dtype)


# --- where to look next -------------------------------------------------------------------------------------------

def uncertainty(prob: np.ndarray, threshold: float) -> np.ndarray:
    """float32 in [0, 1]: 1 where a probability sits on the threshold, 0 where it is as far from it as it can be."""
    prob = np.asarray(prob, np.float32)
    span = np.float32(max(threshold, 1.0 - threshold))
    return np.clip(1.0 - np.abs(prob - np.float32(threshold)) / span, 0.0, 1.0)


def most_uncertain_slice(unc: np.ndarray, *, skip: Sequence[int] = (), level: float = 0.5) -> int | None:
    """The slice (axis 0 of a (Z, Y, X) map) with the most voxels above ``level`` of uncertainty, not in ``skip``
    (the slices already corrected); ``None`` when every slice is skipped."""
    counts = (np.asarray(unc).reshape(unc.shape[0], -1) > level).sum(axis=1).astype(np.int64)
    counts[[z for z in skip if 0 <= z < len(counts)]] = -1
    return None if counts.max(initial=-1) < 0 else int(np.argmax(counts))
