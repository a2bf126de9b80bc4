"""Volumes: OME-Zarr / Zarr / N5 / TIFF in, OME-Zarr out, blockwise == in-memory, resume, errors."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import tifffile
import zarr
from ome_zarr.format import FormatV04
from ome_zarr.io import parse_url
from ome_zarr.reader import Reader
from ome_zarr.writer import write_image

from model_factory import calibrated_model, texture
from napari_alnet.engine.postprocess import instance_labels
from napari_alnet.engine.volume import (
    FP32_TOLERANCE,
    BlockPlan,
    Settings,
    choose_workers,
    executors,
    plan_blocks,
    runs_blockwise,
    segment_volume,
    segment_volume_job,
    tasks,
    volume_routes,
)
from napari_alnet.io.volumes import VolumeError, open_volume

UNITS = {"z": "micrometer", "y": "micrometer", "x": "micrometer"}
SCALE = {"z": 0.05, "y": 0.004, "x": 0.004}


@pytest.fixture(scope="module")
def model():
    return calibrated_model()


def volume(shape=(3, 160, 144), seed=1, sigma=3.0) -> np.ndarray:
    return (texture(shape, seed=seed, sigma=sigma) * 255).astype(np.uint8)


def write_ome(path: Path, data: np.ndarray, zarr_format: int = 3, chunks=(1, 64, 64)) -> Path:
    group = zarr.open_group(path, mode="w", zarr_format=zarr_format)
    write_image(data, group, axes="zyx", scale=SCALE, axes_units=UNITS, scale_factors=[2],
                fmt=FormatV04() if zarr_format == 2 else None, storage_options={"chunks": chunks})
    return path


def ome_node(path: Path):
    nodes = list(Reader(parse_url(str(path)))())
    assert nodes, f"ome_zarr cannot read {path}"
    return nodes[0]


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_ome_zarr_round_trip_keeps_axes_scale_units_and_chunks(tmp_path, model, zarr_format):
    data = volume()
    source = write_ome(tmp_path / "em.zarr", data, zarr_format)
    summary = segment_volume(model, source, tmp_path / "out", probabilities=True)
    labels, prob = tmp_path / "out" / "em_labels.zarr", tmp_path / "out" / "em_prob.zarr"
    assert summary.complete and Path(summary.labels) == labels and Path(summary.probabilities) == prob
    for path in (labels, prob):
        node = ome_node(path)
        meta = node.metadata
        assert [a["name"] for a in meta["axes"]] == ["z", "y", "x"]
        assert [a.get("unit") for a in meta["axes"]] == ["micrometer"] * 3
        assert meta["coordinateTransformations"][0][0]["scale"] == [0.05, 0.004, 0.004]
        group = zarr.open_group(path, mode="r")
        assert group.metadata.zarr_format == zarr_format
        ome = dict(group.attrs) if zarr_format == 2 else group.attrs["ome"]
        assert (ome["multiscales"][0].get("version") or ome.get("version")) == ("0.4" if zarr_format == 2 else "0.5")
        assert group["0"].chunks == (1, 64, 64)
        assert group.attrs["napari_alnet"]["complete"] is True
        assert "alnet_state" not in group
    lab_group = zarr.open_group(labels, mode="r")
    assert "image-label" in (dict(lab_group.attrs) if zarr_format == 2 else lab_group.attrs["ome"])
    assert any(type(s).__name__ == "Label" for s in ome_node(labels).specs)
    prob_group = zarr.open_group(prob, mode="r")
    assert prob_group["0"].dtype == np.uint8 and "255" in prob_group.attrs["napari_alnet"]["encoding"]
    ref = model.predict(data)
    np.testing.assert_array_equal(lab_group["0"][:], (ref > model.threshold).astype(np.uint8))
    assert np.abs(prob_group["0"][:] / 255.0 - ref).max() <= 0.5 / 255 + 1e-5  # rounding + blockwise fp noise
    reopened = open_volume(labels)
    assert reopened.geometry.scale == (0.05, 0.004, 0.004) and reopened.geometry.units == ("micrometer",) * 3


def _compare(model, data, out: Path, ref: np.ndarray) -> None:
    labels = zarr.open_array(out / "0", mode="r")[:]
    prob = zarr.open_array(out.with_name(out.name.replace(".zarr", "_prob.zarr")) / "0", mode="r")[:]
    assert np.abs(prob - ref).max() < 1e-4
    clear = np.abs(ref - model.threshold) > 1e-4  # the same pixels unless a probability sits on the threshold
    np.testing.assert_array_equal(labels[clear], (ref[clear] > model.threshold).astype(np.uint8))


@pytest.mark.parametrize("block", [(2, 160, 144), (1, 160, 144)], ids=["2-planes", "1-plane"])
def test_blocks_of_whole_planes_equal_in_memory_predict(tmp_path, model, block):
    data = volume()
    ref = model.predict(data)
    segment_volume(model, data, tmp_path / "v.zarr", block=block, probabilities=True, prob_dtype="float32")
    labels = zarr.open_array(tmp_path / "v.zarr" / "0", mode="r")[:]
    np.testing.assert_array_equal(labels, (ref > model.threshold).astype(np.uint8))
    _compare(model, data, tmp_path / "v.zarr", ref)


def test_blocks_that_cut_planes_equal_in_memory_predict(tmp_path, model):
    """YX tiles with the context halo and the slice's pooled context: equal to whole-plane inference."""
    data = volume((2, 448, 416), seed=3)
    ref = model.predict(data)  # whole planes (they are under the whole-image limit)
    summary = segment_volume(model, da.from_array(data, chunks=(1, 112, 104)), tmp_path / "v.zarr",
                             block=(1, 224, 208), probabilities=True, prob_dtype="float32")
    assert summary.blocks == 8 and summary.complete
    _compare(model, data, tmp_path / "v.zarr", ref)
    assert zarr.open_array(tmp_path / "v.zarr" / "0", mode="r").chunks == (1, 112, 104)


