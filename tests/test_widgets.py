"""The Segment and Batch docks in a real napari viewer (pytest-qt + make_napari_viewer, under Xvfb)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_alnet.engine import batch, inference, segmenter
from napari_alnet.engine.postprocess import semantic_labels
from napari_alnet.engine.progress import Progress, StopRequested
from napari_alnet.engine.request import BLOCKWISE, IN_MEMORY, STREAMING
from napari_alnet.engine.volume import tasks as volume_tasks
from napari_alnet.io.sample_data import em_like_stack
from napari_alnet.io.weights import ModelMetadata, save_weights
from napari_alnet.model import ALNet
from napari_alnet.widgets import BatchWidget, SegmentWidget
from napari_alnet.widgets._worker import JobRunner

pytestmark = pytest.mark.gui
PLUGIN = "napari-alnet"
WAIT_MS = 120_000


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    """A small untrained AL-Net weight file (no shipped weights needed)."""
    path = tmp_path_factory.mktemp("weights") / "tiny.safetensors"
    meta = ModelMetadata(card={"summary": "untrained test network"})
    return save_weights(ALNet(), meta, path)


@pytest.fixture
def notes(monkeypatch) -> list[str]:
    """Messages the widgets send to napari notifications."""
    seen: list[str] = []
    for module in ("segment", "batch", "_worker", "_models"):
        for name in ("show_warning", "show_error", "show_info"):
            target = f"napari_alnet.widgets.{module}.{name}"
            monkeypatch.setattr(target, lambda msg, _seen=seen: _seen.append(str(msg)), raising=False)
    return seen


@pytest.fixture
def calls(monkeypatch) -> list[int]:
    """Counts calls of the network (``inference.probability_job``, as the Segment widget's segmenter calls it)."""
    counted: list[int] = []
    real = inference.probability_job

    def counting(*args, **kwargs):
        counted.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(segmenter, "probability_job", counting)
    return counted


def open_dock(viewer, name: str):
    _dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, name)
    return widget


@pytest.fixture
def segment(make_napari_viewer, model_file) -> SegmentWidget:
    viewer = make_napari_viewer()
    widget = open_dock(viewer, "Segment (AL-Net)")
    assert isinstance(widget, SegmentWidget)
    widget.models.load_file(model_file)
    return widget


def wait(qtbot, widget) -> None:
    runner = getattr(widget, "runner", widget)
    qtbot.waitUntil(lambda: not runner.running, timeout=WAIT_MS)


def em(depth: int = 1, size: int = 64) -> np.ndarray:
    return em_like_stack(depth=depth, size=size, cells=8, seed=1)[0]


def test_runner_reports_errors_and_hands_partial_results_on_cancel(qtbot, notes):
    from magicgui.widgets import Label, ProgressBar, PushButton

    run, cancel, bar, status = PushButton(), PushButton(), ProgressBar(), Label()
    runner = JobRunner("Test", progress_bar=bar, status=status, cancel_button=cancel, controls=[run])

    def failing():
        yield Progress(1, 3, "one")
        raise RuntimeError("boom")

    done: list = []
    assert runner.start(failing(), done.append)
    wait(qtbot, runner)
    assert runner.last.status == "failed" and "boom" in notes[-1] and not done
    assert run.enabled and not cancel.enabled and status.value == "failed"

    def endless():
        n = 0
        try:
            while True:
                n += 1
                yield Progress(n, 0, f"step {n}")
                time.sleep(0.005)
        except StopRequested:
            return n

    partial: list = []
    assert runner.start(endless(), done.append, on_cancelled=partial.append,
                        on_progress=lambda report: report.step == 3 and runner.cancel())
    assert not run.enabled and cancel.enabled
    wait(qtbot, runner)
    assert runner.last.status == "cancelled" and partial[0] >= 3 and not done
    runner.synchronous = True
    assert runner.start(iter_job([1, 2]), done.append)
    assert done == ["result"] and runner.last.status == "done"


