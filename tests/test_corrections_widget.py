"""Corrections in a real napari viewer: painted voxels survive re-thresholding, re-segmenting and resumed runs;
undo works across a re-threshold; Segment again asks; proofreading; fine-tuning from a corrected result.

The network is replaced by a fixed probability ramp (``p = x / 63`` along X), so each threshold puts the boundary
at a known column and the tests can tell the network's labels from the user's.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from napari_alnet.engine import segmenter
from napari_alnet.engine.postprocess import semantic_labels
from napari_alnet.engine.progress import Progress
from napari_alnet.engine.volume import plan as volume_plan
from napari_alnet.engine.volume import tasks as volume_tasks
from napari_alnet.io.weights import ModelMetadata, save_weights
from napari_alnet.model import ALNet
from napari_alnet.widgets import FinetuneWidget, SegmentWidget, _corrections
from napari_alnet.widgets._corrections import corrections_of
from napari_alnet.widgets._volume import CorrectedView

pytestmark = [pytest.mark.gui, pytest.mark.usefixtures("forget_registered_models")]
WAIT_MS = 120_000
SIZE = 64
RAMP = np.broadcast_to(np.arange(SIZE, dtype=np.float32) / (SIZE - 1), (SIZE, SIZE))


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    return save_weights(ALNet(), ModelMetadata(card={"summary": "untrained test network"}),
                        tmp_path_factory.mktemp("weights") / "ramp-net.safetensors")


@pytest.fixture
def notes(monkeypatch) -> list[str]:
    seen: list[str] = []
    for module in ("segment", "finetune", "_worker", "_models", "_corrections"):
        for name in ("show_warning", "show_error", "show_info"):
            monkeypatch.setattr(f"napari_alnet.widgets.{module}.{name}", lambda msg, _s=seen: _s.append(str(msg)),
                                raising=False)
    return seen


class Answers(list):
    """The answers to the dock's questions, in order (a test appends them; none left: the default button);
    ``asked`` records each question's text."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: list[str] = []

    def __call__(self, title, text, choices, default) -> str:
        self.asked.append(text)
        assert default in choices
        return self.pop(0) if self else default


@pytest.fixture
def answers(monkeypatch) -> Answers:
    queue = Answers()
    monkeypatch.setattr(_corrections, "question", queue)
    return queue


@pytest.fixture
def dock(make_napari_viewer, model_file, monkeypatch) -> SegmentWidget:
    def ramp(_model, image, **_options):
        yield Progress(1, 1, "fake network")
        return np.broadcast_to(RAMP, np.shape(image)[:np.ndim(image)]).astype(np.float32)

    monkeypatch.setattr(segmenter, "probability_job", ramp)
    monkeypatch.setattr(volume_tasks, "probability_job", ramp)
    widget = SegmentWidget(make_napari_viewer())
    widget.models.load_file(model_file)  # registered as 'ramp-net', or 'ramp-net (2)' when a test did before
    widget.threshold.value = 0.5
    return widget


def stack(depth: int = 3) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 255, (depth, SIZE, SIZE), dtype=np.uint8)


def network(threshold: float, depth: int = 3) -> np.ndarray:
    return semantic_labels(np.broadcast_to(RAMP, (depth, SIZE, SIZE)), threshold)


def paint_patch(qtbot, layer, z: int, y: int, x: int, label: int, size: int = 9):
    """A brush stroke with napari's own paint (one undo step); returns the voxels it covers."""
    layer.brush_size = size
    before = np.array(layer.data, copy=True)
    layer.paint((z, y, x), label)
    qtbot.wait(20)  # the record takes the stroke once napari has written it
    return np.argwhere(layer.data != before)