def test_automatic_plan_cuts_planes_over_the_whole_image_limit(tmp_path, model):
    plan = plan_blocks((5, 448, 416), chunks=(1, 64, 64), whole_pixels=256 * 256)
    assert plan.cuts_planes and plan.block[1] % 64 == 0 and plan.chunks == (1, 64, 64)
    plan = plan_blocks((50, 512, 512), chunks=(4, 256, 256))
    assert not plan.cuts_planes and plan.block[0] % 4 == 0 and plan.block[1:] == (512, 512)
    with pytest.raises(ValueError, match="three positive"):
        plan_blocks((5, 64, 64), block=(0, 64, 64))


def test_local_cluster_equals_in_process(tmp_path, model, monkeypatch):
    """Blocks run with the same torch threads give the same bits wherever they run (float32 probabilities
    compared exactly: they differ in the last bits between 1 and 2 threads, docs/volumes.md)."""
    monkeypatch.setattr(executors, "usable_cores", lambda: 4)  # 2 workers are declined on 2 cores
    data = volume((4, 160, 144), seed=5)
    options = {"block": (1, 160, 144), "instances": "3d", "probabilities": True, "prob_dtype": "float32",
               "threads": 1}
    segment_volume(model, data, tmp_path / "a.zarr", **options)
    summary = segment_volume(model, data, tmp_path / "b.zarr", workers=2, **options)
    assert summary.complete and summary.workers.startswith("LocalCluster 2") and summary.threads == 1
    for name in ("a.zarr", "a_prob.zarr"):
        np.testing.assert_array_equal(zarr.open_array(tmp_path / name / "0")[:],
                                      zarr.open_array(tmp_path / name.replace("a", "b", 1) / "0")[:])


def _probabilities(model, data, dest: Path, threads: int) -> np.ndarray:
    segment_volume(model, data, dest, block=(1, *data.shape[1:]), threads=threads, probabilities=True,
                   prob_dtype="float32")
    return zarr.open_array(dest.with_name(dest.stem + "_prob.zarr") / "0")[:]


def test_other_thread_counts_stay_within_the_stated_tolerance(tmp_path, model):
    """docs/volumes.md: across torch thread counts fp32 blocks agree within FP32_TOLERANCE, bf16 blocks within
    bf16's own error against fp32 (on AMX, where bf16 is native, the kernels differ per thread count)."""
    data = volume((2, 96, 96), seed=6)
    fp32 = [_probabilities(model, data, tmp_path / f"f{t}.zarr", t) for t in (1, 2)]
    assert np.abs(fp32[0] - fp32[1]).max() <= FP32_TOLERANCE
    bf16 = [_probabilities(model.with_precision("bf16"), data, tmp_path / f"b{t}.zarr", t) for t in (1, 2)]
    own_error = np.abs(bf16[0] - fp32[0]).max()
    assert np.abs(bf16[0] - bf16[1]).max() <= own_error
    threshold = model.threshold
    flips = ((bf16[0] > threshold) != (bf16[1] > threshold)).mean()
    assert flips <= ((bf16[0] > threshold) != (fp32[0] > threshold)).mean()


