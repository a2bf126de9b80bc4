"""The Fine-tune dock in a real napari viewer (pytest-qt + make_napari_viewer, under Xvfb); tiny runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from qtpy.QtCore import QTimer

from napari_alnet import load_model
from napari_alnet.io.sample_data import em_like_stack
from napari_alnet.io.weights import ModelMetadata, save_weights
from napari_alnet.model import ALNet
from napari_alnet.training.finetune import finetune_recipe
from napari_alnet.training.live import LiveConfig
from napari_alnet.widgets import SegmentWidget
from napari_alnet.widgets.finetune import IOU, LOSS, FinetuneWidget

pytestmark = [pytest.mark.gui, pytest.mark.usefixtures("forget_registered_models")]
WAIT_MS = 60_000


@pytest.fixture(scope="module")
def base_file(tmp_path_factory) -> Path:
    """A tiny untrained base model."""
    path = tmp_path_factory.mktemp("base") / "base.safetensors"
    return save_weights(ALNet(), ModelMetadata(card={"summary": "untrained base"}), path)


@pytest.fixture(scope="module")
def stack() -> tuple[np.ndarray, np.ndarray]:
    return em_like_stack(depth=3, size=64, cells=8, seed=1)


@pytest.fixture
def notes(monkeypatch) -> list[str]:
    """Messages the dock sends to napari notifications."""
    seen: list[str] = []
    for module in ("finetune", "_finetune_run", "_finetune_request", "_worker", "_models", "_live"):
        for name in ("show_warning", "show_error", "show_info"):
            monkeypatch.setattr(f"napari_alnet.widgets.{module}.{name}", lambda msg, _s=seen: _s.append(str(msg)),
                                raising=False)
    return seen


@pytest.fixture
def dock(make_napari_viewer, base_file, tmp_path) -> FinetuneWidget:
    """The dock opened through the manifest, starting from the tiny base, with a few-step recipe."""
    viewer = make_napari_viewer()
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-alnet", "Fine-tune (AL-Net)")
    assert isinstance(widget, FinetuneWidget)
    widget.models.load_file(base_file)
    widget.scratch.value = False
    widget.epochs.value, widget.steps.value, widget.batch_size.value, widget.crop.value = 2, 2, 2, 64
    widget.minutes.value = 0.0  # no time limit: the same run on a busy machine
    widget.output.value = tmp_path / "mito.safetensors"
    return widget


def annotate(dock: FinetuneWidget, stack, slices=(0, 1), mode: str = "dense"):
    """Add the image and an annotations layer with dense masks or sparse scribbles on ``slices``."""
    images, truth = stack
    image = dock.viewer.add_image(images, name="em", scale=(2.0, 1.0, 1.0))
    layer = dock.add_annotations_layer()
    rng = np.random.default_rng(0)
    for z in slices:
        if mode == "dense":
            layer.data[z] = truth[z]
        else:
            keep = rng.random(truth[z].shape) < 0.2
            layer.data[z] = np.where(keep, np.where(truth[z], 1, 2), 0)
    dock.mode.value = mode
    dock.refresh_button.changed.emit(True)
    return image, layer


def wait(qtbot, dock: FinetuneWidget) -> None:
    qtbot.waitUntil(lambda: not dock.runner.running, timeout=WAIT_MS)


def test_dock_follows_layers_and_annotated_slices(dock, stack, qtbot):
    viewer = dock.viewer
    assert dock.image.value is None and dock.annotations.value is None
    image = viewer.add_image(stack[0], name="my stack", scale=(2.0, 1.0, 1.0), translate=(0.0, 5.0, 5.0))
    assert dock.image.value is image
    layer = dock.add_annotations_layer()
    assert dock.annotations.value is layer and layer.data.shape == (3, 64, 64)
    np.testing.assert_allclose(layer.scale, image.scale)
    np.testing.assert_allclose(layer.translate, image.translate)
    assert dock.slice_list.slices() == []
    layer.paint((1, 20, 20), 1)  # a brush stroke: the list follows (debounced)
    qtbot.waitUntil(lambda: dock.slice_list.slices() == [1], timeout=5000)
    layer.data[2, :5, :5] = 1
    dock.refresh_button.changed.emit(True)
    assert dock.slice_list.slices() == [1, 2]
    dock.slice_list.set_checked(1, False)
    layer.paint((0, 30, 30), 1)
    qtbot.waitUntil(lambda: dock.slice_list.slices() == [0, 1, 2], timeout=5000)
    assert dock.slice_list.checked() == [0, 2]  # unticked slices stay unticked
    assert dock.holdout.choices == (None, 0, 2)
    dock.scratch.value = True
    assert not dock.models.combo.enabled
    viewer.layers.remove(layer)
    assert dock.annotations.value is None and dock.slice_list.slices() == []


@pytest.mark.parametrize("mode", ["dense", "scribbles"])
def test_run_in_worker_saves_and_registers_the_model(dock, stack, qtbot, notes, mode):
    viewer = dock.viewer
    annotate(dock, stack, (0, 1, 2), mode)
    dense = mode == "dense"
    dock.holdout.value = 2 if dense else None
    dock.preview.value = dense
    viewer.dims.set_current_step(0, 1)
    assert dock.start()
    assert dock.runner.worker is not None and not dock.start_button.enabled
    wait(qtbot, dock)
    assert dock.runner.last.status == "done", notes
    out = Path(dock.output.value)
    card = load_model(out).metadata.card["finetune"]
    assert card["mode"] == mode and card["slices"] == [0, 1, 2] and card["image_layer"] == "em"
    assert Path(card["base"]).name == "base.safetensors"
    assert not out.with_name(out.name + ".ckpt").exists()
    assert len(dock.curve.series[LOSS]) >= 3
    assert len(dock.curve.series.get(IOU, [])) == (2 if dense else 0)
    assert dock.model_name == "mito" and str(out) in notes[-1]
    labels = [dock.models.combo.native.itemText(i) for i in range(dock.models.combo.native.count())]
    assert "mito (v1, fine-tuned from base)" in labels
    segment = SegmentWidget(viewer)
    assert "mito" in segment.models.combo.choices
    if dense:
        assert "validation IoU" in dock.report.value
        preview = viewer.layers["em (fine-tune preview)"].data
        assert preview.shape == (3, 64, 64) and preview[1].any() and not preview[0].any()
    assert dock.start_button.enabled and not dock.stop_button.enabled


def test_report_gives_the_best_epoch_as_the_model_card_and_the_cli_do(dock, stack, notes):
    annotate(dock, stack, (0, 1, 2))
    dock.holdout.value, dock.preview.value, dock.epochs.value = 2, False, 3
    assert dock.run_blocking()
    assert dock.runner.last.status == "done", notes
    result = dock.result
    ious = [row["val_iou"] for row in result.history]
    best = 1 + int(np.argmax(ious))  # epochs count from 1; a later epoch must beat the IoU to replace the best
    card = load_model(Path(dock.output.value)).metadata.card["training"]
    assert len(ious) == result.epochs_done == 3
    assert result.best_epoch == card["best_epoch"] == best
    assert f"finished after 3 of 3 epochs; kept the best: epoch {best} (" in dock.report.value, dock.report.value


def test_stop_keeps_the_best_weights(dock, stack, qtbot, notes):
    viewer = dock.viewer
    annotate(dock, stack)
    dock.epochs.value, dock.preview.value = 50, False
    assert dock.start()
    dock.runner.worker.yielded.connect(lambda report: report.step >= 3 and dock.runner.cancel())
    wait(qtbot, dock)
    assert dock.runner.last.status == "cancelled", notes
    result = dock.result
    assert result.stopped == "stopped" and result.steps_done < 100
    out = Path(dock.output.value)
    assert load_model(out).metadata.card["finetune"]["slices"] == [0, 1]
    assert dock.report.value.startswith("stopped") and dock.model_name == "mito"
    assert dock.status.value.startswith("stopped after") and dock.report.value.startswith(dock.status.value)
    segment = SegmentWidget(viewer)  # the saved model segments in the Segment dock
    segment.models.select("mito")
    assert segment.run_blocking()
    assert viewer.layers["em (mito)"].data.shape == (3, 64, 64)


def test_painting_during_training_does_not_change_the_run(dock, stack, qtbot, notes):
    _image, layer = annotate(dock, stack)
    snapshot = layer.data.copy()
    dock.preview.value = False
    assert dock.start()

    repainted: list[int] = []

    def repaint(report):
        if not repainted:  # the first report this test sees
            repainted.append(report.step)
            layer.data[:] = 0  # the user erases everything and annotates another slice meanwhile
            layer.paint((2, 10, 10), 1)

    dock.runner.worker.yielded.connect(repaint)
    wait(qtbot, dock)
    assert dock.runner.last.status == "done", notes
    assert repainted and repainted[0] < 4 and not layer.data[:2].any()
    assert np.array_equal(dock.request.labels, snapshot)
    assert load_model(Path(dock.output.value)).metadata.card["finetune"]["slices"] == [0, 1]
    dock.refresh_slices()
    assert dock.slice_list.slices() == [2]  # the list follows the layer, the finished run did not


def test_bad_input_gives_a_notification_and_starts_nothing(dock, stack, notes, tmp_path, base_file):
    viewer = dock.viewer

    def refused(expected: str) -> None:
        before = [layer.name for layer in viewer.layers]
        assert not dock.start()
        assert expected in notes[-1], notes[-1]
        assert dock.runner.last is None and not dock.runner.running
        assert [layer.name for layer in viewer.layers] == before
        assert not list(tmp_path.rglob("*.safetensors"))  # no file written

    refused("no image layer")
    images, truth = stack
    viewer.add_image(images, name="em")
    refused("no annotations layer")
    layer = dock.add_annotations_layer()
    refused("empty")
    layer.data[0] = truth[0]
    dock.refresh_slices()
    dock.slice_list.set_checked(0, False)
    refused("no annotated slice is ticked")
    dock.slice_list.set_checked(0, True)
    dock.holdout.value = 0
    refused("held out")
    dock.holdout.value = None
    dock.mode.value = "scribbles"
    refused("background")  # dense masks read as scribbles: foreground 1 only
    layer.data[1, :4, :4] = 3
    refused("values")
    dock.mode.value = "dense"
    small = viewer.add_labels(np.ones((3, 32, 32), np.uint8), name="small")
    dock.annotations.value = small
    refused("shape")
    dock.annotations.value = layer
    dock.output.value = tmp_path
    refused("folder")
    (tmp_path / "file.txt").write_text("x")
    dock.output.value = tmp_path / "file.txt" / "m.safetensors"
    refused("cannot write")
    dock.output.value = tmp_path / "m.tif"
    refused(".safetensors")
    assert np.array_equal(layer.data[0], truth[0])  # nothing lost


def test_2d_image_inline_with_preview_and_menu_entry(dock, stack):
    import npe2

    import napari_alnet

    manifest = npe2.PluginManifest.from_file(Path(napari_alnet.__file__).parent / "napari.yaml")
    menu = [item.command for item in manifest.contributions.menus["napari/layers/segment"]]
    assert "napari-alnet.finetune_widget" in menu
    images, truth = stack
    dock.viewer.add_image(images[0], name="slice")
    layer = dock.add_annotations_layer()
    layer.data[:] = truth[0]
    dock.epochs.value = dock.steps.value = 1
    assert dock.run_blocking()
    assert dock.runner.last.status == "done"
    assert dock.viewer.layers["slice (fine-tune preview)"].data.shape == (64, 64)
    assert "training loss" in dock.report.value and dock.model_name == "mito"


def test_export_button_writes_a_checked_package_with_the_fine_tune_provenance(dock, stack, notes, tmp_path):
    """Export (next to Save to) after a fine-tune: a bioimage.io package beside the weights, in the JobRunner, with
    the fine-tune provenance in its card and README; it loads back to the same probabilities."""
    pytest.importorskip("bioimageio.spec", reason="the export extra is not installed")
    pytest.importorskip("onnxruntime", reason="the export extra is not installed")
    import json
    import zipfile

    import yaml

    from napari_alnet.widgets._finetune_run import _export_path

    assert not dock.export() and "nothing to export yet" in notes[-1]
    annotate(dock, stack, (0, 1))
    dock.epochs.value = dock.steps.value = 1
    assert dock.run_blocking() and dock.runner.last.status == "done", notes
    assert dock.runner.run_inline(dock.export)
    assert dock.runner.last.status == "done", notes
    report = dock.export_report
    assert report.path == tmp_path / "mito.bioimageio.zip" and report.path.is_file()
    assert set(report.tests.values()) == {"passed"} and all(c.passed for c in report.checks)
    assert "exported" in dock.report.value and str(report.path) in notes[-1]
    with zipfile.ZipFile(report.path) as zf:
        rdf = yaml.safe_load(zf.read("rdf.yaml"))
        readme = zf.read("README.md").decode()
    tune = json.loads(rdf["config"]["napari_alnet"]["card"])["finetune"]
    assert tune["image_layer"] == "em" and tune["slices"] == [0, 1] and Path(tune["base"]).name == "base.safetensors"
    assert "Fine-tuned in napari-alnet from" in readme
    image = stack[0][2]
    assert np.array_equal(load_model(report.path, device="cpu").predict(image),
                          load_model(Path(dock.output.value), device="cpu").predict(image))
    assert _export_path(Path(dock.output.value)).name == "mito-2.bioimageio.zip"  # never replaces an export


def test_quick_is_the_default_and_the_dock_estimates_the_run(make_napari_viewer):
    viewer = make_napari_viewer()
    dock = FinetuneWidget(viewer)
    assert dock.preset.value == "quick"
    quick = finetune_recipe("quick")
    assert (dock.epochs.value, dock.steps.value, dock.crop.value) == (quick.epochs, quick.steps_per_epoch, quick.crop)
    assert f"{quick.epochs * quick.steps_per_epoch} steps" in dock.estimate.value
    assert "assumed" in dock.estimate.value and ("min" in dock.estimate.value or " s" in dock.estimate.value)
    dock.preset.value = "thorough"
    thorough = finetune_recipe("thorough")
    assert (dock.epochs.value, dock.crop.value) == (thorough.epochs, thorough.crop)
    found = dock.update_estimate()
    assert found.steps == thorough.epochs * thorough.steps_per_epoch and found.seconds > 60
    assert f"{found.steps} steps" in dock.estimate.value and "min" in dock.estimate.value
    dock.epochs.value = 2
    assert "50 steps" in dock.estimate.value


def test_progress_in_steps_and_seconds_and_a_measured_estimate_after_a_run(dock, stack, notes):
    annotate(dock, stack, (0, 1))
    dock.preview.value = False
    seen: list[str] = []
    relay = dock.runner._on_progress

    def watch(report) -> None:
        relay(report)
        seen.append(dock.status.value)

    dock.runner._on_progress = watch
    assert dock.run_blocking() and dock.runner.last.status == "done", notes
    steps = [text for text in seen if text.startswith("step ")]
    assert steps and all(" s" in text and "epoch" in text for text in steps), seen
    assert "4 steps" in dock.report.value and "s per step" in dock.report.value
    assert "measured" in dock.estimate.value


def _em_dock(make_napari_viewer, tmp_path, stack):
    """A dock starting from the shipped ``em`` (label 1 = membrane) on a generated EM stack, a few steps."""
    viewer = make_napari_viewer()
    dock = FinetuneWidget(viewer)
    dock.models.select("em")
    dock.scratch.value = False
    dock.epochs.value, dock.steps.value, dock.batch_size.value, dock.crop.value = 1, 2, 2, 64
    dock.minutes.value, dock.preview.value = 0.0, False
    dock.output.value = tmp_path / "cells.safetensors"
    images, _truth = stack
    viewer.add_image(images, name="em")
    return dock, dock.add_annotations_layer()


@pytest.fixture(scope="module")
def em_stack():
    return em_like_stack(depth=2, size=128, cells=12, seed=2)


def test_painted_cells_on_a_membrane_model_offer_to_flip(make_napari_viewer, tmp_path, em_stack, notes, qtbot,
                                                         monkeypatch):
    """Cells painted as label 1 while em's label 1 is membrane: the dock says so before training; the user flips
    (the real dialog is answered); the new model's label 1 is the cell interior."""
    from qtpy.QtWidgets import QApplication, QMessageBox

    dock, layer = _em_dock(make_napari_viewer, tmp_path, em_stack)
    assert "label 1 = membrane" in dock.models.summary.value
    layer.data[0] = ~em_stack[1][0]  # the cells, not the membranes
    dock.refresh_slices()
    asked: list[str] = []

    def answer() -> None:
        box = QApplication.activeModalWidget()
        if not isinstance(box, QMessageBox):
            QTimer.singleShot(20, answer)
            return
        asked.append(box.text())
        next(b for b in box.buttons() if b.text() == "Flip the meaning").click()

    QTimer.singleShot(0, answer)
    assert dock.run_blocking() and dock.runner.last.status == "done", notes
    assert asked and "membrane" in asked[0] and "cell interior" in asked[0]
    assert dock.meaning.flipped and dock.meaning.on_background > 0.5 and dock.request.flip
    meta = load_model(Path(dock.result.out)).metadata
    assert meta.card["foreground"] == "cell interior" and meta.card["finetune"]["flipped"]
    assert meta.objects == "foreground"  # em's objects are its background (cells): now label 1
    assert dock.models.value == "cells"  # the new model is chosen; its label 1 is what was painted
    assert dock.models.summary.value.endswith("label 1 = cell interior")
    dock.models.select("em")
    monkeypatch.setattr("napari_alnet.widgets._finetune_run.ask_flip", lambda *_: "cancel")
    assert not dock.start() and not dock.runner.running  # cancelled: nothing starts