def test_a_late_signal_of_the_last_worker_does_not_end_the_next_run(qtbot, notes):
    """The previous worker's ``finished`` still queued when the next run starts (seen under load in CI) must not
    mark the new run as failed; nor may its other signals reach the new run."""
    runner = JobRunner("Test")
    first: list = []
    assert runner.start(iter_job([1]), first.append)
    wait(qtbot, runner)
    old = runner.worker
    second: list = []

    def slow():
        time.sleep(0.3)
        yield Progress(1, 1)
        return "second"

    assert runner.start(slow(), second.append)
    old.finished.emit()  # what a late delivery of the first worker's signals looks like
    old.returned.emit("stale")
    assert runner.running and runner.last.status == "done" and first == ["result"]
    wait(qtbot, runner)
    assert runner.last.status == "done" and second == ["second"], notes


def iter_job(steps):
    for step in steps:
        yield Progress(step, len(steps))
    return "result"


def test_segment_2d_in_worker(segment, qtbot, notes):
    viewer = segment.viewer
    layer = viewer.add_image(em()[0], name="slice", scale=(2.0, 3.0), translate=(5.0, 7.0))
    assert segment.image.value is layer
    assert segment.segment()
    assert segment.runner.worker is not None
    wait(qtbot, segment)
    assert segment.runner.last.status == "done", notes
    labels = viewer.layers["slice (tiny)"]
    assert labels.data.shape == (64, 64) and labels.data.dtype == np.uint8
    np.testing.assert_allclose(labels.scale, (2.0, 3.0))
    np.testing.assert_allclose(labels.translate, (5.0, 7.0))
    assert "done on cpu" in segment.status.value
    assert segment.cancel_button.enabled is False and segment.run_button.enabled is True


def test_segment_stack_keeps_viewer_responsive(segment, qtbot, notes):
    from qtpy.QtCore import QTimer

    viewer = segment.viewer
    viewer.add_image(em(depth=6), name="stack", scale=(5.0, 1.0, 1.0))
    ticks: list[int] = []
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(segment.runner.running))
    timer.start(10)
    assert segment.segment()
    assert not segment.run_button.enabled  # controls are disabled while it runs
    wait(qtbot, segment)
    timer.stop()
    assert sum(ticks) >= 2, "the event loop did not run while the stack was segmented"
    assert segment.runner.last.status == "done", notes
    labels = viewer.layers["stack (tiny)"]
    assert labels.data.shape == (6, 64, 64) and labels.data.dtype == np.uint8
    np.testing.assert_allclose(labels.scale, (5.0, 1.0, 1.0))
    # running again updates the same layer instead of adding one
    count = len(viewer.layers)
    assert segment.run_blocking()
    assert len(viewer.layers) == count and viewer.layers["stack (tiny)"] is labels


def test_threshold_slider_never_reruns_the_network(segment, calls):
    viewer = segment.viewer
    viewer.add_image(em(depth=2), name="stack")
    segment.probabilities.value = True
    segment.instances.value = True
    assert segment.run_blocking()
    assert len(calls) == 1
    prob = viewer.layers["stack (tiny) probabilities"].data
    assert prob.dtype == np.float32 and prob.shape == (2, 64, 64)
    labels = viewer.layers["stack (tiny)"]
    instances = viewer.layers["stack (tiny) instances"]
    assert instances.data.dtype == np.int32
    for value in (float(np.quantile(prob, 0.3)), float(np.quantile(prob, 0.7)), 0.99, 0.01):
        segment.threshold.value = value
        assert np.array_equal(labels.data, semantic_labels(prob, segment.threshold.value))
    assert len(calls) == 1


def test_current_slice_of_a_stack(segment, calls):
    viewer = segment.viewer
    viewer.add_image(em(depth=3), name="stack")
    viewer.dims.set_current_step(0, 2)
    segment.scope.value = "current slice"
    segment.threshold.value = 0.01  # everything above 0.01 is foreground: the slice is visibly filled
    assert segment.run_blocking()
    labels = viewer.layers["stack (tiny)"].data
    assert labels.shape == (3, 64, 64)
    assert labels[2].any() and not labels[:2].any()


