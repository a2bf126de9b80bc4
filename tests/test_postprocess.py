"""Probabilities to semantic and instance labels."""

from __future__ import annotations

import numpy as np
import pytest

from napari_alnet.engine.postprocess import instance_labels, semantic_labels


def _disks(centers, radius: int, shape=(80, 140)) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return np.any([(yy - cy) ** 2 + (xx - cx) ** 2 < radius**2 for cy, cx in centers], axis=0).astype(np.float32)


def test_semantic_labels_strictly_above_threshold():
    prob = np.array([[0.2, 0.5, 0.51]], np.float32)
    lab = semantic_labels(prob, 0.5)
    assert lab.dtype == np.uint8 and lab.tolist() == [[0, 0, 1]]


def test_foreground_objects_four_connected_and_small_ones_dropped():
    prob = np.zeros((20, 20), np.float32)
    prob[2:6, 2:6] = 0.9
    prob[6:10, 6:10] = 0.9  # touches the first only at a corner: a separate object
    prob[15, 15] = 0.9  # a speck under min_size
    lab = instance_labels(prob, 0.5, min_size=4)
    assert lab.dtype == np.int32 and lab.max() == 2 and lab[15, 15] == 0
    assert set(np.unique(lab)) == {0, 1, 2}
    assert instance_labels(prob, 0.5, min_size=1).max() == 3


def test_background_objects_are_the_regions_between_membranes():
    prob = np.zeros((40, 40), np.float32)
    prob[19:21, :] = 1.0  # membranes: a cross
    prob[:, 19:21] = 1.0
    lab = instance_labels(prob, 0.5, objects="background")
    assert lab.max() == 4 and (lab[prob > 0.5] == 0).all()
    assert instance_labels(prob, 0.5, objects="foreground").max() == 1


def test_watershed_splits_touching_disks():
    prob = _disks([(40, 45), (40, 90)], 26)
    assert instance_labels(prob, 0.5).max() == 1
    split = instance_labels(prob, 0.5, watershed=True)
    assert split.max() == 2 and split[40, 45] != split[40, 90]


def test_stack_ids_unique_across_slices():
    prob = np.stack([_disks([(20, 20), (60, 100)], 10), _disks([(40, 70)], 12)])
    lab = instance_labels(prob, 0.5)
    assert lab.shape == prob.shape and lab.dtype == np.int32
    assert sorted(np.unique(lab[0]))[1:] == [1, 2] and sorted(np.unique(lab[1]))[1:] == [3]


def test_bad_arguments():
    with pytest.raises(ValueError, match="objects must be one of"):
        instance_labels(np.zeros((4, 4)), 0.5, objects="cells")
    with pytest.raises(ValueError, match=r"expected a \(Y, X\) or \(Z, Y, X\)"):
        instance_labels(np.zeros(4), 0.5)
