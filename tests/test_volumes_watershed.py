"""The watershed split of instances: 2D per slice (TIFF, CLI) and 3D blockwise, consistent across block borders."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import zarr
from skimage.measure import label

from model_factory import calibrated_model, save_test_model, texture
from napari_alnet.cli import main
from napari_alnet.engine.instances3d import face_votes, halo_voxels, voxel_sampling
from napari_alnet.engine.postprocess import instance_labels, split_objects
from napari_alnet.engine.volume import BlockPlan, phases, segment_volume, segment_volume_job, tasks, watershed_block
from napari_alnet.engine.volume import plan as volume_plan
from napari_alnet.io.volumes import VolumeError


@pytest.fixture(scope="module")
def model():
    return calibrated_model()


def balls(shape: tuple[int, int, int], centres: list[tuple[float, float, float]], radius: float,
          sampling: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> np.ndarray:
    """A bool volume of balls of ``radius`` (physical units) at ``centres`` (voxel coordinates)."""
    zz, yy, xx = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    out = np.zeros(shape, bool)
    for cz, cy, cx in centres:
        d2 = ((zz - cz) * sampling[0]) ** 2 + ((yy - cy) * sampling[1]) ** 2 + ((xx - cx) * sampling[2]) ** 2
        out |= d2 <= radius**2
    return out


@pytest.fixture
def mask_as_probabilities(monkeypatch):
    """Blocks' probabilities are the source itself (0/1 voxels), so the tests choose the objects exactly."""
    def probs(work, block) -> np.ndarray:
        return work.reader.read(block.region).astype(np.float32)

    def no_context(work, z) -> int:
        work.outputs.context[z] = 0  # the per-slice network context of plane-cutting blocks: not used here
        return z

    monkeypatch.setattr(tasks, "_whole_plane_probs", probs)
    monkeypatch.setattr(tasks, "_cut_plane_probs", probs)
    monkeypatch.setattr(phases, "context_task", no_context)