@pytest.fixture
def slow(monkeypatch) -> list[Progress]:
    """``probability_job`` pausing after each batch (so Cancel surely lands mid-stack); records the reports."""
    reports: list[Progress] = []
    real = inference.probability_job

    def slowed(*args, **kwargs):
        job = real(*args, **kwargs)

        def run():
            try:
                while True:
                    report = next(job)
                    reports.append(report)
                    yield report
                    time.sleep(0.3)
            except StopIteration as done:
                return done.value

        return _Delegate(run(), job)

    monkeypatch.setattr(segmenter, "probability_job", slowed)
    monkeypatch.setattr(batch, "probability_job", slowed)
    return reports


class _Delegate:
    """A generator wrapper that forwards ``throw`` (Cancel's ``StopRequested``) to the real job."""

    def __init__(self, outer, inner):
        self.outer, self.inner = outer, inner

    def __iter__(self):
        return self

    def __next__(self):
        return next(self.outer)

    def throw(self, exc):
        self.outer.close()
        return self.inner.throw(exc)

    def close(self):
        self.outer.close()
        self.inner.close()


def test_cancel_mid_stack_leaves_no_layer(segment, qtbot, slow):
    viewer = segment.viewer
    viewer.add_image(em(depth=12), name="stack")
    assert segment.segment()
    segment.runner.worker.yielded.connect(lambda _report: segment.runner.cancel())
    wait(qtbot, segment)
    assert segment.runner.last.status == "cancelled"
    assert len(slow) < slow[0].total  # stopped between slices, before the end
    assert [layer.name for layer in viewer.layers] == ["stack"]
    assert segment.run_button.enabled and not segment.cancel_button.enabled
    assert segment.output_name() is None


def test_bad_input_gives_notifications(segment, notes, calls):
    viewer = segment.viewer
    assert not segment.segment()
    assert "no image layer" in notes[-1]
    viewer.add_image(np.full((32, 32), 7, np.uint8), name="flat")
    assert not segment.segment()
    assert "constant" in notes[-1]
    viewer.layers.clear()
    viewer.add_image(np.zeros((2, 3, 32, 32), np.uint8) + np.arange(32, dtype=np.uint8), name="4d")
    assert not segment.segment()
    assert "Stack axis" in notes[-1]
    viewer.layers.clear()
    image = np.zeros((32, 32), np.float32)
    image[3, 3] = np.nan
    image[5, 5] = 1
    viewer.add_image(image, name="nan")
    assert not segment.run_blocking()  # refused by the core: its message says what to do
    assert "NaN" in notes[-1]
    assert [layer.name for layer in viewer.layers] == ["nan"]


def test_rgb_refused_when_the_model_says_so(make_napari_viewer, tmp_path, notes):
    path = save_weights(ALNet(), ModelMetadata(rgb_to_gray="refuse"), tmp_path / "gray-only.safetensors")
    viewer = make_napari_viewer()
    widget = SegmentWidget(viewer)
    widget.models.load_file(path)
    viewer.add_image(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8), name="rgb")
    assert widget.image.value.rgb
    assert not widget.segment()
    assert "RGB" in notes[-1] and "grayscale" in notes[-1]


def test_4d_layer_with_a_stack_axis(segment):
    viewer = segment.viewer
    data = np.stack([em(depth=2), em(depth=2)])  # (T=2, Z=2, Y, X)
    viewer.add_image(data, name="movie")
    assert not segment.stack_axis.native.isHidden()
    segment.stack_axis.value = 1
    viewer.dims.set_current_step(0, 1)
    assert segment.run_blocking()
    labels = viewer.layers["movie (tiny)"].data
    assert labels.shape == data.shape
    assert not labels[0].any()  # only t=1 was written


def test_image_picker_follows_layers(segment):
    viewer = segment.viewer
    a = viewer.add_image(em()[0], name="a")
    viewer.add_labels(np.zeros((8, 8), np.uint8), name="not an image")
    b = viewer.add_image(em()[0], name="b")
    assert set(segment.image.choices) == {a, b}
    a.name = "renamed"
    assert "renamed" in [segment.image.native.itemText(i) for i in range(segment.image.native.count())]
    viewer.layers.remove(b)
    assert set(segment.image.choices) == {a}