def test_corrections_survive_rethreshold_and_undo_works_across_it(dock, qtbot, answers):
    viewer = dock.viewer
    viewer.add_image(stack(), name="img")
    assert dock.run_blocking()
    layer = viewer.layers[dock.output_name()]
    assert np.array_equal(layer.data, network(0.5))
    fg = paint_patch(qtbot, layer, 1, 20, 10, 1)  # missed foreground (the network says 0 left of x = 32)
    bg = paint_patch(qtbot, layer, 1, 40, 54, 0)  # a false positive erased
    assert len(fg) > 40 and len(bg) > 40
    assert corrections_of(layer).slices() == [1]
    qtbot.waitUntil(lambda: "1 slice" in dock.corrections.count.value, timeout=5000)
    assert "editable" in dock.corrections.state.value
    for t in (0.8, 0.2, 0.95, 0.05, 0.5):
        dock.threshold.value = t
        painted = np.array(layer.data, copy=True)
        assert (painted[tuple(fg.T)] == 1).all() and (painted[tuple(bg.T)] == 0).all(), t
        outside = np.ones(painted.shape, bool)
        outside[tuple(fg.T)] = outside[tuple(bg.T)] = False
        assert np.array_equal(painted[outside], network(t)[outside]), t
    # at 0.5 and 0.7 the network says the same under both strokes: undo gives back what was there before them
    dock.threshold.value = 0.7
    layer.undo()  # the erase
    layer.undo()  # the stroke
    qtbot.wait(300)
    assert np.array_equal(layer.data, network(0.7))
    dock.threshold.value = 0.2
    assert np.array_equal(layer.data, network(0.2)) and not corrections_of(layer)
    dock.threshold.value = 0.5
    layer.redo()  # the stroke comes back and is a correction again
    qtbot.wait(300)
    assert (layer.data[tuple(fg.T)] == 1).all()
    dock.threshold.value = 0.95
    assert (layer.data[tuple(fg.T)] == 1).all() and corrections_of(layer).slices() == [1]


def test_segment_again_asks_and_keeps_corrections_by_default(dock, qtbot, answers):
    viewer = dock.viewer
    viewer.add_image(stack(), name="img")
    assert dock.run_blocking()
    layer = viewer.layers[dock.output_name()]
    fg = paint_patch(qtbot, layer, 2, 30, 8, 1)
    answers.append(_corrections.CANCEL)
    assert not dock.run_blocking() and dock.runner.last.status == "done"
    assert "1 slice" in answers.asked[-1]
    dock.scope.value = "current slice"  # re-segment one slice: the corrections on it are drawn over the result
    viewer.dims.set_current_step(0, 2)
    assert dock.run_blocking()  # no answer: the default keeps them
    assert len(answers.asked) == 2 and viewer.layers[dock.output_name()] is layer
    assert (layer.data[tuple(fg.T)] == 1).all()
    answers.append(_corrections.DISCARD)
    assert dock.run_blocking()
    assert np.array_equal(layer.data, network(0.5)) and not corrections_of(layer)
    assert dock.run_blocking() and len(answers.asked) == 3  # nothing to keep: no question