def _partition_equal(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two label images make the same objects (ids may differ; 0 = none in both)."""
    if not np.array_equal(a > 0, b > 0):
        return False
    pairs = np.unique(np.stack([a.ravel(), b.ravel()], 1), axis=0)
    return len(np.unique(pairs[:, 0])) == len(pairs) == len(np.unique(pairs[:, 1]))


def _drop_small(ids: np.ndarray, min_size: int) -> np.ndarray:
    keep = np.bincount(ids.ravel()) >= min_size
    keep[0] = False
    return np.where(keep[ids], ids, 0)


def touching_pairs(shape: tuple[int, int, int], borders: tuple[int, int, int], seed: int) -> np.ndarray:
    """Pairs of touching balls (radius 4, centres 7 apart: a neck, see ``postprocess.NECK_RATIO``) straddling the
    block borders along z, y and x, plus lone balls elsewhere: a uint8 volume of 0/1."""
    rng = np.random.default_rng(seed)
    centres = []
    for axis in range(3):
        for _ in range(3):
            centre = [float(rng.uniform(5, n - 5)) for n in shape]
            centre[axis] = borders[axis] + float(rng.uniform(-1.5, 1.5))
            other = list(centre)
            centre[axis] -= 3.5
            other[axis] += 3.5
            centres += [tuple(centre), tuple(other)]
    centres += [tuple(float(rng.uniform(4, n - 4)) for n in shape) for _ in range(6)]
    return balls(shape, centres, 4.0).astype(np.uint8)


def test_split_objects_separates_two_touching_spheres_that_components_merge():
    mask = balls((24, 24, 40), [(12, 12, 13), (12, 12, 27)], 8.0)
    assert label(mask, connectivity=1).max() == 1
    ids = split_objects(mask)
    assert ids.max() == 2 and ids[12, 12, 13] != ids[12, 12, 27] and np.array_equal(ids > 0, mask)
    # seeds come from the distance transform in physical units: squashed along z by 1/3, the same balls still split
    squashed = balls((8, 24, 40), [(4, 12, 13), (4, 12, 27)], 8.0, sampling=(3.0, 1.0, 1.0))
    assert split_objects(squashed, sampling=(3.0, 1.0, 1.0)).max() == 2
    thin = np.zeros((5, 30), bool)
    thin[2, 3:27] = True  # one pixel wide: no seed would stand 2 px above its surroundings, it is still an object
    assert split_objects(thin).max() == 1


def test_the_volume_engine_splits_touching_spheres(tmp_path, model, mask_as_probabilities):
    data = balls((20, 40, 56), [(10, 20, 19), (10, 20, 36)], 8.0).astype(np.uint8)
    plain = segment_volume(model, data, tmp_path / "cc.zarr", block=(10, 40, 56), instances="3d")
    split = segment_volume(model, data, tmp_path / "ws.zarr", block=(10, 40, 56), instances="3d", watershed=True)
    assert plain.objects == 1 and split.objects == 2
    ids = zarr.open_array(tmp_path / "ws.zarr" / "0", mode="r")[:]
    assert ids[10, 20, 19] != ids[10, 20, 36] and np.array_equal(ids > 0, data > 0)
    assert np.ptp(np.nonzero(ids == ids[10, 20, 19])[0]) >= 10  # each object spans the z border of the blocks


@pytest.mark.parametrize("seed", [0, 3])  # 3: pairs of equal seeds, whose ties must not depend on the window
def test_blockwise_3d_watershed_equals_the_whole_volume_watershed(tmp_path, model, mask_as_probabilities, seed):
    """Touching balls cut by blocks in z, y and x: the same partition as one watershed of the whole volume when
    the halo holds the objects (touching pairs are 15-16 voxels long; halo 16), not with a halo of 2."""
    shape, block = (30, 80, 80), (10, 40, 40)
    data = touching_pairs(shape, (10, 40, 40), seed)
    summary = segment_volume(model, data, tmp_path / "v.zarr", block=block, instances="3d", watershed=True,
                             watershed_halo=16, min_size=20)
    ids = zarr.open_array(tmp_path / "v.zarr" / "0", mode="r")[:]
    whole = _drop_small(split_objects(data > 0), 20)
    components = _drop_small(label(data > 0, connectivity=1), 20)
    assert summary.complete and summary.objects == len(np.unique(whole)) - 1 == ids.max()
    assert _partition_equal(ids, whole)
    assert summary.objects > len(np.unique(components)) - 1  # touching pairs were split
    crossing = {axis: [i for i in np.unique(whole)[1:] if len(np.unique(np.nonzero(whole == i)[axis] // b)) > 1]
                for axis, b in enumerate(block)}
    assert all(crossing.values()), f"objects should cross block borders on every axis: {crossing}"
    state = zarr.open_group(tmp_path / "v.zarr", mode="r")
    assert "alnet_state" not in state and state.attrs["napari_alnet"]["run"]["settings"]["watershed"] is True
    segment_volume(model, data, tmp_path / "h2.zarr", block=block, instances="3d", watershed=True, watershed_halo=2,
                   min_size=20)
    assert not _partition_equal(zarr.open_array(tmp_path / "h2.zarr" / "0", mode="r")[:], whole)


def test_face_pairs_of_touching_objects_become_votes_not_merges():
    """Two objects side by side across a face touch there; only the ids each side's watershed agrees on pair."""
    own = np.array([[1, 1, 2, 2, 2, 0]])  # the high block's first plane, its ids
    seen = np.array([[7, 7, 8, 8, 7, 7]])  # the low block's window on the same voxels, in the low block's ids
    assert face_votes(own, seen, 100, 10).tolist() == [[101, 17], [102, 18]]  # 2 touches 7 but is mostly 8
    assert face_votes(np.array([[3, 3, 3]]), np.array([[0, 0, 5]]), 0, 0).tolist() == []  # mostly not theirs
    assert face_votes(np.array([[3, 3]]), np.array([[0, 5]]), 0, 0).tolist() == []  # a tie: the smaller id, 0


def test_voxel_size_sets_the_halo_per_axis():
    assert voxel_sampling((40.0, 4.0, 4.0), ("nanometer",) * 3) == (10.0, 1.0, 1.0)
    assert voxel_sampling((0.04, 4.0, 4.0), ("micrometer", "nanometer", "nanometer")) == pytest.approx((10, 1, 1))
    assert voxel_sampling((1.0, 2.0, 2.0), ("micrometer", None, None)) == (1.0, 1.0, 1.0)  # cannot compare
    assert voxel_sampling((0.5, 0.5), ("micrometer", "micrometer")) == (2.0, 1.0, 1.0)  # 2D: z counts as 1
    assert halo_voxels((10.0, 1.0, 1.0), 16, "3d") == (2, 16, 16)
    assert halo_voxels((10.0, 1.0, 1.0), 16, "2d") == (0, 16, 16)


def test_2d_blockwise_watershed_equals_instance_labels_per_slice(tmp_path, model):
    data = (texture((3, 160, 144), seed=9, sigma=5) * 255).astype(np.uint8)
    segment_volume(model, data, tmp_path / "v.zarr", block=(1, 160, 144), instances="2d", watershed=True)
    expected = instance_labels(model.predict(data), model.threshold, model.metadata.objects, watershed=True)
    assert expected.max() > instance_labels(model.predict(data), model.threshold, model.metadata.objects).max()
    np.testing.assert_array_equal(zarr.open_array(tmp_path / "v.zarr" / "0")[:], expected)


def test_a_resume_with_another_watershed_setting_is_refused(tmp_path, model):
    data = (texture((3, 96, 80), seed=4) * 255).astype(np.uint8)
    job = segment_volume_job(model, data, tmp_path / "v.zarr", block=(1, 96, 80), instances="3d", watershed=True)
    for report in job:
        if report.metrics.get("phase") == "blocks":
            break
    job.close()
    with pytest.raises(VolumeError, match=r"other settings \(watershed, watershed_halo, watershed_sampling\)"):
        segment_volume(model, data, tmp_path / "v.zarr", block=(1, 96, 80), instances="3d")
    with pytest.raises(VolumeError, match=r"other settings \(watershed_halo\)"):
        segment_volume(model, data, tmp_path / "v.zarr", block=(1, 96, 80), instances="3d", watershed=True,
                       watershed_halo=4)
    summary = segment_volume(model, data, tmp_path / "v.zarr", block=(1, 96, 80), instances="3d", watershed=True)
    assert summary.complete and summary.blocks_resumed == 1
    with pytest.raises(ValueError, match="the watershed splits instances"):
        segment_volume(model, data, tmp_path / "w.zarr", watershed=True)


# --- the command line ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return save_test_model(tmp_path_factory.mktemp("model") / "m.safetensors")


def test_cli_2d_watershed_on_a_tiff_splits_each_slice(tmp_path, weights, model):
    data = (texture((2, 128, 112), seed=9, sigma=5) * 255).astype(np.uint8)
    tif = tmp_path / "stack.tif"
    tifffile.imwrite(tif, data)
    args = ["segment", str(tif), "--model", str(weights), "--instances", "2d"]
    assert main([*args, "-o", str(tmp_path / "cc")]) == 0
    assert main([*args, "--watershed", "-o", str(tmp_path / "ws")]) == 0
    plain = tifffile.imread(tmp_path / "cc" / "stack_instances.tif")
    split = tifffile.imread(tmp_path / "ws" / "stack_instances.tif")
    assert split.dtype == np.int32 and np.array_equal(split > 0, plain > 0) and split.max() > plain.max()
    prob = model.predict(data)  # the same network as the weight file
    np.testing.assert_array_equal(split, instance_labels(prob, model.threshold, model.metadata.objects,
                                                         watershed=True))


def test_cli_watershed_without_instances_is_a_usage_error(tmp_path, weights, capsys):
    tif = tmp_path / "stack.tif"
    tifffile.imwrite(tif, np.zeros((2, 64, 64), np.uint8))
    assert main(["segment", str(tif), "-o", str(tmp_path / "out"), "--model", str(weights), "--watershed"]) == 2
    assert "--watershed splits instances: give it with --instances" in capsys.readouterr().err
    assert main(["segment", str(tif), "-o", str(tmp_path / "out"), "--model", str(weights), "--instances",
                 "--watershed", "--watershed-halo", "8"]) == 2
    assert "--watershed-halo applies to OME-Zarr outputs" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("shape", "block", "halo", "expected"), [
    ((954, 2048, 2048), (4, 2048, 2048), (16, 16, 16), (16, 512, 512)),   # isotropic: 12 GB windows otherwise
    ((954, 1024, 1024), (32, 1024, 1024), (4, 16, 16), (24, 1024, 1024)),  # anisotropic: fewer whole planes do
    ((100, 512, 512), (64, 512, 512), (16, 16, 16), (64, 512, 512)),      # fits: the automatic block stays
])
def test_an_automatic_block_bounds_the_watershed_window(shape, block, halo, expected):
    plan = BlockPlan(shape, block, (1, 512, 512))
    chosen = watershed_block(plan, halo, can_cut=True)
    assert chosen == expected
    window = np.prod([min(n, b + 2 * h) for b, n, h in zip(chosen, shape, halo, strict=True)])
    assert window <= volume_plan.WATERSHED_WINDOW_VOXELS
    whole = watershed_block(plan, halo, can_cut=False)
    assert whole[1:] == shape[1:]


def test_a_watershed_run_without_block_gets_the_bounded_block(tmp_path, model, mask_as_probabilities, monkeypatch):
    monkeypatch.setattr(volume_plan, "WATERSHED_WINDOW_VOXELS", 40_000)
    data = balls((40, 64, 64), [(20, 32, 26), (20, 32, 38)], 6.0).astype(np.uint8)
    plain = segment_volume(model, data, tmp_path / "cc.zarr", instances="3d")
    split = segment_volume(model, data, tmp_path / "ws.zarr", instances="3d", watershed=True, watershed_halo=4)
    assert plain.block == (40, 64, 64) and np.prod(split.block) < np.prod(plain.block)
    assert split.objects == 2