def test_models_registered_in_this_session_appear_at_once(segment, model_file):
    name = "mito (fine-tuned)"
    try:
        segment.models.registry.register("mito", model_file)
        labels = [segment.models.combo.native.itemText(i) for i in range(segment.models.combo.native.count())]
        assert name in labels and "Load weights…" in labels
        segment.models.select("mito")
        assert segment.models.summary.value == "untrained test network"
    finally:
        segment.models.registry.unregister("mito")
    assert "mito" not in segment.models.combo.choices


def test_batch_widget_processes_a_folder(make_napari_viewer, model_file, tmp_path, qtbot, notes):
    viewer = make_napari_viewer()
    widget = open_dock(viewer, "Batch segment (AL-Net)")
    assert isinstance(widget, BatchWidget)
    widget.models.load_file(model_file)
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    stack = em(depth=3)
    tifffile.imwrite(src / "a.tif", stack[0])
    tifffile.imwrite(src / "b.tif", stack[1:])
    (src / "broken.png").write_bytes(b"not a png")
    widget.folder.value = src
    widget.outdir.value = out
    assert widget.start()
    wait(qtbot, widget)
    assert widget.runner.last.status == "done", notes
    assert len(list(widget.summary.written)) == 2
    assert len(list(widget.summary.failures)) == 1
    assert "broken.png" in widget.report.value
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith("."))


def test_batch_cancel_keeps_finished_files_and_says_so(make_napari_viewer, model_file, tmp_path, qtbot, slow):
    widget = BatchWidget(make_napari_viewer())
    widget.models.load_file(model_file)
    src = tmp_path / "in"
    src.mkdir()
    for i in range(4):
        tifffile.imwrite(src / f"{i}.tif", em(depth=1)[0])
    widget.folder.value = src
    widget.outdir.value = tmp_path / "out"
    assert widget.start()
    # file 0 is complete once the batch reports progress on file 1
    widget.runner.worker.yielded.connect(lambda report: report.step >= 2 and widget.runner.cancel())
    wait(qtbot, widget)
    assert widget.runner.last.status == "cancelled"
    assert widget.summary.stopped and 1 <= len(widget.summary.written) < 4
    assert widget.report.value.startswith("cancelled")


def test_the_segment_dock_describes_its_run_as_one_request(segment, tmp_path):
    """The dock's choices are a ``SegmentRequest`` (the one the CLI would make): the route follows the choices."""
    layer = segment.viewer.add_image(em(depth=4), name="stack")
    segment.scope.value = "z-range"
    segment.z_from.value, segment.z_to.value = 1, 2
    request = segment.request(layer, "em", segment.region(layer))
    assert request.route == IN_MEMORY and request.scope.region[0] == slice(1, 3) and request.name == "layer 'stack'"
    assert request.threshold == pytest.approx(segment.threshold.value) and request.outputs.instances is None
    segment.instances.value = True
    assert segment.request(layer, "em").outputs.instances == "2d" and not segment.runs_blockwise(layer)
    segment.instances_3d.value = True
    assert segment.request(layer, "em").outputs.instances == "3d" and segment.runs_blockwise(layer)
    assert not segment.big_volume.native.isHidden()  # the output-store options show for a blockwise run
    segment.instances.value = False
    segment.output.value = tmp_path / "chosen"
    request = segment.request(layer, "em")
    assert request.outputs.out == tmp_path / "chosen.zarr" and request.route == BLOCKWISE


def test_the_batch_dock_streams_every_input_as_its_request(make_napari_viewer, model_file, tmp_path):
    widget = BatchWidget(make_napari_viewer())
    widget.models.load_file(model_file)
    model = widget.models.load("cpu")
    (tmp_path / "vol.zarr").mkdir()
    widget.instances.value = True
    request = widget.request([tmp_path / "a.tif", tmp_path / "vol.zarr"], tmp_path / "out", model)
    assert request.route == STREAMING and request.outputs.instances == "2d" and request.threshold is None


def test_batch_widget_refuses_missing_choices(make_napari_viewer, model_file, notes):
    widget = BatchWidget(make_napari_viewer())
    widget.models.load_file(model_file)
    assert not widget.start()
    assert "no input images" in notes[-1]