def test_painted_membranes_on_a_membrane_model_are_not_questioned(make_napari_viewer, tmp_path, em_stack, notes,
                                                                  monkeypatch):
    dock, layer = _em_dock(make_napari_viewer, tmp_path, em_stack)
    layer.data[0] = em_stack[1][0]
    dock.refresh_slices()
    asked: list[str] = []
    monkeypatch.setattr("napari_alnet.widgets._finetune_run.ask_flip",
                        lambda _parent, text: asked.append(text) or "flip")
    dock.foreground.value = "plasma membrane"
    assert dock.run_blocking() and dock.runner.last.status == "done", notes
    assert not asked and not dock.meaning.flipped and not dock.request.flip
    card = load_model(Path(dock.result.out)).metadata.card
    assert card["foreground"] == "plasma membrane" and not card["finetune"]["flipped"]


def test_each_run_saves_a_new_version_the_segment_dock_follows_and_goes_back(dock, stack, notes):
    viewer = dock.viewer
    segment = SegmentWidget(viewer)
    segment.models.select("base")
    annotate(dock, stack, (0, 1, 2))
    dock.holdout.value, dock.preview.value = 2, False
    assert dock.run_blocking() and dock.runner.last.status == "done", notes
    first = Path(dock.output.value)
    assert dock.result.out == first and dock.model_name == "mito"
    frozen = first.read_bytes()
    assert segment.models.value == "mito"  # a fine-tune of the model Segment showed: it follows
    dock.slice_list.set_checked(1, False)
    assert dock.run_blocking() and dock.runner.last.status == "done", notes
    second = Path(dock.result.out)
    assert second == first.with_name("mito-v2.safetensors") and first.read_bytes() == frozen  # never overwritten
    card = load_model(second).metadata.card["finetune"]
    assert card["parent"] == "mito" and card["version"] == 2 and card["parent_version"] == 1
    assert card["slices"] == [0, 2] and 0.0 <= card["iou"] <= 1.0 and card["holdout"] == 2
    first_card = load_model(first).metadata.card["finetune"]
    assert first_card["version"] == 1 and Path(first_card["parent"]).name != "mito"
    assert segment.models.value == "mito-v2" and dock.models.value == "mito-v2"
    labels = [segment.models.combo.native.itemText(i) for i in range(segment.models.combo.native.count())]
    assert "mito-v2 (v2, fine-tuned from mito)" in labels and "mito (v1, fine-tuned from base)" in labels
    assert segment.models.summary.value.endswith("label 1 = foreground")  # inherited from the (unnamed) base
    segment.models.select("em")
    assert segment.models.summary.value.endswith("label 1 = membrane")  # the Segment dock says it too
    segment.models.select("mito")  # back to the earlier version
    assert segment.run_blocking()
    assert viewer.layers["em (mito)"].data.shape == (3, 64, 64)


