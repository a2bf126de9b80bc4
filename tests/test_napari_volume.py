"""Big volumes in a real napari viewer: lazy layers in, Zarr-backed labels out, a viewer that never stalls.

The volumes are generated lazily (dask ``map_blocks`` of a cheap function, counted); none is ever materialized or
written to the repository. The engine's automatic block size is lowered so that blocks are a slice or two and the
runs take seconds.
"""

from __future__ import annotations

import time
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import zarr

from model_factory import save_test_model, texture
from napari_alnet.engine.postprocess import semantic_labels
from napari_alnet.engine.volume import plan as volume_plan
from napari_alnet.engine.volume import segment_volume
from napari_alnet.widgets import FinetuneWidget, SegmentWidget
from napari_alnet.widgets import _finetune_slices as finetune_widget
from napari_alnet.widgets._layers import WHOLE_STACK, Z_RANGE
from napari_alnet.widgets._volume import StoreView, VolumeSession

pytestmark = pytest.mark.gui
WAIT_MS = 120_000
MB = 1 << 20


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    """A calibrated (non-saturated) test network: labels are a mix of 0 and 1 at threshold 0.5."""
    return save_test_model(tmp_path_factory.mktemp("weights") / "calibrated.safetensors")


@pytest.fixture
def notes(monkeypatch) -> list[str]:
    seen: list[str] = []
    for module in ("segment", "finetune", "_worker", "_models"):
        for name in ("show_warning", "show_error", "show_info"):
            monkeypatch.setattr(f"napari_alnet.widgets.{module}.{name}", lambda msg, _s=seen: _s.append(str(msg)),
                                raising=False)
    return seen


@pytest.fixture
def widget(make_napari_viewer, model_file) -> SegmentWidget:
    segment = SegmentWidget(make_napari_viewer())
    segment.models.load_file(model_file)
    segment.threshold.value = 0.5
    return segment


def wait(qtbot, widget) -> None:
    qtbot.waitUntil(lambda: not widget.runner.running, timeout=WAIT_MS)


def small_blocks(monkeypatch, slices: int, plane: int) -> None:
    """Automatic engine blocks of ``slices`` slices of ``plane`` pixels (the default is 16 M voxels)."""
    monkeypatch.setattr(volume_plan, "BLOCK_VOXELS", slices * plane)


