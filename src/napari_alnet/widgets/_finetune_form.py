"""The Fine-tune dock's controls (``FinetuneForm``): what to train on, the recipe, the run's buttons and read-outs.

The form builds the widgets in dock order, keeps its pickers current with the viewer's layers, applies the presets
and shows the estimate; it starts nothing (``widgets.finetune.FinetuneWidget`` adds the presenters that do).
"""

from __future__ import annotations

import re
from pathlib import Path

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

from ..engine.devices import resolve_device
from ..training.estimate import Estimate, StepTimes, estimate
from ..training.finetune import MODES, finetune_recipe
from ..training.loop import TrainConfig, training_precision
from ._curve import CurveWidget
from ._layers import choose_selected, follow_renames, spatial_shape
from ._layout import ScrollDock, Section
from ._live import LIVE_TOOLTIP
from ._models import ModelPicker
from ._slices import SliceList, embed
from ._worker import JobRunner, unwrap

NAME = "Fine-tune (AL-Net)"
NO_HOLDOUT = "(none)"
LOSS, IOU = "loss", "val IoU"


class FinetuneForm(ScrollDock):
    """The dock's widgets (attributes named as the controls), its ``runner`` (one job at a time: Fine-tune, Live
    or Export) and ``step_times`` (what this dock's runs measured; its estimates use them)."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__()
        self.viewer = unwrap(viewer)
        self.step_times = StepTimes()
        self._suggested: Path | None = None
        self._preset_applied: str | None = None
        inputs, recipe, run = self._build_inputs(), self._build_recipe(), self._build_run()
        controls = [w for w in (*inputs, *recipe) if w not in (self.models.summary, self.estimate)]  # labels
        self.runner = JobRunner(NAME, progress_bar=self.progress, status=self.status, cancel_button=self.stop_button,
                                controls=[*controls, self.start_button])
        self.extend([*inputs, *recipe, *run])
        self.image.changed.connect(self._on_image)
        self.scratch.changed.connect(self._on_scratch)
        self.viewer.layers.selection.events.active.connect(self._on_selected)
        self.preset.changed.connect(self._on_preset)
        for widget in (self.epochs, self.steps, self.batch_size, self.crop, self.minutes, self.holdout,
                       self.preview):
            widget.changed.connect(self.update_estimate)
        self.slice_list.itemChanged.connect(self.reset_holdout)
        for event in ("inserted", "removed", "reordered"):
            getattr(self.viewer.layers.events, event).connect(self._on_layers)

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
        self.advanced = Section("Advanced", self._build_options(), tooltip="the training recipe (the preset sets "
                                "these)")
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

    def _build_options(self) -> list:
        """The recipe under 'Advanced': epochs, steps, learning rate, batch, crop, time limit."""
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
        return [self.epochs, self.steps, self.lr, self.batch_size, self.crop, self.minutes]

    def _build_run(self) -> list:
        """Fine-tune, Live, Stop, progress, status, the loss/IoU curve and the final report, in dock order."""
        self.start_button = PushButton(text="Fine-tune", tooltip="train on the ticked slices in the background; "
                                       "the curve shows the loss and the hold-out IoU")
        self.live_toggle = CheckBox(text="Live: train while I paint", value=False, tooltip=LIVE_TOOLTIP)
        self.stop_button = PushButton(text="Stop", tooltip="stop now and keep the best weights so far")
        self.progress = ProgressBar(label="", tooltip="training progress (details in napari's activity dock)")
        self.status = Label(value="", tooltip="what the run is doing")
        self.curve = CurveWidget(fixed={IOU: (0.0, 1.0)})
        self.report = Label(value="", tooltip="how the last run ended and where its model is")
        self.report.native.setWordWrap(True)
        return [self.start_button, self.live_toggle, self.stop_button, self.progress, self.status, embed(self.curve),
                self.report]

    # --- the recipe and its estimate ------------------------------------------------------------------------------

    def recipe(self) -> TrainConfig:
        """The training options as set (the preset's recipe with the 'Advanced' values)."""
        return finetune_recipe(self.preset.value, epochs=self.epochs.value, lr=float(self.lr.value),
                               batch_size=self.batch_size.value, crop=self.crop.value,
                               steps_per_epoch=self.steps.value, max_minutes=float(self.minutes.value))

    def update_estimate(self, *_) -> Estimate | None:
        """Show how long the current recipe will take (before a run)."""
        try:
            config = self.recipe()
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
        if self._preset_applied == self.preset.value:
            return
        self._preset_applied = self.preset.value
        config = finetune_recipe(self.preset.value)
        with self.epochs.changed.blocked(), self.steps.changed.blocked(), self.crop.changed.blocked():
            self.epochs.value, self.steps.value, self.crop.value = config.epochs, config.steps_per_epoch, config.crop
            self.lr.value, self.batch_size.value, self.minutes.value = config.lr, config.batch_size, config.max_minutes
        self.update_estimate()

    def _on_scratch(self, *_) -> None:
        self.models.combo.enabled = not self.scratch.value

    # --- keeping the pickers current -----------------------------------------------------------------------------

    def _image_choices(self, _widget=None) -> list[tuple[str, Image]]:
        return [(layer.name, layer) for layer in self.viewer.layers if isinstance(layer, Image)]

    def _annotation_choices(self, _widget=None) -> list[tuple[str, Labels]]:
        return [(layer.name, layer) for layer in self.viewer.layers if isinstance(layer, Labels)]

    def _holdout_choices(self, _widget=None) -> list[tuple[str, int | None]]:
        slices = self.slice_list.checked() if hasattr(self, "slice_list") else []
        return [(NO_HOLDOUT, None)] + [(f"z = {z}", z) for z in slices]

    def reset_holdout(self, *_) -> None:
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
        self.annotations.changed.emit(self.annotations.value)  # the slice list looks at the (maybe renamed) layer

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
            self._suggested = suggest_output(image.name)
            self.output.value = self._suggested


def suggest_output(image_name: str) -> Path:
    """``~/alnet-models/<image>-finetuned.safetensors``, numbered so an existing file is never proposed."""
    stem = re.sub(r"[^\w.-]+", "-", image_name).strip("-.") or "image"
    folder = Path.home() / "alnet-models"
    path, n = folder / f"{stem}-finetuned.safetensors", 2
    while path.exists():
        path, n = folder / f"{stem}-finetuned-{n}.safetensors", n + 1
    return path
