"""The 'Segment (AL-Net)' dock: segment the chosen image layer into a Labels layer."""

from __future__ import annotations

import time
from dataclasses import dataclass

import napari
import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FloatSlider,
    Label,
    ProgressBar,
    PushButton,
    RadioButtons,
)
from napari.layers import Image, Labels
from napari.utils.notifications import show_warning

from ..engine import postprocess
from ..engine.devices import PRECISION_CHOICES
from ..engine.inference import check_channels
from ..engine.segmenter import Prediction
from ..io.weights import WeightsError
from ..model.metadata import ModelMetadata
from ._layers import (
    CURRENT_SLICE,
    WHOLE_STACK,
    InputProblem,
    Region,
    axis_choices,
    check_pixels,
    follow_renames,
    read_region,
    region_for,
    spatial_shape,
    upsert,
)
from ._models import ModelPicker, device_picker, tile_picker
from ._worker import JobRunner, unwrap


def precision_picker() -> ComboBox:
    """``auto`` plus the precisions (a choice the device cannot run is refused with a notification)."""
    return ComboBox(label="Precision", choices=list(PRECISION_CHOICES), value="auto",
                    tooltip="auto: bf16 on a CPU with native bf16 (AMX / AVX-512-BF16) for models validated in "
                            "bf16, fp16 on CUDA, fp32 otherwise")


@dataclass
class _Result:
    """The last run's probabilities, kept so the threshold can be changed without re-running the network."""

    source: Image
    name: str
    metadata: ModelMetadata
    region: Region
    probabilities: np.ndarray