def lazy_volume(depth: int, size: int, chunk_z: int, made: list[int]) -> da.Array:
    """A (depth, size, size) uint8 dask volume made chunk by chunk from a texture (each chunk made is counted)."""
    base = (texture((size, size), seed=2) * 255).astype(np.uint8)

    def make(block_info=None):
        (z0, z1), _, _ = block_info[None]["array-location"]
        made.append(z0)
        return np.stack([np.roll(base, 3 * z, axis=1) for z in range(z0, z1)])

    chunks = ((chunk_z,) * (depth // chunk_z), (size,), (size,))
    return da.map_blocks(make, dtype=np.uint8, chunks=chunks)


def peak_rss_reset() -> int:
    """Reset the process's peak resident set (VmHWM) to its current size; returns that size in bytes."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status("VmHWM")


def _status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {key} in /proc/self/status")


def test_a_2gb_lazy_layer_is_read_block_by_block(widget, qtbot, monkeypatch, notes):
    """Whole stack of a 2.1 GB dask layer: the process grows by a few blocks, not by the volume; Cancel stops within
    one block; the output layer is a view of the Zarr store with the first blocks already visible."""
    small_blocks(monkeypatch, 2, 512 * 512)
    made: list[int] = []
    data = lazy_volume(8192, 512, 16, made)
    volume_bytes = data.nbytes
    widget.viewer.add_image(data, name="big", contrast_limits=(0, 255))
    widget.scope.value = WHOLE_STACK
    assert "8,192 M voxels" not in widget.estimate.value and "4,096 blocks of 2 x 512 x 512" in widget.estimate.value
    made.clear()
    baseline = peak_rss_reset()
    assert widget.segment(), notes
    at_cancel: list[int] = []

    def cancel(report):
        if report.metrics.get("phase") == "blocks" and report.metrics["blocks_done"] >= 3 and not at_cancel:
            at_cancel.append(report.metrics["blocks_done"])
            widget.runner.cancel()

    widget.runner.worker.yielded.connect(cancel)
    wait(qtbot, widget)
    growth = _status("VmHWM") - baseline
    summary = widget.volume_summary
    assert widget.runner.last.status == "cancelled", notes
    assert at_cancel and summary.blocks_run <= at_cancel[0] + 1 and not summary.complete
    assert growth < 500 * MB < volume_bytes / 4, f"peak RSS grew by {growth / MB:.0f} MB"
    # each block reads its 2 slices of chunk 0 (16 slices); the viewer displays slice 4096 (chunk 256)
    assert set(made) <= {0, 256} and len(made) <= summary.blocks_run + 2, f"chunks generated: {made}"
    print(f"peak RSS growth {growth / MB:.0f} MB for a {volume_bytes / MB:.0f} MB layer")
    labels = widget.viewer.layers[widget.output_name()]
    assert isinstance(labels.data, StoreView) and labels.data.shape == (8192, 512, 512)
    assert labels.data[0].any() and not labels.data[-1].any() and labels.data.whole_reads == 0
    assert "press Segment to continue" in widget.status.value


def test_the_viewer_never_stalls_during_a_whole_volume_run(widget, qtbot, monkeypatch, tmp_path, notes):
    """Segment returns at once (checks, stores and the model's hash run in the worker); from the moment the output
    layer is in place (napari's own cost of adding a Labels layer, about 0.5 s under Xvfb, comes first) to the end
    of the run, no event-loop tick is more than 250 ms late."""
    from qtpy.QtCore import QTimer

    small_blocks(monkeypatch, 1, 256 * 256)
    widget.viewer.add_image(np.stack([np.roll(texture((256, 256), seed=1), z, 0) for z in range(24)]), name="vol")
    widget.output.value = tmp_path / "vol_labels.zarr"  # an output store: the blockwise path, even for 1.5 MB
    ticks: list[float] = []
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start(10)
    started: list[float] = []
    shown: list[float] = []

    def start() -> None:
        t0 = time.perf_counter()
        assert widget.segment(), notes
        started.append(time.perf_counter() - t0)
        widget.runner.worker.yielded.connect(lambda _r: shown or shown.append(time.perf_counter()))

    QTimer.singleShot(50, start)
    qtbot.waitUntil(lambda: bool(started), timeout=WAIT_MS)
    wait(qtbot, widget)
    qtbot.wait(50)
    timer.stop()
    assert widget.runner.last.status == "done", notes
    assert started[0] < 0.1, f"segment() held the event loop for {started[0] * 1000:.0f} ms"
    during = np.asarray([t for t in ticks if t >= shown[0]])
    stall = float(np.max(np.diff(during)))
    assert len(during) > 20 and stall < 0.25, f"the event loop stalled for {stall * 1000:.0f} ms"
    assert widget.volume_summary.complete and widget.volume_summary.blocks == 24
    store = zarr.open_array(str(tmp_path / "vol_labels.zarr" / "0"), mode="r")
    layer = widget.viewer.layers[widget.output_name()]
    assert np.array_equal(np.asarray(layer.data[5]), store[5]) and store[...].any()


def test_cancel_then_segment_again_resumes_to_the_uninterrupted_result(widget, qtbot, monkeypatch, tmp_path, notes):
    """Cancel, Segment again (continues), Cancel, then a new dock (as after restarting napari) continues the same
    Output to the end: the stores equal an uninterrupted run's."""
    small_blocks(monkeypatch, 1, 128 * 128)
    image = np.stack([np.roll(texture((128, 128), seed=4), 5 * z, 1) for z in range(10)])
    widget.viewer.add_image(image, name="vol")
    widget.output.value = tmp_path / "cut.zarr"

    def run(dock, stop_at: int | None):
        assert dock.segment(), notes
        if stop_at is not None:
            dock.runner.worker.yielded.connect(
                lambda report: report.metrics.get("blocks_done", 0) >= stop_at and dock.runner.cancel())
        wait(qtbot, dock)
        return dock.volume_summary

    first = run(widget, 2)
    assert widget.runner.last.status == "cancelled" and 2 <= first.blocks_run < 10, notes
    widget.threshold.value = 0.3  # moved meanwhile: a resumed run keeps the threshold it started with
    second = run(widget, 5)
    assert widget.runner.last.status == "cancelled" and second.blocks_resumed == first.blocks_run, notes
    assert "continue" in widget.status.value
    again = SegmentWidget(widget.viewer)  # a new session: nothing pending, the same layer and Output
    again.models.select(widget.models.value)
    again.output.value = tmp_path / "cut.zarr"
    third = run(again, None)
    assert again.runner.last.status == "done" and third.complete, notes
    assert third.blocks_resumed == first.blocks_run + second.blocks_run and third.blocks_resumed < 10
    reference = segment_volume(widget.models.load("cpu"), image, tmp_path / "ref.zarr",
                                         probabilities=True, threshold=0.5)
    for name in ("cut.zarr", "cut_prob.zarr"):
        got = zarr.open_array(str(tmp_path / name / "0"), mode="r")[...]
        want = zarr.open_array(str(Path(reference.labels).with_name(name.replace("cut", "ref")) / "0"), mode="r")[...]
        assert np.array_equal(got, want), name
    other = SegmentWidget(widget.viewer)  # a complete Output is refused, never written over
    other.models.select(widget.models.value)
    other.output.value = tmp_path / "cut.zarr"
    assert not other.segment() and "exists" in notes[-1]


def test_threshold_slider_on_a_lazy_result_reads_only_the_displayed_slice(widget, qtbot, monkeypatch, tmp_path,
                                                                           notes):
    small_blocks(monkeypatch, 2, 128 * 128)
    made: list[int] = []
    widget.viewer.add_image(lazy_volume(12, 128, 2, made), name="vol", contrast_limits=(0, 255))
    widget.scope.value = Z_RANGE
    widget.z_from.value, widget.z_to.value = 2, 9
    widget.instances.value = False
    monkeypatch.setattr("napari_alnet.engine.volume.routing.IN_MEMORY_VOXELS", 1000)  # this small layer counts as big
    assert widget.segment(), notes
    wait(qtbot, widget)
    assert widget.runner.last.status == "done" and widget.volume_summary.complete, notes
    labels = widget.viewer.layers[widget.output_name()]
    np.testing.assert_allclose(labels.translate, (2, 0, 0))  # the z-range sits at its slices
    widget.viewer.dims.set_current_step(0, 6)  # slice 4 of the result
    prob = zarr.open_array(str(Path(widget.volume_summary.probabilities) / "0"), mode="r")[...]
    for value in (0.3, 0.7):
        old = labels.data
        widget.threshold.value = value
        view = labels.data  # a new view of the stored probabilities, thresholded as napari reads it
        assert isinstance(view, StoreView) and view is not old and view.threshold == value
        shown = np.asarray(labels._slice.image.raw)
        assert np.array_equal(shown, (prob[4] > value * 255).astype(np.uint8))
        assert 0 < view.voxels_read <= 2 * 128 * 128 and view.whole_reads == 0  # the displayed slice, not 8
    assert 0 < shown.mean() < 1
    # the temporary result is kept at the threshold now shown (0.7; the run's was 0.5)
    kept = tmp_path / "kept.zarr"
    assert widget.save_result(kept), notes
    wait(qtbot, widget)
    assert widget.runner.last.status == "done", notes
    saved = zarr.open_group(str(kept), mode="r")
    assert np.array_equal(saved["0"][...], (prob > 0.7 * 255).astype(np.uint8))
    record = saved.attrs["napari_alnet"]
    assert record["complete"] and record["run"]["settings"]["threshold"] == 0.7
    assert np.array_equal(zarr.open_array(str(tmp_path / "kept_prob.zarr" / "0"), mode="r")[...], prob)
    assert not widget.save_result(kept) and "exists" in notes[-1]  # never written over
    assert Path(widget.volume_summary.labels).parent == widget.volume.session.folder()  # the dock's own folder


def test_3d_instances_come_from_the_engine(widget, qtbot, monkeypatch, tmp_path, notes):
    small_blocks(monkeypatch, 2, 128 * 128)
    image = np.stack([np.roll(texture((128, 128), seed=6), 2 * z, 0) for z in range(6)])
    widget.viewer.add_image(image, name="vol")
    widget.instances.value = True
    widget.instances_3d.value = True  # 3D instances: the blockwise engine, even for a small layer
    assert widget.segment(), notes
    wait(qtbot, widget)
    assert widget.runner.last.status == "done" and widget.volume_summary.objects > 0, notes
    ids = widget.viewer.layers[widget.output_name("instances")].data
    assert isinstance(ids, StoreView) and ids.dtype == np.uint32
    reference = segment_volume(widget.models.load("cpu"), image, tmp_path / "ref.zarr", instances="3d",
                                         threshold=0.5)
    assert reference.objects == widget.volume_summary.objects
    assert np.array_equal(ids[...], zarr.open_array(str(tmp_path / "ref.zarr" / "0"), mode="r")[...])


def test_finetune_reads_only_annotated_and_held_out_slices_of_a_lazy_stack(make_napari_viewer, model_file,
                                                                            tmp_path, notes):
    viewer = make_napari_viewer()
    dock = FinetuneWidget(viewer)
    made: list[int] = []
    image = viewer.add_image(lazy_volume(400, 256, 1, made), name="lazy em", contrast_limits=(0, 255))
    marks = zarr.create_array(store=zarr.storage.LocalStore(tmp_path / "marks.zarr"), shape=(400, 256, 256),
                              chunks=(1, 256, 256), dtype="uint8", fill_value=0)
    for z in (10, 200, 333):
        marks[z, 40:120, 40:120] = 1
    labels = viewer.add_labels(marks, name="marks")
    dock.image.value, dock.annotations.value = image, labels
    dock.refresh_slices()
    assert dock.slice_list.slices() == [10, 200, 333]
    dock.holdout.value = 200
    dock.scratch.value = True
    dock.output.value = tmp_path / "tuned.safetensors"
    viewer.dims.set_current_step(0, 50)
    made.clear()
    request = dock.make_request()
    assert request.image.shape == (4, 256, 256) and request.labels.shape == (4, 256, 256)
    assert request.slice_numbers == [10, 50, 200, 333] and request.slices == [0, 2, 3] and request.holdout == 2
    assert request.preview_slice == 1 and sorted(set(made)) == [10, 50, 200, 333]
    assert np.array_equal(request.labels[3], np.asarray(marks[333]))


def test_field_of_view_of_a_multiscale_layer_segments_the_visible_part_of_level_0(widget, qtbot, monkeypatch,
                                                                                   notes):
    made: list[int] = []
    level0 = lazy_volume(4, 512, 1, made)
    widget.viewer.add_image([level0, level0[:, ::2, ::2]], name="pyramid", contrast_limits=(0, 255),
                            scale=(1.0, 2.0, 2.0))
    widget.viewer.dims.set_current_step(0, 3)
    camera = widget.viewer.scene.camera
    camera.center = (3.0, 300.0, 500.0)
    camera.zoom = 4.0  # a few hundred world units of the 1024 x 1024 layer are visible
    widget.scope.value = "field of view"
    monkeypatch.setattr("napari_alnet.engine.volume.routing.IN_MEMORY_VOXELS", 1000)
    made.clear()
    assert widget.segment(), notes
    wait(qtbot, widget)
    assert widget.runner.last.status == "done", notes
    labels = widget.viewer.layers[widget.output_name()]
    depth, height, width = labels.data.shape
    assert depth == 1 and 0 < height < 512 and 0 < width < 512  # part of one level-0 slice
    y0, x0 = labels.translate[1:] / 2.0
    np.testing.assert_allclose(labels.translate[0], 3.0)
    assert y0 <= 150 <= y0 + height and x0 <= 250 <= x0 + width  # the camera's centre, in level-0 pixels
    np.testing.assert_allclose(labels.scale, (1.0, 2.0, 2.0))
    assert set(made) == {3}, made  # only the displayed slice of level 0 was read


def test_painting_a_big_annotations_layer_never_rescans_the_volume(make_napari_viewer, monkeypatch, tmp_path,
                                                                    qtbot):
    viewer = make_napari_viewer()
    dock = FinetuneWidget(viewer)
    made: list[int] = []
    image = viewer.add_image(lazy_volume(70, 512, 1, made), name="lazy em", contrast_limits=(0, 255))
    dock.image.value = image
    scans: list[int] = []
    for name in ("annotated_slices", "lazy_annotated_slices"):
        real = getattr(finetune_widget, name)
        monkeypatch.setattr(finetune_widget, name, lambda data, _r=real: scans.append(1) or _r(data))
    layer = dock.add_annotations_layer()  # 70 x 512 x 512: over the in-memory budget
    assert layer.data.shape == (70, 512, 512) and dock.slice_list.slices() == []
    layer.brush_size = 20
    layer.paint((5, 100, 100), 1)
    layer.paint((40, 300, 300), 1)
    assert dock.slice_list.slices() == [5, 40]
    layer.paint((5, 100, 100), 0)  # erased: slice 5 is empty again
    qtbot.waitUntil(lambda: dock.slice_list.slices() == [40], timeout=5000)
    assert not scans
    layer.paint((20, 200, 200), 1)
    dock.scratch.value = True
    dock.output.value = tmp_path / "tuned.safetensors"
    dock.holdout.value = None
    dock.preview.value = False
    made.clear()
    request = dock.make_request()
    assert request.slice_numbers == [20, 40] and sorted(set(made)) == [20, 40] and not scans


def test_a_big_rgb_image_goes_through_the_engine_as_one_colour_plane(make_napari_viewer, qtbot, monkeypatch,
                                                                     tmp_path, notes):
    widget = SegmentWidget(make_napari_viewer())
    widget.models.load_file(save_test_model(tmp_path / "rgb.safetensors", in_channels=3))
    widget.threshold.value = 0.5
    image = (texture((96, 80, 3), seed=7) * 255).astype(np.uint8)
    widget.viewer.add_image(image, name="photo", rgb=True)
    monkeypatch.setattr("napari_alnet.engine.volume.routing.IN_MEMORY_VOXELS", 1000)
    assert widget.segment(), notes
    wait(qtbot, widget)
    assert widget.runner.last.status == "done", notes
    labels = widget.viewer.layers[widget.output_name()]
    assert isinstance(labels.data, StoreView) and labels.data.shape == (96, 80)
    expected = semantic_labels(widget.models.load("cpu").predict(image, rgb=True), 0.5)
    assert np.array_equal(labels.data[...], expected) and 0 < expected.mean() < 1


def test_each_dock_session_owns_its_speeds_and_temporary_stores(qtbot):
    """No module state: a session's measured speed and temporary folder are its own; the folder goes when its dock
    is destroyed unless a layer still shows one of its stores (then at exit)."""
    from qtpy.QtWidgets import QWidget

    first, second = VolumeSession(), VolumeSession()
    store = first.temporary_store("em (mito)")
    assert store.parent == first.folder() and store.name == "em--mito-1.zarr"
    assert first.folder() != second.folder()
    first.record_rate("cpu", 2.0, 1_000_000)  # 2 slices/s of a megapixel: 0.5 s per megapixel
    assert first.speeds.rate("cpu") == (0.5, "measured in this session")
    assert second.speeds.rate("cpu")[1] != "measured in this session"
    kept, gone = first.folder(), second.folder()
    for session, in_use in ((first, True), (second, False)):
        dock = QWidget()
        session.close_with(dock, lambda _folder, _in_use=in_use: _in_use)
        dock.deleteLater()
        qtbot.waitUntil(lambda _d=dock: _destroyed(_d), timeout=5000)
    assert kept.is_dir() and not gone.exists()
    first.cleanup()
    assert not kept.exists()


def _destroyed(widget) -> bool:
    try:
        widget.objectName()
    except RuntimeError:  # its C++ object was deleted
        return True
    return False