def test_zarr_backed_result_is_editable_and_corrections_survive_threshold_and_resume(dock, qtbot, monkeypatch,
                                                                                     tmp_path, answers, notes):
    monkeypatch.setattr(volume_plan, "BLOCK_VOXELS", SIZE * SIZE)  # one slice per block
    ramp = volume_tasks.probability_job

    def slow_ramp(*args, **kwargs):
        time.sleep(0.3)  # so that Cancel lands mid-run
        return (yield from ramp(*args, **kwargs))

    monkeypatch.setattr(volume_tasks, "probability_job", slow_ramp)
    viewer = dock.viewer
    viewer.add_image(stack(8), name="vol")
    dock.output.value = tmp_path / "out.zarr"
    assert dock.segment(), notes
    dock.runner.worker.yielded.connect(lambda r: r.metrics.get("blocks_done", 0) >= 3 and dock.runner.cancel())
    qtbot.waitUntil(lambda: not dock.runner.running, timeout=WAIT_MS)
    assert dock.runner.last.status == "cancelled", notes
    layer = viewer.layers[dock.output_name()]
    assert isinstance(layer.data, CorrectedView) and layer.editable
    assert "editable" in dock.corrections.state.value
    fg = paint_patch(qtbot, layer, 1, 20, 10, 1)
    late = paint_patch(qtbot, layer, 7, 40, 10, 1)  # a slice the run has not reached yet
    assert len(fg) > 40 and len(late) > 40 and corrections_of(layer).slices() == [1, 7]
    assert dock.segment(), notes  # resumes; asked first, the default keeps the corrections
    assert len(answers.asked) == 1 and "2 slices" in answers.asked[0]
    qtbot.waitUntil(lambda: not dock.runner.running, timeout=WAIT_MS)
    assert dock.runner.last.status == "done" and dock.volume_summary.blocks_resumed >= 3, notes
    data = np.asarray(layer.data[...])
    assert (data[tuple(fg.T)] == 1).all() and (data[tuple(late.T)] == 1).all()
    store = zarr.open_array(str(tmp_path / "out.zarr" / "0"), mode="r")[...]
    assert np.array_equal(store, network(0.5, 8))  # the network's labels on disk are never written
    dock.threshold.value = 0.9
    data = np.asarray(viewer.layers[dock.output_name()].data[...])
    assert (data[tuple(fg.T)] == 1).all() and (data[tuple(late.T)] == 1).all()
    outside = np.ones(data.shape, bool)
    outside[tuple(fg.T)] = outside[tuple(late.T)] = False
    assert np.array_equal(data[outside], network(0.9, 8)[outside])
    layer.undo()  # the stroke on slice 7: napari writes through the view, the record follows
    assert corrections_of(layer).slices() == [1]
    assert dock.save_result(tmp_path / "saved.zarr"), notes  # the saved labels hold the corrections
    qtbot.waitUntil(lambda: not dock.runner.running, timeout=WAIT_MS)
    saved = zarr.open_array(str(tmp_path / "saved.zarr" / "0"), mode="r")[...]
    assert np.array_equal(saved, np.asarray(layer.data[...])) and (saved[tuple(fg.T)] == 1).all()
    tune = FinetuneWidget(viewer)  # the big result is training data as it is: only its corrected slice is read
    tune.image.value, tune.annotations.value = viewer.layers["vol"], layer
    tune.output.value, tune.preview.value, tune.mode.value = tmp_path / "t.safetensors", False, "scribbles"
    tune.refresh_slices()
    assert tune.slice_list.slices() == [1]
    with pytest.raises(ValueError, match="background"):  # only foreground was painted: scribbles need both
        tune.make_request()
    tune.mode.value = "dense"
    request = tune.make_request()
    assert request.slice_numbers == [1] and np.array_equal(request.labels[0], data[1])


def test_merge_split_and_delete_objects(dock, qtbot, answers, notes):
    viewer = dock.viewer
    viewer.add_image(stack(1)[0], name="img")
    dock.instances.value = True
    dock.threshold.value = 0.5
    assert dock.run_blocking()
    layer = viewer.layers[dock.output_name("instances")]
    layer.data[:, 40:] = 0  # make three objects by hand: one wide block and two small ones (corrections)
    layer.data[5:15, 45:50], layer.data[5:15, 55:60] = 7, 8
    layer.refresh()
    panel = dock.corrections
    points = panel.place_points()
    points.add([[10, 47], [10, 57]])
    assert panel.proofread("merge"), notes
    assert (layer.data[5:15, 45:50] == 7).all() and (layer.data[5:15, 55:60] == 7).all()
    layer.undo()
    assert (layer.data[5:15, 55:60] == 8).all()
    layer.redo()
    points.add([[10, 47], [30, 35]])
    assert not panel.proofread("split") and "inside the one object" in notes[-1]  # two objects
    points.data = np.zeros((0, 2))
    assert layer.data[30, 33] == layer.data[30, 38] != 0  # the network's object (x = 32 to 39)
    points.add([[30, 33], [30, 38]])
    assert panel.proofread("split"), notes
    assert len(np.unique(layer.data[layer.data > 0])) == 3  # the merged pair, and the wide object in two
    points.add([[10, 47]])
    assert panel.proofread("delete"), notes
    assert not (layer.data == 7).any()
    qtbot.wait(300)
    dock.threshold.value = 0.4  # edited objects survive a new threshold
    assert not (layer.data[5:15, 45:60] == 7).any() and len(np.unique(layer.data[layer.data > 0])) >= 2