class SegmentWidget(Container):
    """Choose an image layer and a model, press Segment; labels appear as '<layer> (<model>)'.

    Scripting/tests: set the widgets' values, then ``segment()`` (threaded) or ``run_blocking()`` (inline);
    ``runner`` is the ``JobRunner`` (``runner.running``, ``runner.worker``, ``runner.last``).
    """

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(labels=True)
        self.viewer = unwrap(viewer)
        self.image = ComboBox(label="Image", choices=self._image_choices,
                              tooltip="the image layer to segment")
        self.models = ModelPicker()
        self.device = device_picker()
        self.precision = precision_picker()
        self.scope = RadioButtons(label="Scope", choices=[CURRENT_SLICE, WHOLE_STACK], value=WHOLE_STACK,
                                  orientation="horizontal")
        self.stack_axis = ComboBox(label="Stack axis", choices=self._axis_choices,
                                   tooltip="for 4D+ layers (e.g. time series): the axis that is the stack")
        self.tile = tile_picker()
        self.threshold = FloatSlider(label="Threshold", min=0.01, max=0.99, step=0.01, value=0.5,
                                     tooltip="re-thresholds the last result instantly (the network is not re-run)")
        self.probabilities = CheckBox(text="Probability layer", value=False)
        self.instances = CheckBox(text="Instances", value=False,
                                  tooltip="also label each object (cell) with its own id")
        self.run_button = PushButton(text="Segment")
        self.cancel_button = PushButton(text="Cancel")
        self.progress = ProgressBar(label="")
        self.status = Label(value="")
        self.extend([self.image, self.models.combo, self.models.summary, self.device, self.precision, self.scope,
                     self.stack_axis,
                     self.tile, self.threshold, self.probabilities, self.instances, self.run_button,
                     self.cancel_button, self.progress, self.status])
        self.runner = JobRunner("Segment (AL-Net)", progress_bar=self.progress, status=self.status,
                                cancel_button=self.cancel_button,
                                controls=[self.image, self.models.combo, self.device, self.precision, self.scope,
                                          self.stack_axis,
                                          self.tile, self.threshold, self.probabilities, self.instances,
                                          self.run_button])
        self._result: _Result | None = None
        self.run_button.changed.connect(self.segment)
        self.threshold.changed.connect(self._rethreshold)
        self.instances.changed.connect(self._rethreshold)
        self.probabilities.changed.connect(self._rethreshold)
        self.image.changed.connect(self._on_image)
        self.scope.changed.connect(self._on_image)
        self.models.on_change(self._on_model)
        for event in ("inserted", "removed", "reordered"):
            getattr(viewer.layers.events, event).connect(self._on_layers)
        self._on_layers()
        if self.models.value is not None:
            self._on_model(self.models.value, self.models._describe(self.models.value))

    # --- public -------------------------------------------------------------------------------------------------

    def segment(self, *_) -> bool:
        """Check the input and start segmenting in a worker; False (with a notification) if refused."""
        layer = self.image.value
        if layer is None:
            show_warning("Segment: no image layer; open an image (File > Open) or a sample (File > Open Sample > "
                         "napari-alnet), then choose it in 'Image'")
            return False
        try:
            model = self.models.load(self.device.value).with_precision(self.precision.value)
            meta = model.metadata
            region = region_for(self.viewer, layer, self.scope.value, self.stack_axis.value)
            try:
                check_channels(meta, bool(layer.rgb), tuple(layer.data.shape))
            except ValueError as exc:
                raise InputProblem(f"layer {layer.name!r}: model {self.models.value!r}: {exc}") from exc
            if not layer.rgb and meta.in_channels == 3:
                show_warning(f"Segment: model {self.models.value!r} was trained on RGB images; the grayscale layer "
                             f"{layer.name!r} is given to it as three equal channels")
            image = read_region(layer, region)
            check_pixels(image, layer.name)
            job = model.predict_job(image, tile=self.tile.value or None, rgb=bool(layer.rgb))
        except (InputProblem, WeightsError, ValueError) as exc:  # all say what is wrong and what to do
            show_warning(f"Segment: {exc}")
            return False
        name = self.models.value
        started = time.perf_counter()
        self.status.value = f"segmenting {layer.name!r} with {name}…"

        def done(prediction: Prediction) -> None:
            if layer not in self.viewer.layers:
                show_warning(f"Segment: layer {layer.name!r} was removed while it was being segmented")
                return
            self._result = _Result(layer, f"{layer.name} ({name})", meta, region, prediction.probabilities)
            self._render(with_probabilities=self.probabilities.value)
            self.status.value = (f"done on {prediction.device} ({prediction.precision}) in "
                                 f"{time.perf_counter() - started:.1f} s")

        return self.runner.start(job, done)

    def run_blocking(self) -> bool:
        """``segment()`` inline (no thread): for scripts and tests."""
        return self.runner.run_inline(self.segment)

    def output_name(self, kind: str = "labels") -> str | None:
        """Name of the output layer (``labels``, ``instances`` or ``probabilities``) of the last run."""
        if self._result is None:
            return None
        return self._result.name if kind == "labels" else f"{self._result.name} {kind}"

    # --- results ------------------------------------------------------------------------------------------------

    def _render(self, with_probabilities: bool = False) -> None:
        """(Re)write the output layers from the cached probabilities at the current threshold."""
        result = self._result
        if result is None or result.source not in self.viewer.layers:
            return
        threshold = float(self.threshold.value)
        prob = result.probabilities
        upsert(self.viewer, self.output_name(), Labels, result.source, np.dtype(np.uint8), result.region,
               postprocess.semantic_labels(prob, threshold))
        if self.instances.value:
            ids = postprocess.instance_labels(prob, threshold, objects=result.metadata.objects)
            upsert(self.viewer, self.output_name("instances"), Labels, result.source, np.dtype(np.int32),
                   result.region, ids)
        if with_probabilities:
            upsert(self.viewer, self.output_name("probabilities"), Image, result.source, np.dtype(np.float32),
                   result.region, prob)

    def _rethreshold(self, *_) -> None:
        if not self.runner.running:
            self._render(with_probabilities=self.probabilities.value and not self._has_probability_layer())

    def _has_probability_layer(self) -> bool:
        name = self.output_name("probabilities")
        return any(layer.name == name for layer in self.viewer.layers)

    # --- keeping the pickers current -------------------------------------------------------------------------------

    def _image_choices(self, _widget=None) -> list[tuple[str, Image]]:
        return [(layer.name, layer) for layer in self.viewer.layers if isinstance(layer, Image)]

    def _axis_choices(self, _widget=None):
        return axis_choices(self.viewer, self.image.value if hasattr(self, "image") else None)

    def _on_layers(self, event=None) -> None:
        """Follow layers being added, removed and renamed."""
        follow_renames(self.viewer, self._on_rename, event)
        removed = event is not None and getattr(event, "type", "") == "removed"
        if removed and self._result is not None and event.value is self._result.source:
            self._result = None
        self._on_rename()

    def _on_rename(self, *_) -> None:
        self.image.reset_choices()
        self._on_image()

    def _on_image(self, *_) -> None:
        layer = self.image.value
        self.stack_axis.reset_choices()
        self.stack_axis.visible = (layer is not None and len(spatial_shape(layer)) >= 4
                                   and self.scope.value == WHOLE_STACK)

    def _on_model(self, name: str, meta: ModelMetadata) -> None:
        with self.threshold.changed.blocked():
            self.threshold.value = float(np.clip(meta.threshold, self.threshold.min, self.threshold.max))