def test_workers_that_cannot_add_cores_run_in_process_and_say_so(tmp_path, model, monkeypatch):
    assert choose_workers(None, 8) == (None, "")
    assert choose_workers(4, 8) == (4, "")
    for workers, cores in ((1, 8), (3, 2), (2, 2), (2, 1)):
        chosen, note = choose_workers(workers, cores)
        assert chosen is None and "not add" in note
    monkeypatch.setattr(executors, "usable_cores", lambda: 2)
    summary = segment_volume(model, volume((1, 64, 64)), tmp_path / "v.zarr", workers=2, threads=1)
    assert summary.complete and summary.workers.startswith("in-process (on 2 usable cores")
    assert summary.threads == 2  # the requested 2 x 1 threads, in one process


def _partition_equal(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two label images make the same objects (ids may differ; 0 = none in both)."""
    if not np.array_equal(a > 0, b > 0):
        return False
    pairs = np.unique(np.stack([a.ravel(), b.ravel()], 1), axis=0)
    return len(np.unique(pairs[:, 0])) == len(pairs) == len(np.unique(pairs[:, 1]))


def test_3d_instances_across_block_borders_in_z_y_and_x(tmp_path, model):
    """Objects crossing block faces in z, y and x get one id: the same partition as labelling the whole volume."""
    from skimage.measure import label

    data = volume((6, 192, 176), seed=7, sigma=6)
    summary = segment_volume(model, data, tmp_path / "v.zarr", block=(2, 96, 88), instances="3d", min_size=20,
                             probabilities=True, prob_dtype="float32")
    labels = zarr.open_array(tmp_path / "v.zarr" / "0", mode="r")[:]
    prob = zarr.open_array(tmp_path / "v_prob.zarr" / "0", mode="r")[:]
    whole = label(prob > model.threshold, connectivity=1)
    sizes = np.bincount(whole.ravel())
    keep = sizes >= 20
    keep[0] = False
    whole = np.where(keep[whole], whole, 0)
    assert labels.dtype == np.uint32 and summary.objects == int(keep.sum()) == len(np.unique(labels)) - 1
    assert labels.max() == summary.objects  # ids 1..N
    assert _partition_equal(labels, whole)
    crossing = [i for i in np.unique(whole)[1:] if np.ptp(np.nonzero(whole == i)[0]) >= 2]
    assert crossing, "the test volume should have objects spanning z block borders"


def test_2d_instances_of_whole_plane_blocks_equal_instance_labels(tmp_path, model):
    data = volume((4, 160, 144), seed=9)
    segment_volume(model, data, tmp_path / "v.zarr", block=(1, 160, 144), instances="2d")
    expected = instance_labels(model.predict(data), model.threshold, model.metadata.objects)
    np.testing.assert_array_equal(zarr.open_array(tmp_path / "v.zarr" / "0")[:], expected)


def test_job_reports_blocks_and_a_stopped_run_resumes(tmp_path, model):
    data = volume((4, 160, 144), seed=11)
    job = segment_volume_job(model, data, tmp_path / "v.zarr", block=(1, 160, 144))
    reports = []
    for report in job:
        reports.append(report)
        if report.metrics.get("phase") == "blocks" and report.metrics["blocks_done"] == 2:
            break
    job.close()
    assert next(r.metrics["region"] for r in reports if r.metrics.get("phase") == "blocks") == (0, 1, 0, 160, 0, 144)
    assert reports[-1].metrics["blocks_total"] == 4 and "slices/s" in reports[-1].message
    group = zarr.open_group(tmp_path / "v.zarr", mode="r")
    assert group.attrs["napari_alnet"]["complete"] is False and "alnet_state" in group
    summary = segment_volume(model, data, tmp_path / "v.zarr", block=(1, 160, 144))
    assert summary.complete and summary.blocks_resumed == 2 and summary.blocks_run == 2
    ref = model.predict(data)
    np.testing.assert_array_equal(zarr.open_array(tmp_path / "v.zarr" / "0")[:], (ref > model.threshold))


# --- other formats ------------------------------------------------------------------------------------------------

def write_n5(path: Path, data: np.ndarray, block=(2, 64, 64), resolution=(4.0, 4.0, 40.0)) -> Path:
    """A raw-compressed N5 dataset (dimensions and blocks listed x first; chunks big-endian)."""
    (path / "raw").mkdir(parents=True)
    (path / "attributes.json").write_text(json.dumps({"n5": "4.0.0"}))
    (path / "raw" / "attributes.json").write_text(json.dumps({
        "dimensions": list(data.shape[::-1]), "blockSize": list(block[::-1]), "dataType": "uint8",
        "compression": {"type": "raw"}, "resolution": list(resolution), "units": ["nm", "nm", "nm"]}))
    for index in np.ndindex(*[-(-n // b) for n, b in zip(data.shape, block, strict=True)]):
        part = data[tuple(slice(i * b, (i + 1) * b) for i, b in zip(index, block, strict=True))]
        header = struct.pack(">HH", 0, 3) + struct.pack(">3I", *part.shape[::-1])
        chunk = path / "raw" / str(index[2]) / str(index[1]) / str(index[0])
        chunk.parent.mkdir(parents=True, exist_ok=True)
        chunk.write_bytes(header + part.astype(">u1").tobytes())
    return path / "raw"


def test_n5_and_tiff_sources_open_lazily_with_their_pixel_size(tmp_path, model):
    data = volume((3, 96, 80))
    n5 = open_volume(write_n5(tmp_path / "em.n5", data))
    assert n5.shape == (3, 96, 80) and n5.name == "em_raw" and n5.chunks == (2, 64, 64)
    np.testing.assert_array_equal(n5.data.compute(), data)
    assert n5.geometry.scale == (40.0, 4.0, 4.0) and n5.geometry.units == ("nanometer",) * 3
    tif = tmp_path / "stack.tif"
    tifffile.imwrite(tif, data, imagej=True, resolution=(1 / 0.004, 1 / 0.004),
                     metadata={"axes": "ZYX", "spacing": 0.05, "unit": "um"})
    vol = open_volume(tif)
    np.testing.assert_array_equal(vol.data.compute(), data)
    assert vol.geometry.scale == pytest.approx((0.05, 0.004, 0.004)) and vol.geometry.units[1] == "micrometer"
    summary = segment_volume(model, tif, tmp_path / "out")
    assert Path(summary.labels).name == "stack_labels.zarr" and summary.complete
    assert ome_node(Path(summary.labels)).metadata["coordinateTransformations"][0][0]["scale"] == \
        pytest.approx([0.05, 0.004, 0.004])


def test_a_2d_ome_zarr_image_gives_2d_labels(tmp_path, model):
    plane = volume((1, 160, 144))[0]
    group = zarr.open_group(tmp_path / "img.zarr", mode="w")
    write_image(plane, group, axes="yx", scale_factors=[], storage_options={"chunks": (64, 64)})
    summary = segment_volume(model, tmp_path / "img.zarr", tmp_path / "img_labels.zarr")
    labels = zarr.open_array(tmp_path / "img_labels.zarr" / "0", mode="r")
    assert labels.shape == (160, 144) and summary.complete
    np.testing.assert_array_equal(labels[:], model.predict(plane) > model.threshold)


# --- bad input ----------------------------------------------------------------------------------------------------

def _tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_bad_sources_give_clear_messages_and_write_nothing(tmp_path, model):
    bad = zarr.open_array(tmp_path / "4d.zarr", mode="w", shape=(2, 3, 40, 40), dtype="uint8")
    with pytest.raises(VolumeError, match=r"shape \(2, 3, 40, 40\) \(4 dimensions\) cannot be segmented"):
        segment_volume(model, tmp_path / "4d.zarr", tmp_path / "out")
    group = zarr.open_group(tmp_path / "plain.zarr", mode="w")
    group.create_array("raw", shape=(2, 40, 40), dtype="uint8")
    with pytest.raises(VolumeError, match=r"missing OME 'multiscales'.*plain.zarr/raw"):
        segment_volume(model, tmp_path / "plain.zarr", tmp_path / "out")
    zarr.open_array(tmp_path / "complex.zarr", mode="w", shape=(2, 40, 40), dtype="complex64")
    with pytest.raises(VolumeError, match="dtype complex64 is not a real numeric type"):
        segment_volume(model, tmp_path / "complex.zarr", tmp_path / "out")
    with pytest.raises(VolumeError, match="no such file or folder"):
        segment_volume(model, tmp_path / "missing.zarr", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    del bad
    segment_volume(model, tmp_path / "plain.zarr" / "raw", tmp_path / "out")  # a plain array is fine
    assert (tmp_path / "out" / "plain_raw_labels.zarr").is_dir()


def test_existing_outputs_are_refused_without_overwrite(tmp_path, model):
    data = volume((2, 96, 80))
    foreign = tmp_path / "foreign.zarr"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(VolumeError, match="exists and is not a Zarr group"):
        segment_volume(model, data, foreign)
    other = zarr.open_group(tmp_path / "other.zarr", mode="w")
    other.attrs["owner"] = "someone"
    before = _tree(tmp_path / "other.zarr")
    with pytest.raises(VolumeError, match="was not made by napari-alnet"):
        segment_volume(model, data, tmp_path / "other.zarr")
    assert _tree(tmp_path / "other.zarr") == before and (foreign / "notes.txt").read_text() == "mine"
    segment_volume(model, data, tmp_path / "v.zarr")
    done = _tree(tmp_path / "v.zarr")
    with pytest.raises(VolumeError, match="is complete"):
        segment_volume(model, data, tmp_path / "v.zarr")
    job = segment_volume_job(model, data, tmp_path / "part.zarr", block=(1, 96, 80))
    for report in job:
        if report.metrics.get("phase") == "blocks":
            break
    job.close()
    with pytest.raises(VolumeError, match=r"other settings \(threshold\)"):
        segment_volume(model, data, tmp_path / "part.zarr", block=(1, 96, 80), threshold=0.3)
    assert _tree(tmp_path / "v.zarr") == done
    summary = segment_volume(model, data, tmp_path / "v.zarr", overwrite=True, threshold=0.3)
    assert summary.complete and summary.blocks_run == 1
    with pytest.raises(VolumeError, match="the input"):
        segment_volume(model, tmp_path / "v.zarr", tmp_path / "v.zarr", overwrite=True)
    assert os.path.isdir(tmp_path / "v.zarr" / "0")


def test_merge_across_faces_equals_whole_volume_labelling():
    """The union-find over block faces, without the network: random blobs cut by blocks in z, y and x."""
    from scipy import ndimage as ndi
    from skimage.measure import label

    from napari_alnet.engine.instances3d import (
        block_sizes,
        face_pairs,
        label_dtype,
        local_labels,
        merge,
        offsets,
        relabel,
    )

    rng = np.random.default_rng(0)
    mask = ndi.gaussian_filter(rng.normal(size=(12, 40, 36)), 2) > 0.05
    plan = BlockPlan(mask.shape, (5, 16, 12), (5, 16, 12))
    blocks = plan.blocks()
    local = {b.index: local_labels(mask[b.region], "3d") for b in blocks}
    counts = np.array([local[b.index][1] for b in blocks])
    starts = offsets(counts)
    sizes = np.zeros(counts.sum() + 1, np.int64)
    pairs = []
    for b in blocks:
        lab, n = local[b.index]
        sizes[starts[b.index] + 1: starts[b.index] + n + 1] = block_sizes(lab, n)[1:]
        for axis in range(3):
            nxt = list(b.position)
            nxt[axis] += 1
            if nxt[axis] < plan.grid[axis]:
                other = plan.index_of(tuple(nxt))
                pairs.append(face_pairs(np.take(lab, [-1], axis), np.take(local[other][0], [0], axis),
                                        starts[b.index], starts[other]))
    merged = merge(counts, pairs, sizes, min_size=10)
    out = np.zeros(mask.shape, merged.lut.dtype)
    for b in blocks:
        out[b.region] = relabel(local[b.index][0], merged.for_block(starts[b.index], counts[b.index]))
    whole = label(mask, connectivity=1)
    big = np.bincount(whole.ravel()) >= 10
    big[0] = False
    whole = np.where(big[whole], whole, 0)
    assert merged.objects == big.sum() and out.max() == merged.objects and _partition_equal(out, whole)
    spans = [sum(bool((out[b.region] == i).any()) for b in blocks) for i in range(1, merged.objects + 1)]
    spanning = [i for i, n in enumerate(spans, 1) if n > 2]
    assert spanning, "some objects should span more than two blocks"
    assert label_dtype(2**32 - 1) == np.uint32 and label_dtype(2**32) == np.uint64


def test_an_rgb_zarr_volume_goes_to_an_rgb_model(tmp_path):
    rgb_model = calibrated_model(in_channels=3)
    data = (texture((2, 96, 80, 3), seed=3) * 255).astype(np.uint8)
    zarr.open_array(tmp_path / "rgb.zarr", mode="w", shape=data.shape, dtype="uint8", chunks=(1, 48, 40, 3))[:] = data
    summary = segment_volume(rgb_model, tmp_path / "rgb.zarr", tmp_path / "out", block=(1, 96, 80))
    labels = zarr.open_array(tmp_path / "out" / "rgb_labels.zarr" / "0", mode="r")
    assert summary.complete and labels.shape == (2, 96, 80) and labels.chunks == (1, 48, 40)
    np.testing.assert_array_equal(labels[:], rgb_model.predict(data) > rgb_model.threshold)


def test_settings_travel_as_one_object_from_the_caller_to_every_task(tmp_path, model, monkeypatch):
    """Keyword options are ``Settings.of``; a ``Settings`` given as is reaches each block task resolved for the model
    and volume (its threshold, objects, dimensions), and both ways write the same bytes."""
    assert Settings.of(probabilities=True, prob_dtype="float16", instances="3d") == Settings(
        probabilities="float16", instances="3d")
    with pytest.raises(TypeError, match="unknown volume option"):
        Settings.of(instance="3d")
    with pytest.raises(ValueError, match="instances must be"):
        Settings(instances="4d")
    data = volume((2, 96, 80))
    with pytest.raises(TypeError, match="not both"):
        segment_volume_job(model, data, tmp_path / "x.zarr", Settings(), tile=256)
    seen = []
    block_task = tasks.block_task

    def spy(work, block):
        seen.append(work.settings)
        return block_task(work, block)

    monkeypatch.setattr("napari_alnet.engine.volume.phases.block_task", spy)
    settings = Settings(probabilities="float16", instances="2d", min_size=4)
    segment_volume(model, data, tmp_path / "a.zarr", settings, block=(1, 96, 80))
    segment_volume(model, data, tmp_path / "b.zarr", block=(1, 96, 80), probabilities=True, prob_dtype="float16",
                   instances="2d", min_size=4)
    assert len(seen) == 4 and seen[0] == seen[2] and seen[1] is seen[0]  # one object shared by a run's tasks
    assert seen[0].threshold == model.threshold and seen[0].objects == model.metadata.objects and seen[0].ndim == 3
    assert seen[0].probabilities == "float16" and seen[0].min_size == 4
    for name in ("a_prob.zarr", "b_prob.zarr"):
        assert (tmp_path / name).is_dir()
    assert np.array_equal(zarr.open_group(tmp_path / "a.zarr")["0"][:], zarr.open_group(tmp_path / "b.zarr")["0"][:])


@pytest.mark.parametrize(("kwargs", "expected"), [
    ({}, False), ({"voxels": 4 * 2048 * 2048}, False), ({"voxels": 4 * 2048 * 2048 + 1}, True),
    ({"instances": "2d"}, False), ({"instances": "3d"}, True), ({"instances": "2d", "watershed": True}, True),
    ({"watershed": True}, False), ({"zarr_output": True}, True), ({"volume_source": True}, True),
])
def test_one_rule_says_in_memory_or_blockwise(kwargs, expected):
    assert runs_blockwise(**kwargs) is expected


def test_the_command_line_routes_by_the_same_rule(tmp_path):
    folder = tmp_path / "vol.zarr"
    zarr.open_group(folder, mode="w")
    assert volume_routes([str(folder), "a.tif"], tmp_path / "out", None) == ([str(folder)], ["a.tif"])
    assert volume_routes(["a.tif"], tmp_path / "out", "3d") == (["a.tif"], [])
    assert volume_routes(["a.tif"], tmp_path / "out.zarr", None) == (["a.tif"], [])
    assert volume_routes(["a.tif", "b.tif"], tmp_path / "out", "2d") == ([], ["a.tif", "b.tif"])
    with pytest.raises(ValueError, match="--block, --workers"):
        volume_routes(["a.tif"], tmp_path / "out", None, volume_options=True)