def test_finetune_from_a_corrected_result_without_copying(dock, qtbot, answers, notes, tmp_path):
    viewer = dock.viewer
    image = viewer.add_image(stack(4), name="img")
    assert dock.run_blocking()
    layer = viewer.layers[dock.output_name()]
    fg = paint_patch(qtbot, layer, 1, 20, 10, 1)
    bg = paint_patch(qtbot, layer, 3, 40, 54, 0)
    tune = FinetuneWidget(viewer)
    tune.image.value, tune.annotations.value = image, layer
    tune.refresh_slices()
    assert tune.slice_list.slices() == [1, 3]  # the corrected slices, not every slice with foreground
    tune.output.value = tmp_path / "tuned.safetensors"
    tune.preview.value = False
    request = tune.make_request()
    assert request.slice_numbers == [1, 3] and request.slices == [0, 1]
    assert np.array_equal(request.labels[0], layer.data[1]) and request.labels[0][tuple(fg[:, 1:].T)].all()
    tune.mode.value = "scribbles"  # only the corrected voxels: 1 = painted foreground, 2 = erased
    paint_patch(qtbot, layer, 1, 50, 40, 0)  # some background on slice 1 too (scribbles need both)
    qtbot.wait(400)
    request = tune.make_request()
    marks = request.labels
    assert set(np.unique(marks[0])) == {0, 1, 2} and (marks[0][tuple(fg[:, 1:].T)] == 1).all()
    assert (marks[1][tuple(bg[:, 1:].T)] == 2).all() and (marks[1] != 2).sum() == marks[1].size - len(bg)
    assert [layer.name for layer in viewer.layers] == ["img", dock.output_name()]  # nothing was copied
    tune.mode.value = "dense"
    tune.epochs.value, tune.steps.value, tune.crop.value, tune.batch_size.value = 1, 1, 64, 2
    assert tune.run_blocking(), notes
    assert tune.runner.last.status == "done", notes
    assert tune.result is not None and Path(tune.result.out).is_file()


def test_uncertainty_layer_and_next_uncertain_slice(dock, qtbot, answers, notes, monkeypatch):
    def slanted(_model, image, **_options):  # slice z is unsure over a band that grows with z
        yield Progress(1, 1, "fake network")
        depth = np.shape(image)[0]
        return np.stack([np.clip(0.5 + (RAMP - 0.5) * (depth - z), 0, 1) for z in range(depth)]).astype(np.float32)

    monkeypatch.setattr(segmenter, "probability_job", slanted)
    viewer = dock.viewer
    viewer.add_image(stack(4), name="img")
    panel = dock.corrections
    assert panel.show_uncertainty() is None and "segment first" in notes[-1]
    assert dock.run_blocking()
    layer = panel.show_uncertainty()
    assert layer.name == f"{dock.output_name()} uncertainty" and layer.data.shape == (4, SIZE, SIZE)
    assert float(layer.data.max()) <= 1.0 and layer.data[3].mean() > layer.data[0].mean()
    assert panel.next_uncertain() == 3 and viewer.dims.current_step[0] == 3
    paint_patch(qtbot, viewer.layers[dock.output_name()], 2, 10, 10, 1)  # a corrected slice is not proposed again
    assert panel.next_uncertain() == 1
    assert panel.next_uncertain() == 0