def test_screenshot_for_the_readme(make_napari_viewer, model_file, qtbot, tmp_path):
    """Grabs the docked widget over a segmented slice; NAPARI_ALNET_UPDATE_SCREENSHOT=1 writes it to
    docs/images/segment-widget.png for the README (otherwise a temporary file: tests leave the tree clean)."""
    import os

    from napari_alnet.io.pretrained import shipped_models

    viewer = make_napari_viewer(show=True)
    widget = open_dock(viewer, "Segment (AL-Net)")
    if "em" in shipped_models():
        widget.models.select("em")
    else:
        widget.models.load_file(model_file)
    stack = em_like_stack(depth=1, size=256, cells=40, seed=3)[0]
    viewer.add_image(stack[0], name="EM slice")
    widget.instances.value = False
    assert widget.run_blocking()
    labels = viewer.layers[widget.output_name()]
    labels.opacity = 0.5
    out = tmp_path / "segment-widget.png"
    if os.environ.get("NAPARI_ALNET_UPDATE_SCREENSHOT") == "1":
        out = Path(__file__).resolve().parents[1] / "docs" / "images" / "segment-widget.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    viewer.window._qt_window.resize(1200, 800)
    qtbot.wait(300)  # let the docks lay out before grabbing the window
    viewer.screenshot(str(out), canvas_only=False)
    assert out.stat().st_size > 10_000


def test_split_touching_objects_runs_in_the_worker_and_splits_instances(segment, monkeypatch, qtbot, notes):
    """Two touching discs: one object as connected components, two with 'Split touching objects', which runs
    blockwise in the worker (a split costs about 1 s per megapixel: never on the GUI thread, never per slider move)."""
    yy, xx = np.mgrid[:64, :64]
    discs = ((yy - 32) ** 2 + (xx - 22) ** 2 < 12 ** 2) | ((yy - 32) ** 2 + (xx - 42) ** 2 < 12 ** 2)

    def the_discs(_model, image, **_options):
        yield Progress(1, 1, "fake network")
        return np.broadcast_to(discs, np.shape(image)).astype(np.float32)  # (Y, X) in memory, (Z, Y, X) blockwise

    monkeypatch.setattr(segmenter, "probability_job", the_discs)
    monkeypatch.setattr(volume_tasks, "probability_job", the_discs)
    viewer = segment.viewer
    viewer.add_image(np.arange(64 * 64, dtype=np.uint16).reshape(64, 64), name="img")
    segment.instances.value = True
    assert not segment.watershed.native.isHidden() and not segment.watershed.value  # shown with Instances
    assert segment.run_blocking(), notes
    instances = viewer.layers["img (tiny) instances"]
    assert isinstance(instances.data, np.ndarray) and len(np.unique(instances.data)) == 2  # in memory: one object
    segment.watershed.value = True
    assert len(np.unique(instances.data)) == 2  # nothing is split on the GUI thread
    assert segment.segment(), notes
    wait(qtbot, segment)
    assert segment.runner.last.status == "done", notes
    ids = np.asarray(viewer.layers[segment.output_name("instances")].data[...]).reshape(64, 64)
    a, b = ids[32, 22], ids[32, 42]
    assert len(np.unique(ids)) == 3 and a and b and a != b
    segment.instances.value = False
    assert segment.watershed.native.isHidden()


def test_image_picker_follows_the_selection(segment):
    viewer = segment.viewer
    a = viewer.add_image(em()[0], name="a")
    assert segment.image.value is a
    b = viewer.add_image(em()[0], name="b")
    assert segment.image.value is b  # a newly added image is chosen
    viewer.layers.selection.active = a
    assert segment.image.value is a  # the layer the user selects
    viewer.add_labels(np.zeros((64, 64), np.uint8), name="labels")
    assert segment.image.value is a  # a Labels layer is not an image
    segment.probabilities.value = True
    assert segment.run_blocking()
    assert segment.output_name("probabilities") in viewer.layers
    assert segment.image.value is a  # the dock's own output layers do not take the picker over


