"""engine.corrections: the sparse record of corrected voxels, the proofreading edits, the uncertainty map."""

from __future__ import annotations

import numpy as np
import pytest

from napari_alnet.engine.corrections import (
    Corrections,
    delete_object,
    merge_objects,
    most_uncertain_slice,
    objects_at,
    renumber_above,
    split_object,
    uncertainty,
)


def test_reconcile_keeps_what_differs_from_the_network_and_forgets_what_is_erased_back():
    network = np.zeros((4, 16, 16), np.uint8)
    shown = network.copy()
    shown[1, 2:5, 2:5] = 1
    shown[3, 0, 0] = 2
    record = Corrections(network.shape)
    record.reconcile(None, shown, network)
    assert record.voxels == 10 and record.slices() == [1, 3] and record.max_value() == 2
    assert record.tiles() == [(1, 0, 0), (3, 0, 0)]  # one tile per slice
    shown[1, 2, 2] = 0  # erased back to the network's value: no longer a correction
    record.reconcile((1,), shown[1], network[1])
    assert record.voxels == 9
    redrawn = np.ones((4, 16, 16), np.uint8)  # the network at another threshold
    record.draw(redrawn)
    assert redrawn[1, 2, 2] == 1 and redrawn[3, 0, 0] == 2 and (redrawn[1, 2:5, 2:5] == 1).all()
    plane = np.zeros((16, 16), np.uint8)
    record.draw(plane, (3, slice(None), slice(None)))  # one plane, its axis dropped as NumPy drops it
    assert plane[0, 0] == 2 and plane.sum() == 2
    record.clear((3,))
    assert record.slices() == [1]
    record.clear()
    assert not record and record.voxels == 0


def test_kept_voxels_stay_while_they_show_their_value_even_where_the_network_agrees():
    network = np.zeros((2, 8, 8), np.int32)
    network[0, :4] = 5
    record = Corrections(network.shape)
    record.keep(np.nonzero(network == 5), 5)  # an edited object: all its voxels, equal to the network or not
    shown = network.copy()
    record.reconcile(None, shown, network)
    assert record.voxels == 32
    shown[0, 0, 0] = 0  # the user changes one of them: the record follows the layer
    record.reconcile(None, shown, network)
    _index, values = record.entries((0, slice(0, 1), slice(0, 1)))
    assert values.tolist() == [0] and record.voxels == 32


def test_tiles_of_chunks_and_regions_across_them():
    record = Corrections((10, 32, 32), tile=(4, 16, 16))
    shown, network = np.zeros((10, 32, 32), np.uint8), np.zeros((10, 32, 32), np.uint8)
    shown[3:6, 14:18, 14:18] = 1  # across 8 tiles
    record.reconcile(None, shown, network)
    assert len(record.tiles()) == 8 and record.slices() == [3, 4, 5]
    where, what = record.mask((slice(4, 5), slice(10, 20), slice(10, 20)))
    assert where.shape == (1, 10, 10) and where.sum() == 16 and (what[where] == 1).all()
    box = np.zeros((2, 8, 8), np.uint8)  # a box of the volume: the record is drawn at its place in it
    record.draw(box, (slice(4, 6), slice(12, 20), slice(12, 20)))
    assert box.sum() == 2 * 16
    with pytest.raises(ValueError, match="tile"):
        Corrections((4, 4), tile=(1, 2, 2))


def test_later_values_of_a_voxel_win():
    record = Corrections((8, 8))
    record.keep((np.array([1, 1]), np.array([2, 3])), 4)
    record.keep((np.array([1]), np.array([2])), 6)
    index, values = record.entries()
    assert sorted(zip(index[1].tolist(), values.tolist(), strict=True)) == [(2, 6), (3, 4)]
    assert record.slices() == [0]


def test_merge_split_delete():
    ids = np.zeros((20, 40), np.int32)
    ids[2:8, 2:10], ids[2:8, 12:20] = 3, 4
    ids[10:18, 2:38] = 9
    index, value = merge_objects(ids, objects_at(ids, [(4, 4), (4, 14), (4, 15)]))
    assert value == 3 and len(index[0]) == 96  # all voxels of both objects, to keep as corrections
    with pytest.raises(ValueError, match="two different objects"):
        merge_objects(ids, [3, 3, 0])
    index, value = delete_object(ids, 4)
    assert value == 0 and len(index[0]) == 48
    with pytest.raises(ValueError, match="background"):
        delete_object(ids, 0)
    index, parts = split_object(ids, [(14, 4), (14, 35)])
    out = ids.copy()
    out[index] = parts
    assert set(np.unique(out[10:18, 2:38])) == {9, 10} and out[14, 4] == 9 and out[14, 35] == 10
    assert abs(int((out == 9).sum()) - int((out == 10).sum())) <= 16  # split near the middle
    with pytest.raises(ValueError, match="inside the one object"):
        split_object(ids, [(4, 4), (14, 4)])
    with pytest.raises(ValueError, match="two points"):
        split_object(ids, [(14, 4)])


def test_network_ids_move_above_corrected_ids():
    record = Corrections((8, 8))
    ids = np.array([[0, 1], [2, 0]], np.int32)
    assert renumber_above(ids, record) is ids
    record.keep((np.array([0]), np.array([0])), 7)
    assert renumber_above(ids, record).tolist() == [[0, 8], [9, 0]]


def test_uncertainty_and_the_most_uncertain_slice():
    prob = np.stack([np.full((4, 4), p, np.float32) for p in (0.0, 0.45, 0.9, 0.5)])
    unc = uncertainty(prob, 0.5)
    assert unc[0].max() == 0 and unc[3].min() == 1 and 0.8 < unc[1, 0, 0] < 1
    assert most_uncertain_slice(unc) in (1, 3)
    assert most_uncertain_slice(unc, skip=[1, 3]) in (0, 2)
    assert most_uncertain_slice(unc, skip=[0, 1, 2, 3]) is None
