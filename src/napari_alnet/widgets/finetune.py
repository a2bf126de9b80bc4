"""The 'Fine-tune (AL-Net)' dock: train AL-Net on slices the user annotated in a Labels layer.

Everything is checked in the GUI thread before training starts (a notification says what is wrong and what to
do; nothing starts). The request copies image and annotations, so painting during training changes nothing in
the run. The best weights are written to the output file as they improve; after finishing or Stop the model is
registered (every model picker lists it at once) and the file works with ``alnet segment --model FILE``; Export
writes it as a checked bioimage.io package beside the file (``engine.export``, in a worker).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import dask.array as da
import napari
import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    FileEdit,
    FloatSpinBox,
    Label,
    LineEdit,
    ProgressBar,
    PushButton,
    RadioButtons,
    SpinBox,
)
from napari.layers import Image, Labels
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QMessageBox

from ..engine.devices import resolve_device
from ..engine.export import ExportReport, export_job
from ..engine.progress import Progress
from ..engine.registry import ModelRegistry, next_version
from ..engine.volume.routing import IN_MEMORY_VOXELS
from ..io.weights import WeightsError
from ..training.estimate import Estimate, StepTimes, estimate
from ..training.finetune import (
    MODES,
    AnnotationError,
    FinetuneRequest,
    annotated_slices,
    check_annotations,
    finetune_job,
    finetune_recipe,
)
from ..training.loop import TrainResult, training_precision
from ..training.meaning import MeaningCheck, check_meaning
from ._corrections import corrections_of, training_marks
from ._curve import CurveWidget
from ._layers import (
    CURRENT_SLICE,
    InputProblem,
    base_data,
    choose_selected,
    follow_renames,
    region_for,
    spatial_shape,
    upsert,
)
from ._layout import ScrollDock, Section
from ._live import LivePresenter, painted_labels
from ._models import ModelPicker
from ._slices import SliceList, embed, painted_slices
from ._worker import JobRunner, unwrap

NAME = "Fine-tune (AL-Net)"
NO_HOLDOUT = "(none)"
LOSS, IOU = "loss", "val IoU"


class FinetuneWidget(ScrollDock):
    """Choose an image, its annotations and a starting model; press Fine-tune; watch the curve; Stop any time.

    Scripting/tests: set the widgets' values, then ``start()`` (threaded) or ``run_blocking()`` (inline);
    ``runner`` is the ``JobRunner``, ``request`` the last started ``FinetuneRequest``, ``result`` its
    ``TrainResult`` and ``model_name`` the registry name of the saved model.
    """

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__()
        self.viewer = unwrap(viewer)
        self.request: FinetuneRequest | None = None
        self.result: TrainResult | None = None
        #: The step times this dock's runs measured (its estimates use them).
        self.step_times = StepTimes()
        self.model_name: str | None = None
        self.export_report: ExportReport | None = None
        #: What the last label-meaning check found (None: not checked, e.g. from scratch).
        self.meaning: MeaningCheck | None = None
        self._watched: Labels | None = None
        #: A big annotations layer and its annotated slices, kept current from its paint events.
        self._tracked: tuple[Labels, set[int]] | None = None
        self._recheck: set[int] = set()
        self._suggested: Path | None = None
        inputs, recipe, run = self._build_inputs(), self._build_recipe(), self._build_run()
        controls = [w for w in (*inputs, *recipe) if w not in (self.models.summary, self.estimate)]  # labels
        self.runner = JobRunner(NAME, progress_bar=self.progress, status=self.status, cancel_button=self.stop_button,
                                controls=[*controls, self.start_button])
        #: The *Live* toggle and its runs (``widgets._live``).
        self.live = LivePresenter(self.viewer, self.runner, make_request=self.live_request,
                                  on_saved=self._live_saved, on_progress=self._live_progress)
        self.extend([*inputs, *recipe, run[0], self.live.toggle, *run[1:]])
        self._connect()
        self._on_layers()
        self._on_scratch()
        self._on_preset()

    def _build_inputs(self) -> list:
        """Image, annotations, mode and slice list; returns the widgets in dock order."""
        self.image = ComboBox(label="Image", choices=self._image_choices, tooltip="the image that was annotated; "
                              "follows the image layer you select in the layer list")
        self.annotations = ComboBox(label="Annotations", choices=self._annotation_choices,
                                    tooltip="a Labels layer with the image's shape holding your annotations (or a "
                                            "Segment result you corrected); follows the Labels layer you select")
        self.new_labels = PushButton(text="New annotations layer",
                                     tooltip="an empty Labels layer matching the image (shape, scale, translate)")
        self.mode = RadioButtons(label="Mode", choices=list(MODES), value="dense", orientation="horizontal",
                                 tooltip="dense: whole slices, 0 = background, ≥1 = foreground; scribbles: "
                                         "1 = foreground, 2 = background, 0 = unlabelled (ignored)")
        self.slice_list = SliceList()
        self.slice_box = embed(self.slice_list, "Slices")
        self.refresh_button = PushButton(text="Refresh slices", tooltip="look again for the slices that hold "
                                         "annotations (done for you as you paint)")
        self._refresh_timer = QTimer()
        self._refresh_timer.setSingleShot(True)
        self._refresh_timer.setInterval(300)
        return [self.image, self.annotations, self.new_labels, self.mode, self.slice_box, self.refresh_button]

    def _build_recipe(self) -> list:
        """Starting model, training options, hold-out slice, preview and output file, in dock order."""
        self.models = ModelPicker("Start from")
        self.scratch = CheckBox(text="Train from scratch (random weights)", value=self.models.value is None,
                                tooltip="start from random weights instead of a trained model: needs many more "
                                        "annotated slices and epochs")
        self.preset = RadioButtons(label="Preset", choices=[("Quick", "quick"), ("Thorough", "thorough")],
                                   value="quick", orientation="horizontal",
                                   tooltip="Quick: small crops around your annotations, a first preview within "
                                           "seconds, done within 2 minutes on a laptop; Thorough: the longer recipe "
                                           "(bigger crops, more steps). Sets the options below")
        self.epochs = SpinBox(label="Epochs", min=1, max=1000, value=10,
                              tooltip="rounds of training; after each, the hold-out slice is measured and the best "
                                      "weights so far are saved")
        self.steps = SpinBox(label="Steps / epoch", min=1, max=10_000, value=25,
                             tooltip="training steps per epoch; each step learns from one batch of random crops")
        self.lr = FloatSpinBox(label="Learning rate", min=0.0001, max=0.1, step=0.0001, value=0.001,
                               tooltip="how far each step moves the weights: smaller is slower but safer for a "
                                       "model that is already good")
        self.batch_size = SpinBox(label="Batch size", min=1, max=64, value=4,
                                  tooltip="crops per training step: more is steadier but slower and needs more memory")
        self.crop = SpinBox(label="Crop size", min=32, max=1024, step=32, value=256,
                            tooltip="edge of the random training crops in pixels")
        self.minutes = FloatSpinBox(label="Time limit (min)", min=0.0, max=1440.0, step=0.5, value=0.0,
                                    tooltip="stop cleanly after this many minutes, keeping the best weights so far "
                                            "(0 = no limit; Quick: 2)")
        self.advanced = Section("Advanced", [self.epochs, self.steps, self.lr, self.batch_size, self.crop,
                                             self.minutes],
                                tooltip="the training recipe (the preset sets these)")
        self.estimate = Label(value="", tooltip="steps x seconds per step (measured on this computer by an earlier "
                              "run with the same crops and batch, else assumed for a 2-core laptop) plus validation")
        self.foreground = LineEdit(label="Label 1 is", tooltip="what your label 1 marks (e.g. cell, membrane); empty: "
                                   "what the starting model's label 1 is. Recorded in the new model's card")
        self.holdout = ComboBox(label="Hold out", choices=self._holdout_choices,
                                tooltip="an annotated slice kept out of training to measure validation IoU")
        self.preview = CheckBox(text="Live preview of the current slice", value=True,
                                tooltip="after each epoch, predict the current slice into a preview layer")
        self.output = FileEdit(label="Save to", mode="w", filter="AL-Net weights (*.safetensors)",
                               tooltip="the new model's weight file (.safetensors); it works in every dock and with "
                                       "'alnet segment --model FILE'")
        self.export_button = PushButton(text="Export…", tooltip="after fine-tuning: write the model as a bioimage.io "
                                        "package (ilastik, deepImageJ, QuPath) beside its weight file, checked")
        return [self.models.combo, self.models.summary, self.scratch, self.preset, self.advanced, self.estimate,
                self.foreground, self.holdout, self.preview, self.output, self.export_button]

    def _build_run(self) -> list:
        """Start/Stop, progress, status, the loss/IoU curve and the final report, in dock order."""
        self.start_button = PushButton(text="Fine-tune", tooltip="train on the ticked slices in the background; "
                                       "the curve shows the loss and the hold-out IoU")
        self.stop_button = PushButton(text="Stop", tooltip="stop now and keep the best weights so far")
        self.progress = ProgressBar(label="", tooltip="training progress (details in napari's activity dock)")
        self.status = Label(value="", tooltip="what the run is doing")
        self.curve = CurveWidget(fixed={IOU: (0.0, 1.0)})
        self.report = Label(value="", tooltip="how the last run ended and where its model is")
        self.report.native.setWordWrap(True)
        return [self.start_button, self.stop_button, self.progress, self.status, embed(self.curve), self.report]

    def _connect(self) -> None:
        """Buttons, pickers and layer events to their handlers."""
        self._refresh_timer.timeout.connect(self._refresh)
        self.start_button.changed.connect(self.start)
        self.export_button.changed.connect(self.export)
        self.new_labels.changed.connect(self.add_annotations_layer)
        self.refresh_button.changed.connect(self.refresh_slices)
        self.image.changed.connect(self._on_image)
        self.annotations.changed.connect(self._on_labels)
        self.scratch.changed.connect(self._on_scratch)
        self.viewer.layers.selection.events.active.connect(self._on_selected)
        self.preset.changed.connect(self._on_preset)
        for widget in (self.epochs, self.steps, self.batch_size, self.crop, self.minutes, self.holdout,
                       self.preview):
            widget.changed.connect(self.update_estimate)
        self.slice_list.itemChanged.connect(self._reset_holdout)
        for event in ("inserted", "removed", "reordered"):
            getattr(self.viewer.layers.events, event).connect(self._on_layers)

    # --- public -------------------------------------------------------------------------------------------------

    def start(self, *_) -> bool:
        """Check everything and start fine-tuning in a worker; False (with a notification) if refused."""
        if self.runner.running:
            show_info(f"{NAME}: already running; wait, or press Stop (the best weights are kept)")
            return False
        try:
            request = self.make_request()
            self._versioned(request)
            check = self._check_meaning(request)
        except (InputProblem, WeightsError, ValueError) as exc:  # AnnotationError is a ValueError
            show_warning(f"Fine-tune: {exc}")
            return False
        self.meaning = check
        if check is not None and check.flipped:
            answer = ask_flip(self.native, check.message(self.models.value or "the starting model"))
            if answer == "cancel":
                self.status.value = "not started: check what your label 1 marks"
                return False
            request.flip = answer == "flip"
        self.request, self.result = request, None
        self.curve.clear()
        self.report.value = ""
        numbers = request.slice_numbers
        shown = [numbers[z] for z in request.slices or []] if numbers is not None else request.slices or []
        self.status.value = f"fine-tuning on slices {', '.join(map(str, shown))}…"
        image = self.image.value
        return self.runner.start(finetune_job(request), self._finished, on_cancelled=self._finished,
                                 on_progress=lambda report: self._progress(report, image))

    def run_blocking(self) -> bool:
        """``start()`` inline (no thread): for scripts and tests."""
        return self.runner.run_inline(self.start)

    def export(self, *_) -> bool:
        """Export the last fine-tuned model as a bioimage.io package (``<weights>.bioimageio.zip`` beside its weight
        file; its test image is the first training slice) in a worker; False (with a notification) if refused."""
        if self.runner.running:
            show_info(f"{NAME}: busy; wait until the current run has finished, then export")
            return False
        result, request = self.result, self.request
        if result is None or request is None or not Path(result.out).is_file():
            show_warning("Fine-tune: nothing to export yet; fine-tune a model first, then press Export")
            return False
        out = _export_path(Path(result.out))
        self.status.value = f"exporting {out.name}…"
        job = export_job(result.out, out, "bioimageio", sample=_first_slice(request))
        return self.runner.start(job, self._exported)

    def make_request(self) -> FinetuneRequest:
        """The request for the current choices (copies image and annotations); raises with a message to show."""
        image, labels = self.image.value, self.annotations.value
        if image is None:
            raise InputProblem("no image layer; open an image (File > Open) or a sample (File > Open Sample > "
                               "napari-alnet), then choose it in 'Image'")
        if labels is None:
            raise InputProblem("no annotations layer; press 'New annotations layer', paint a few slices, then "
                               "press Fine-tune")
        if image.multiscale and not _is_big(image):
            raise InputProblem(f"layer {image.name!r} is multiscale; fine-tuning needs a single-resolution image")
        if _is_big(image) or _is_big(labels) or corrections_of(labels) is not None:  # a result: its corrections
            return self._compact_request(image, labels)
        data, annotations = np.asarray(base_data(image)), np.asarray(base_data(labels))
        slices = check_annotations(data.shape, annotations, self.mode.value, bool(image.rgb))
        chosen, holdout = self._chosen(slices)
        base = self._base()
        out = self._output_path(base)
        preview = self._preview_slice(image)
        return FinetuneRequest(data, annotations, mode=self.mode.value, slices=chosen, base=base, out=out,
                               train=self._recipe(), holdout=holdout, preview_slice=preview, rgb=bool(image.rgb),
                               image_name=image.name)

    def live_request(self) -> tuple[FinetuneRequest, Image, Labels]:
        """The request of a live run (``widgets._live``): the whole image and what is painted so far (maybe
        nothing yet), a new version of the model in 'Save to'; raises with a message to show."""
        image, labels = self.image.value, self.annotations.value
        if image is None or labels is None:
            raise InputProblem("Live mode needs an image and an annotations layer: choose them, or press 'New "
                               "annotations layer', then turn on Live and paint")
        if image.multiscale or _is_big(image) or _is_big(labels):
            raise InputProblem(f"Live mode trains on an image held in memory; {image.name!r} is too big or "
                               "multiscale: annotate some slices and press Fine-tune instead")
        data, marks = np.asarray(base_data(image)), painted_labels(labels, self.mode.value)
        spatial = spatial_shape(image)
        if tuple(marks.shape) != spatial or len(spatial) not in (2, 3):
            raise AnnotationError(f"the annotations {labels.name!r} have shape {tuple(marks.shape)} but the image "
                                  f"{image.name!r} has the spatial shape {spatial}; paint them in a Labels layer "
                                  "created for this image ('New annotations layer')")
        base = self._base()
        request = FinetuneRequest(data, marks, mode=self.mode.value, base=base, out=self._output_path(base),
                                  train=self._recipe(), rgb=bool(image.rgb), image_name=image.name)
        self._versioned(request)
        self.request, self.result = request, None
        self.curve.clear()
        self.report.value = ""
        return request, image, labels

    def _compact_request(self, image: Image, labels: Labels) -> FinetuneRequest:
        """A request holding only the ticked, held-out and previewed slices of a big or lazy stack (read one by
        one from level 0; the rest of the volume is never read)."""
        data, annotations = base_data(image), base_data(labels)
        spatial = spatial_shape(image)
        if tuple(annotations.shape) != spatial:
            raise AnnotationError(f"the annotations {labels.name!r} have shape {tuple(annotations.shape)} but the "
                                  f"image {image.name!r} has the spatial shape {spatial}; paint them in a Labels layer "
                                  "created for this image ('New annotations layer')")
        marks_of = training_marks(labels, self.mode.value)  # a Segment result: from its corrections
        if len(spatial) != 3 and not (marks_of is not None and len(spatial) == 2):
            raise AnnotationError(f"fine-tuning takes a 2D image or a 3D stack; {image.name!r} has shape {spatial}")
        self._refresh()
        chosen, holdout = self._chosen(self.slice_list.slices(), rescan=False)
        preview = self._preview_slice(image)
        needed = sorted({*chosen, *([holdout] if holdout is not None else []),
                         *([preview] if preview is not None else [])})
        plane = (lambda a, z: np.asarray(a[z])) if len(spatial) == 3 else (lambda a, z: np.asarray(a[...]))
        stack = np.stack([plane(data, z) for z in needed])
        marks = np.stack([marks_of(z) if marks_of is not None else plane(annotations, z) for z in needed])
        if len(spatial) == 2:  # a 2D result: one image, as the in-memory request has it
            stack, marks = stack[0], marks[0]
        annotated = check_annotations(stack.shape, marks, self.mode.value, bool(image.rgb))
        at = {z: i for i, z in enumerate(needed)}
        base = self._base()
        out = self._output_path(base)
        slices = [at[z] for z in chosen if at[z] in annotated]
        return FinetuneRequest(stack, marks, mode=self.mode.value, slices=slices, base=base, out=out,
                               train=self._recipe(), holdout=None if holdout is None else at[holdout],
                               preview_slice=None if preview is None else at[preview], rgb=bool(image.rgb),
                               image_name=image.name, slice_numbers=needed if len(spatial) == 3 else None)

    def _chosen(self, annotated: list[int], rescan: bool = True) -> tuple[list[int], int | None]:
        """The ticked annotated slices and the hold-out slice; raises when nothing is left to train on."""
        if rescan:
            self.refresh_slices()
        chosen = [z for z in self.slice_list.checked() if z in annotated]
        if not chosen:
            raise AnnotationError("no annotated slice is ticked in 'Slices': tick the slices to train on")
        holdout = self.holdout.value
        if holdout is not None and chosen == [holdout]:
            raise AnnotationError(f"the only ticked slice ({holdout}) is held out for validation; annotate or "
                                  "tick another slice, or set 'Hold out' to (none)")
        return chosen, holdout

    def _preview_slice(self, image: Image) -> int | None:
        if not self.preview.value:
            return None
        region = region_for(self.viewer, image, CURRENT_SLICE)
        return int(region[0]) if len(region) == 3 else 0

    def _recipe(self):
        return finetune_recipe(self.preset.value, epochs=self.epochs.value, lr=float(self.lr.value),
                               batch_size=self.batch_size.value, crop=self.crop.value,
                               steps_per_epoch=self.steps.value, max_minutes=float(self.minutes.value))

    def _versioned(self, request: FinetuneRequest) -> None:
        """A new version of the model in 'Save to' (never over an earlier run's file), its parent and label 1."""
        request.out, request.version = next_version(request.out)
        request.parent_name = None if self.scratch.value else self.models.value
        request.foreground = self.foreground.value.strip() or None

    def _check_meaning(self, request: FinetuneRequest) -> MeaningCheck | None:
        """Does the painted foreground mean what the starting model's label 1 means? (None from scratch.)"""
        if request.base is None or self.models.value is None:
            return None
        model = self.models.registry.load(self.models.value, "cpu")
        images = request.image if request.image.ndim - int(request.rgb) == 3 else request.image[None]
        labels = request.labels if request.labels.ndim == 3 else request.labels[None]
        slices = [z for z in (request.slices or []) if z != request.holdout] or list(request.slices or [])
        return check_meaning(model.predict, images, labels, mode=request.mode, slices=slices,
                             threshold=model.metadata.threshold, card=model.metadata.card)

    def update_estimate(self, *_) -> Estimate | None:
        """Show how long the current recipe will take (before a run)."""
        try:
            config = self._recipe()
        except ValueError:
            self.estimate.value = ""
            return None
        ticked = len(self.slice_list.checked()) if hasattr(self, "slice_list") else 0
        evaluated = (self.holdout.value is not None) + bool(self.preview.value)
        image = self.image.value
        plane = int(np.prod(spatial_shape(image)[-2:])) if image is not None else 512 * 512
        device = resolve_device(config.device)
        found = estimate(config, config.epochs * config.steps_per_epoch, eval_pixels=evaluated * plane,
                         device=device, precision=training_precision(config, device), times=self.step_times)
        self.estimate.value = f"Estimate: {found.describe()}" + ("" if ticked else " (tick slices to train on)")
        return found

    def _on_preset(self, *_) -> None:
        """Set the options to the chosen preset's (when the choice changes: the user's own values stay otherwise)."""
        if getattr(self, "_preset_applied", None) == self.preset.value:
            return
        self._preset_applied = self.preset.value
        config = finetune_recipe(self.preset.value)
        with self.epochs.changed.blocked(), self.steps.changed.blocked(), self.crop.changed.blocked():
            self.epochs.value, self.steps.value, self.crop.value = config.epochs, config.steps_per_epoch, config.crop
            self.lr.value, self.batch_size.value, self.minutes.value = config.lr, config.batch_size, config.max_minutes
        self.update_estimate()

    def add_annotations_layer(self, *_) -> Labels | None:
        """Add an empty Labels layer matching the image and choose it (brush ready to paint label 1)."""
        image = self.image.value
        if image is None:
            show_warning("Fine-tune: no image layer to annotate; open an image first")
            return None
        layer = Labels(np.zeros(spatial_shape(image), np.uint8), name=f"{image.name} annotations",
                       scale=image.scale, translate=image.translate)
        if _is_big(layer):
            self._tracked = (layer, set())  # new and empty: its slices come from paint events, never a scan
        self.viewer.add_layer(layer)
        layer.selected_label = 1
        self.annotations.value = layer
        self.viewer.layers.selection.active = layer
        layer.mode = "paint"
        return layer

    def refresh_slices(self, *_) -> None:
        """Re-detect the annotated slices (any nonzero pixel) of the chosen annotations layer."""
        self._refresh(force=True)

    def _refresh(self, force: bool = False) -> None:
        """The slice list from a scan of the annotations; a big layer's list kept from its paint events is used
        as it is unless ``force``."""
        self._refresh_timer.stop()
        layer = self.annotations.value
        data = base_data(layer) if layer is not None else None
        if data is None or data.ndim not in (2, 3):
            self.slice_list.set_slices([])
            self._reset_holdout()
            return
        corrected = corrections_of(layer)  # a Segment result layer: its corrected slices are the annotated ones
        if corrected is not None:
            self.slice_list.set_slices(corrected.slices(), data.shape[0] if data.ndim == 3 else 1)
            self._reset_holdout()
            return
        tracked = self._tracked[1] if self._tracked is not None and self._tracked[0] is layer else None
        if tracked is None or force:
            found = annotated_slices(data) if isinstance(data, np.ndarray) else lazy_annotated_slices(data)
            tracked = set(found)
            if _is_big(layer) and data.ndim == 3:
                self._tracked = (layer, tracked)
        self.slice_list.set_slices(sorted(tracked), data.shape[0] if data.ndim == 3 else 1)
        self._reset_holdout()

    def _on_paint(self, event) -> None:
        """A stroke on a big annotations layer: re-check only the slices it touched (no scan of the volume)."""
        layer = self.annotations.value
        if self._tracked is None or self._tracked[0] is not layer:
            self._schedule_refresh()
            return
        data, found = base_data(layer), self._tracked[1]
        for atom in event.value or []:
            zs = painted_slices(atom, data.shape[0])
            if zs is None:  # an edit we cannot place: scan once more
                self._tracked = None
                self._schedule_refresh()
                return
            if np.any(np.asarray(atom[-1]) != 0):  # painted a label: these slices are annotated
                found.update(zs)
            else:  # erased: napari may write after telling, so look once the event has been handled
                self._recheck.update(zs)
                QTimer.singleShot(0, self._recheck_slices)
        self._refresh()

    def _recheck_slices(self) -> None:
        layer = self.annotations.value
        if self._tracked is not None and self._tracked[0] is layer:
            data, found = base_data(layer), self._tracked[1]
            for z in sorted(self._recheck):
                (found.add if np.any(data[z]) else found.discard)(z)
            self._refresh()
        self._recheck.clear()

    # --- running --------------------------------------------------------------------------------------------------

    def _progress(self, report: Progress, image: Image) -> None:
        metrics = report.metrics
        if "loss" in metrics:
            self.curve.add(LOSS, report.step, metrics["loss"])
        if "val_iou" in metrics:
            self.curve.add(IOU, report.step, metrics["val_iou"])
        preview = metrics.get("preview")
        request = self.request
        if preview is not None and request is not None and image in self.viewer.layers:
            z = request.preview_slice if request.slice_numbers is None else request.slice_numbers[request.preview_slice]
            region = (z, slice(None), slice(None)) if request.labels.ndim == 3 else (
                slice(None), slice(None))
            upsert(self.viewer, f"{image.name} (fine-tune preview)", Image, image, np.dtype(np.float32), region,
                   np.asarray(preview, np.float32))

    def _finished(self, result: TrainResult | None) -> None:
        """Register the saved model and say where it is (also after Stop: the best weights are kept)."""
        self.result = result
        if result is None or result.best_epoch < 1 or not Path(result.out).is_file():  # best_epoch: 1-based
            self.report.value = "stopped before any weights were saved; nothing was written"
            self.status.value = "stopped before the first step finished; nothing was written"
            show_info(f"Fine-tune: {self.report.value}")
            return
        steps = self.request.train.steps_per_epoch if self.request is not None else 1
        ious = [(row["epoch"] * steps, row["val_iou"]) for row in result.history if "val_iou" in row]
        if ious:  # the epoch reports are authoritative (a live report can arrive after the end)
            self.curve.set(IOU, ious)
        out = Path(result.out)
        out.with_name(out.name + ".ckpt").unlink(missing_ok=True)  # resumable state: the dock does not resume
        request = self.request
        self.model_name = _register(self.models.registry, out, None if request is None else request.parent_name,
                                    None if request is None else request.version)
        per_step = result.wall_seconds / max(result.steps_done, 1)
        version = f" (version {request.version})" if request is not None and request.version else ""
        self.status.value = _ending(result, request)
        self.report.value = (f"{self.status.value}. {result.steps_done} steps in {result.wall_seconds:.0f} s "
                             f"({per_step:.2f} s per step with validation). "
                             f"Saved to {out}{version}; '{self.model_name}' is now in the Segment model list")
        self.step_times.record(result.step_time)
        self.update_estimate()  # a measured seconds-per-step now
        self.report.tooltip = str(out)
        show_info(f"Fine-tune: {self.report.value}")

    def _live_progress(self, report: Progress) -> None:
        if "loss" in report.metrics:
            self.curve.add(LOSS, report.step, report.metrics["loss"])

    def _live_saved(self, result: TrainResult | None, request: FinetuneRequest) -> None:
        """Live mode is off: register the newest weights it saved and say where they are."""
        self.request, self.result = request, result
        if result is None or not Path(result.out).is_file():
            self.status.value = self.report.value = "live mode stopped before any training step; nothing was written"
            show_info(f"Fine-tune: {self.report.value}")
            return
        out = Path(result.out)
        self.model_name = _register(self.models.registry, out, request.parent_name, request.version)
        slices = result.history[-1].get("slices", []) if result.history else []
        version = f" (version {request.version})" if request.version else ""
        self.status.value = (f"live mode off after {result.steps_done} steps in {result.wall_seconds:.0f} s on "
                             f"slices {', '.join(map(str, slices))}; kept the newest weights")
        self.report.value = (f"{self.status.value}. Saved to {out}{version}; '{self.model_name}' is now in the "
                             "Segment model list")
        self.report.tooltip = str(out)
        show_info(f"Fine-tune: {self.report.value}")

    def _exported(self, report: ExportReport | None) -> None:
        self.export_report = report
        if report is None:
            return
        tests = ", ".join(f"{fmt} {result}" for fmt, result in report.tests.items())
        text = (f"exported {report.path} ({report.size_bytes / 1e6:.0f} MB, {report.seconds:.0f} s): every weight "
                f"format reproduces napari-alnet within 1e-4; bioimageio.core test_model: {tests}")
        self.report.value = f"{self.report.value}\n{text}" if self.report.value else text
        passed = sum(result == "passed" for result in report.tests.values())
        self.status.value = (f"exported {report.path.name}: checked against napari-alnet; bioimageio.core tests "
                             f"passed for {passed} of {len(report.tests)} weight formats")
        show_info(f"Fine-tune: {text}")

    # --- checks ---------------------------------------------------------------------------------------------------

    def _base(self) -> str | None:
        if self.scratch.value:
            return None
        name = self.models.value
        if name is None:
            raise WeightsError("no starting model: choose one in 'Start from', load a .safetensors file with "
                               "'Load weights…', or tick 'Train from scratch'")
        self.models.registry.metadata(name)  # raises WeightsError with a clear message if the file is unusable
        return self.models.registry.get(name).source

    def _output_path(self, base: str | None) -> Path:
        value = self.output.value
        if value is None or str(value) in ("", "."):
            raise InputProblem("no output file: choose where to save the model in 'Save to'")
        out = Path(value).expanduser()
        if out.is_dir():
            raise InputProblem(f"{out} is a folder; choose a file name ending in .safetensors in 'Save to'")
        if not out.suffix:
            out = out.with_suffix(".safetensors")
        if out.suffix != ".safetensors" or out.is_dir():
            raise InputProblem(f"the output file {out.name!r} must be a file ending in .safetensors; change "
                               "'Save to'")
        # an existing file (the starting model's, an earlier run's) is kept: the run saves a new version beside it
        parent = out.parent
        existing = next((p for p in (parent, *parent.parents) if p.exists()), None)
        if existing is None or not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
            raise InputProblem(f"cannot write to {parent}; choose a folder you can write to in 'Save to'")
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputProblem(f"cannot create the folder {parent} ({exc.strerror}); choose another in "
                               "'Save to'") from exc
        return out

    # --- keeping the pickers current -----------------------------------------------------------------------------

    def _image_choices(self, _widget=None) -> list[tuple[str, Image]]:
        return [(layer.name, layer) for layer in self.viewer.layers if isinstance(layer, Image)]

    def _annotation_choices(self, _widget=None) -> list[tuple[str, Labels]]:
        return [(layer.name, layer) for layer in self.viewer.layers if isinstance(layer, Labels)]

    def _holdout_choices(self, _widget=None) -> list[tuple[str, int | None]]:
        slices = self.slice_list.checked() if hasattr(self, "slice_list") else []
        return [(NO_HOLDOUT, None)] + [(f"z = {z}", z) for z in slices]

    def _reset_holdout(self, *_) -> None:
        """Hold-out choices in slice order (magicgui appends new choices), keeping the choice if still ticked."""
        value = self.holdout.value
        with self.holdout.changed.blocked():
            self.holdout.native.clear()
            self.holdout.reset_choices()
            if value in self.holdout.choices:
                self.holdout.value = value
        if self.holdout.value != value:
            self.holdout.changed.emit(self.holdout.value)

    def _on_layers(self, event=None) -> None:
        """Follow layers being added, removed and renamed."""
        follow_renames(self.viewer, self._on_rename, event)
        self._on_rename()

    def _on_selected(self, *_) -> None:
        """The user selected (or added) a layer: an image becomes the 'Image', a Labels layer that fits it the
        'Annotations'."""
        choose_selected(self.viewer, self.image, Image)
        layer, image = self.viewer.layers.selection.active, self.image.value
        if isinstance(layer, Labels) and image is not None and tuple(layer.data.shape) == spatial_shape(image):
            choose_selected(self.viewer, self.annotations, Labels)

    def _on_rename(self, *_) -> None:
        self.image.reset_choices()
        self.annotations.reset_choices()
        self._on_image()
        self._on_labels()

    def _on_image(self, *_) -> None:
        """Prefer annotations that fit the image, and suggest an output file named after it."""
        image = self.image.value
        if image is None:
            return
        fits = [layer for layer in self.viewer.layers
                if isinstance(layer, Labels) and tuple(layer.data.shape) == spatial_shape(image)]
        if fits and self.annotations.value not in fits:
            self.annotations.value = fits[-1]
        current = self.output.value
        if current is None or str(current) in ("", ".") or Path(current) == self._suggested:
            self._suggested = _suggest_output(image.name)
            self.output.value = self._suggested

    def _on_labels(self, *_) -> None:
        """Watch the chosen annotations layer (painting refreshes the slice list, debounced)."""
        layer = self.annotations.value
        if layer is not self._watched:
            for old in [self._watched] if self._watched is not None else []:
                old.events.data.disconnect(self._on_data)
                old.events.paint.disconnect(self._schedule_refresh)
                old.events.paint.disconnect(self._on_paint)
            if layer is not None:
                layer.events.data.connect(self._on_data)
                big = _is_big(layer) and base_data(layer).ndim == 3
                layer.events.paint.connect(self._on_paint if big else self._schedule_refresh)
            self._watched = layer
            self._refresh()

    def _on_data(self, *_) -> None:
        """The annotations' data was replaced: forget what paint events said, scan again (debounced)."""
        self._tracked = None
        self._schedule_refresh()

    def _schedule_refresh(self, *_) -> None:
        self._refresh_timer.start()

    def _on_scratch(self, *_) -> None:
        self.models.combo.enabled = not self.scratch.value


def _export_path(weights: Path) -> Path:
    """``<weights stem>.bioimageio.zip`` beside the weight file, numbered so an existing file is never replaced."""
    path, n = weights.with_name(f"{weights.stem}.bioimageio.zip"), 2
    while path.exists():
        path, n = weights.with_name(f"{weights.stem}-{n}.bioimageio.zip"), n + 1
    return path


def _first_slice(request: FinetuneRequest) -> np.ndarray:
    """The first slice the request trained on (the image itself when it is 2D): the package's test image."""
    is_stack = request.image.ndim - int(request.rgb) == 3
    return request.image[(request.slices or [0])[0]] if is_stack else request.image


def _suggest_output(image_name: str) -> Path:
    """``~/alnet-models/<image>-finetuned.safetensors``, numbered so an existing file is never proposed."""
    stem = re.sub(r"[^\w.-]+", "-", image_name).strip("-.") or "image"
    folder = Path.home() / "alnet-models"
    path, n = folder / f"{stem}-finetuned.safetensors", 2
    while path.exists():
        path, n = folder / f"{stem}-finetuned-{n}.safetensors", n + 1
    return path


def ask_flip(parent, text: str) -> str:
    """Ask whether to flip the labels' meaning: ``flip``, ``keep`` (train as painted) or ``cancel``."""
    box = QMessageBox(QMessageBox.Icon.Question, "Fine-tune: what does label 1 mean?", text, parent=parent)
    flip = box.addButton("Flip the meaning", QMessageBox.ButtonRole.YesRole)
    keep = box.addButton("Train as painted", QMessageBox.ButtonRole.NoRole)
    box.addButton(QMessageBox.StandardButton.Cancel)
    box.setDefaultButton(flip)
    box.exec()
    clicked = box.clickedButton()
    return "flip" if clicked is flip else "keep" if clicked is keep else "cancel"


def _register(registry: ModelRegistry, out: Path, parent: str | None = None, version: int | None = None) -> str:
    """Register ``out`` in ``registry`` under a name derived from its file name (re-registering the same file keeps
    its name)."""
    try:
        return registry.register_path(out, kind="session", parent=parent, version=version).name
    except ValueError as exc:
        show_error(f"Fine-tune: saved to {out} but could not add it to the model list: {exc}")
        return out.stem


def _ending(result: TrainResult, request: FinetuneRequest | None) -> str:
    """How a run ended, in one line that agrees with itself: 'stopped after 1 of 10 epochs and 7 steps of epoch 2;
    kept the best: epoch 2, partly trained (validation IoU 0.812, Dice 0.896)'."""
    how = {"finished": "finished", "budget": "time budget reached"}.get(result.stopped, "stopped")
    epochs = request.train.epochs if request is not None else result.epochs_done
    per_epoch = request.train.steps_per_epoch if request is not None else 0
    partial = result.steps_done - result.epochs_done * per_epoch if per_epoch else 0
    done = f"{result.epochs_done} of {epochs} epoch{'s' * (epochs != 1)}"
    if partial > 0:
        done += f" and {partial} step{'s' * (partial != 1)} of epoch {result.epochs_done + 1}"
    best = f"epoch {result.best_epoch}" + (", partly trained" if result.best_epoch > result.epochs_done else "")
    return f"{how} after {done}; kept the best: {best} ({_describe(result.best_metrics)})"


def _describe(metrics: dict[str, float]) -> str:
    if "iou" in metrics:
        return f"validation IoU {metrics['iou']:.3f}, Dice {metrics.get('dice', float('nan')):.3f}"
    return f"training loss {metrics.get('loss', float('nan')):.3f}"


def _is_big(layer: Image | Labels) -> bool:
    """A layer not held as one NumPy array, or one bigger than the in-memory budget: read slice by slice."""
    data = base_data(layer)
    return not isinstance(data, np.ndarray) or data.size > IN_MEMORY_VOXELS


def lazy_annotated_slices(data) -> list[int]:
    """``annotated_slices`` of a dask / Zarr / array-like (Z, Y, X) or (Y, X) labels array, read chunk by chunk."""
    array = data if isinstance(data, da.Array) else da.from_array(data, chunks=_chunks(data), asarray=True)
    if array.ndim == 2:
        return [0] if bool(array.any().compute()) else []
    found = array.any(axis=(1, 2)).compute()
    return [int(z) for z in np.flatnonzero(found)]


def _chunks(data):
    chunks = getattr(data, "chunks", None)
    return tuple(int(c) for c in chunks) if isinstance(chunks, tuple) and len(chunks) == data.ndim else "auto"