def test_save_labels_keeps_the_pixel_size(segment, tmp_path, notes):
    from napari_alnet.io.stack_reader import open_slices
    from napari_alnet.io.volumes import open_volume

    viewer = segment.viewer
    viewer.add_image(em(depth=3), name="stack", scale=(50.0, 4.0, 4.0), units=("nm", "nm", "nm"))
    assert not segment.save_labels_button.enabled and segment.save_button.native.isHidden()
    segment.instances.value = True
    assert segment.run_blocking()
    assert segment.save_labels_button.enabled
    assert segment.save_button.native.isHidden() or not segment.save_button.enabled  # no big-volume result
    labels = viewer.layers[segment.output_name()].data
    ids = viewer.layers[segment.output_name("instances")].data
    tif = tmp_path / "result.tif"
    assert segment.runner.run_inline(lambda: segment.save_labels(tif)), notes
    np.testing.assert_array_equal(tifffile.imread(tif), labels)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "result_instances.tif"), ids)
    with open_slices(tif) as reader:
        assert reader.pixel_size.x == pytest.approx(0.004) and reader.pixel_size.z == pytest.approx(0.05)
    store = tmp_path / "result.zarr"
    assert segment.runner.run_inline(lambda: segment.save_labels(store)), notes
    volume = open_volume(store)
    np.testing.assert_array_equal(np.asarray(volume.data), labels)
    np.testing.assert_allclose(volume.geometry.scale, (0.05, 0.004, 0.004))
    assert "saved labels" in segment.status.value
    assert not segment.save_labels(tmp_path / "result.png") and ".tif" in notes[-1]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no partial files left


def test_batch_opens_each_output_as_it_is_written(make_napari_viewer, model_file, tmp_path, qtbot, notes):
    viewer = make_napari_viewer()
    widget = open_dock(viewer, "Batch segment (AL-Net)")
    widget.models.load_file(model_file)
    assert widget.threshold.native.text().startswith("model's threshold (")  # not "0.00"
    src = tmp_path / "in"
    src.mkdir()
    stack = em(depth=3)
    tifffile.imwrite(src / "a.tif", stack[0])
    tifffile.imwrite(src / "b.tif", stack[1:])
    widget.folder.value, widget.outdir.value = src, tmp_path / "out"
    widget.open_outputs.value = True
    seen, progress = [], widget._progress
    widget._progress = lambda report: (progress(report), seen.append(len(widget.opened)))
    assert widget.start()
    wait(qtbot, widget)
    assert widget.runner.last.status == "done", notes
    assert [p.name for p in widget.opened] == ["a_labels.tif", "b_labels.tif"]
    assert 1 in seen  # a.tif's labels were shown while b.tif was being segmented
    assert viewer.layers["a_labels"].data.shape == (64, 64)
    assert viewer.layers["b_labels"].data.shape == (2, 64, 64)


def test_finetune_stop_line_agrees_with_itself():
    from types import SimpleNamespace

    from napari_alnet.training.loop import TrainResult
    from napari_alnet.widgets.finetune import _ending

    request = SimpleNamespace(train=SimpleNamespace(epochs=10, steps_per_epoch=25))
    metrics = {"iou": 0.5, "dice": 0.6}
    stopped = TrainResult(out=Path("x"), best_epoch=1, best_metrics=metrics, epochs_done=0, steps_done=7,
                          stopped="stopped")
    assert _ending(stopped, request) == ("stopped after 0 of 10 epochs and 7 steps of epoch 1; kept the best: "
                                         "epoch 1, partly trained (validation IoU 0.500, Dice 0.600)")
    later = TrainResult(out=Path("x"), best_epoch=3, best_metrics=metrics, epochs_done=4, steps_done=100,
                        stopped="stopped")
    assert _ending(later, request).startswith("stopped after 4 of 10 epochs; kept the best: epoch 3 (")
    done = TrainResult(out=Path("x"), best_epoch=9, best_metrics=metrics, epochs_done=10, steps_done=250)
    assert _ending(done, request).startswith("finished after 10 of 10 epochs; kept the best: epoch 9 (")
