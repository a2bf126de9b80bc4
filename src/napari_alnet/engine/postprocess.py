"""Probabilities to labels: the semantic mask, and instances (connected objects, optional watershed split)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from skimage.measure import label
from skimage.morphology import h_maxima
from skimage.segmentation import watershed as skwatershed

from ..model.metadata import OBJECTS

#: Watershed markers: distance-transform maxima at least this many pixels above their surroundings.
MARKER_HEIGHT = 2.0


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
    pixels are dropped; ``watershed`` splits touching objects at the ridges of their distance transform. Stacks are
    labelled slice by slice, with ids unique across the stack.
    """
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
    lab = label(mask, connectivity=1)
    if watershed and lab.max():
        dist = ndi.distance_transform_edt(mask)
        markers = label(h_maxima(dist, MARKER_HEIGHT), connectivity=2)
        lab = skwatershed(-dist, markers, mask=mask)
    return _drop_small(lab, min_size)


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