def scribble(layer, truth: np.ndarray, z: int, seed: int) -> None:
    """Brush strokes as a user paints them: dots of label 1 on foreground and 2 on background of slice ``z``."""
    rng = np.random.default_rng(seed)
    layer.brush_size = 3
    for label, where in ((1, truth[z]), (2, ~truth[z])):
        ys, xs = np.nonzero(where)
        for i in rng.choice(ys.size, 12, replace=False):
            layer.paint((z, ys[i], xs[i]), label)


def test_live_mode_previews_while_painting_picks_up_new_strokes_and_stop_saves(dock, stack, qtbot, notes):
    images, truth = stack
    viewer = dock.viewer
    viewer.add_image(images, name="em", scale=(2.0, 1.0, 1.0))
    layer = dock.add_annotations_layer()
    dock.mode.value = "scribbles"
    dock.live.config = LiveConfig(preview_seconds=0.2, min_steps=1, idle_seconds=0.02)
    viewer.dims.set_point(0, 0.0)
    dock.live.toggle.value = True
    assert dock.live.running and dock.runner.running and dock.live.toggle.enabled
    assert not dock.start_button.enabled  # one run at a time
    scribble(layer, truth, 0, seed=0)
    qtbot.waitUntil(lambda: dock.live.last is not None, timeout=WAIT_MS)
    assert "em (live preview)" in viewer.layers and dock.live.last["slices"] == [0]
    assert viewer.layers["em (live preview)"].data[0].any() and layer.data[1].sum() == 0
    first = dock.live.last["snapshot"]
    scribble(layer, truth, 1, seed=1)  # painting goes on while it trains
    viewer.dims.set_point(0, 2.0)  # the user moves to slice 1 (z scale 2)
    qtbot.waitUntil(lambda: dock.live.last["snapshot"] > first and dock.live.last["preview_slice"] == 1,
                    timeout=WAIT_MS)
    assert dock.live.last["slices"] == [0, 1] and viewer.layers["em (live preview)"].data[1].any()
    painted = layer.data.copy()
    dock.live.toggle.value = False  # stop: the newest weights become a new version of the model
    wait(qtbot, dock)
    assert not dock.live.running and not dock.live.toggle.value and dock.start_button.enabled
    out = Path(dock.result.out)
    assert out == Path(dock.output.value) and out.is_file(), notes
    assert np.array_equal(layer.data, painted) and set(np.unique(painted)) == {0, 1, 2}  # never overwritten
    card = load_model(out).metadata.card["finetune"]
    assert card["live"] and card["slices"] == [0, 1] and card["version"] == 1 and card["steps"] >= 2
    assert dock.model_name == "mito" and dock.status.value.startswith("live mode off after")
    assert "mito" in [entry.name for entry in dock.models.registry.entries()]  # the Segment dock lists it
    assert "'mito' is now in the Segment model list" in dock.report.value


def test_live_mode_stopped_before_painting_writes_nothing(dock, stack, qtbot, notes):
    images, _truth = stack
    dock.viewer.add_image(images, name="em")
    dock.add_annotations_layer()
    dock.live.config = LiveConfig(idle_seconds=0.02)
    dock.live.toggle.value = True
    qtbot.waitUntil(lambda: "paint foreground and background" in dock.status.value, timeout=WAIT_MS)
    dock.stop_button.changed.emit(True)  # Stop ends live mode as well
    wait(qtbot, dock)
    assert not dock.live.toggle.value and "nothing was written" in dock.status.value
    assert not Path(dock.output.value).exists()
    dock.viewer.layers.clear()
    dock.live.toggle.value = True  # no image: refused with a message, the toggle goes back off
    assert not dock.live.toggle.value and not dock.runner.running
    assert any("Live mode needs an image" in note for note in notes)
