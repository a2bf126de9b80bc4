"""The 'Segment (AL-Net)' dock: segment the chosen image layer into a Labels layer.

Small layers (at most ``_volume.IN_MEMORY_VOXELS``) run in memory: the region is read, the network runs once, the
probabilities are kept for re-thresholding and the labels go into a full-size NumPy layer. Bigger layers, 3D
instances and runs with an 'Output' store go through the blockwise engine in the worker: the layer is read block
by block, labels and probabilities (uint8 or float16) go to OME-Zarr stores (the chosen path, or a temporary one
that 'Save result' keeps), and the output layers read those stores lazily, filling in as blocks finish. Cancel
stops after the block in flight and keeps the finished ones; Segment again with the same choices continues.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import napari
import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    FileEdit,
    FloatSlider,
    Label,
    ProgressBar,
    PushButton,
    RadioButtons,
    SpinBox,
)
from napari.layers import Image, Labels
from napari.utils.notifications import show_info, show_warning

from ..engine import postprocess
from ..engine import registry as model_registry
from ..engine.blockwise import PROBABILITY_DTYPES, VolumeSummary, segment_volume_job
from ..engine.devices import PRECISION_CHOICES, resolve_device
from ..engine.inference import check_channels
from ..engine.segmenter import Prediction, Segmenter
from ..engine.suitability import image_statistics
from ..io.volumes import VolumeError
from ..io.weights import WeightsError
from ..model.metadata import ModelMetadata
from ._corrections import CorrectionsPanel, corrected_view
from ._layers import (
    OUTPUT_KEY,
    SCOPES,
    WHOLE_STACK,
    Z_RANGE,
    InputProblem,
    Region,
    axis_choices,
    check_pixels,
    choose_selected,
    follow_renames,
    labels_targets,
    pixel_size_nm,
    read_region,
    region_for,
    sample_plane,
    save_labels_job,
    spatial_shape,
    upsert,
)
from ._layout import ScrollDock, Section
from ._models import FitNote, ModelPicker, device_picker, tile_picker
from ._volume import (
    LONG_RUN_MINUTES,
    Pending,
    Placement,
    StoreView,
    estimate,
    layer_marker,
    lazy_source,
    mark_store,
    output_store,
    prob_path,
    record_rate,
    save_job,
    source_chunks,
    temporary_store,
    unfinished_run,
    uses_engine,
)
from ._worker import JobRunner, unwrap

#: Output layers of a running volume are refreshed at most this often (seconds).
REFRESH_S = 0.25


def precision_picker() -> ComboBox:
    """``auto`` plus the precisions (a choice the device cannot run is refused with a notification)."""
    return ComboBox(label="Precision", choices=list(PRECISION_CHOICES), value="auto",
                    tooltip="auto: fp16 on CUDA; on a CPU the fastest precision the model card validates — int8 "
                            "(the em model; needs onnxruntime) where measured fastest here, bf16 on a CPU with "
                            "native bf16 (AMX / AVX-512-BF16) — else fp32")


@dataclass
class _Result:
    """The last run's probabilities, kept so the threshold can be changed without re-running the network."""

    source: Image
    name: str
    metadata: ModelMetadata
    region: Region
    probabilities: np.ndarray


@dataclass
class _VolumeResult:
    """A blockwise run's result: its stores (``labels``; probabilities beside it), where it sits in the source
    layer, the threshold and instance mode it ran with, whether it is complete and whether its stores are
    temporary (then 'Save result' keeps them)."""

    source: Image
    name: str
    metadata: ModelMetadata
    region: Region
    placement: Placement
    labels: Path
    threshold: float
    instances: str | None
    temporary: bool
    complete: bool = False

    @property
    def probabilities(self) -> Path:
        return prob_path(self.labels)


class SegmentWidget(ScrollDock):
    """Choose an image layer and a model, press Segment; labels appear as '<layer> (<model>)'.

    Scripting/tests: set the widgets' values, then ``segment()`` (threaded) or ``run_blocking()`` (inline);
    ``runner`` is the ``JobRunner`` (``runner.running``, ``runner.worker``, ``runner.last``); ``save_result(path)``
    keeps a temporary volume result; ``volume_summary`` is the last blockwise run's ``VolumeSummary``.
    """

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__()
        self.viewer = unwrap(viewer)
        self._build()
        self.runner = JobRunner("Segment (AL-Net)", progress_bar=self.progress, status=self.status,
                                cancel_button=self.cancel_button,
                                controls=[self.image, self.models.combo, self.device, self.precision, self.scope,
                                          self.z_from, self.z_to, self.stack_axis, self.tile, self.threshold,
                                          self.probabilities, self.instances, self.instances_3d, self.watershed,
                                          self.output, self.prob_dtype, self.overwrite, self.run_button])
        self._result: _Result | _VolumeResult | None = None
        self._stats = None  # (layer key, ImageStatistics) of the image last judged against the model
        self._judged: tuple = ()
        self._pending: Pending | None = None
        self._refreshed = 0.0
        self.volume_summary: VolumeSummary | None = None
        self._connect()
        self._on_layers()
        if self.models.value is not None:
            self._on_model(self.models.value, self.models._describe(self.models.value))

    def _build(self) -> None:
        self.image = ComboBox(label="Image", choices=self._image_choices,
                              tooltip="the image layer to segment; follows the image layer you select in the layer "
                                      "list (NumPy, dask, Zarr, or level 0 of a multiscale image)")
        self.models = ModelPicker()
        self.fit = FitNote(self.models)
        self.device = device_picker()
        self.precision = precision_picker()
        self.scope = RadioButtons(label="Scope", choices=list(SCOPES), value=WHOLE_STACK,
                                  tooltip="what to segment: the displayed slice, its part visible in the canvas "
                                          "(field of view), a range of slices (z-range) or every slice")
        self.z_from = SpinBox(label="z from", min=0, max=0, value=0, tooltip="first slice of the z-range")
        self.z_to = SpinBox(label="z to", min=0, max=0, value=0, tooltip="last slice of the z-range (included)")
        self.stack_axis = ComboBox(label="Stack axis", choices=self._axis_choices,
                                   tooltip="for 4D+ layers (e.g. time series): the axis that is the stack")
        self.tile = tile_picker()
        self.threshold = FloatSlider(label="Threshold", min=0.01, max=0.99, step=0.01, value=0.5,
                                     tooltip="a pixel whose probability is above this is labelled; set to the "
                                             "model's own threshold when a model is chosen. Moving it re-thresholds "
                                             "the last result at once (the network is not run again)")
        self.probabilities = CheckBox(text="Probability layer", value=False,
                                      tooltip="also show the network's probability (0 to 1) of each pixel as an "
                                              "image layer")
        self.instances = CheckBox(text="Instances", value=False,
                                  tooltip="also label each object (cell, lesion) with its own id, in a second "
                                          "Labels layer")
        self.instances_3d = CheckBox(text="3D instances (objects across slices)", value=False,
                                     tooltip="one id for an object across the slices it spans (otherwise each slice's "
                                             "objects are numbered on their own)")
        self.watershed = CheckBox(text="Split touching objects", value=False,
                                  tooltip="separate objects that touch, with a watershed of their distance "
                                          "transform (in 3D for 3D instances, with the layer's voxel size)")
        self._build_outputs()
        self.corrections = CorrectionsPanel(self.viewer, lambda: [self.output_name(), self.output_name("instances")],
                                            lambda: (self._result, float(self.threshold.value)))
        self.estimate.native.setWordWrap(True)
        self.status.native.setWordWrap(True)
        self.extend([self.image, self.models.combo, self.models.summary, self.fit.label, self.fit.button, self.scope,
                     self.z_from, self.z_to, self.stack_axis, self.threshold, self.probabilities,
                     self.instances, self.instances_3d, self.watershed, self.big_volume, self.advanced, self.estimate,
                     self.run_button, self.cancel_button, self.save_labels_button, self.save_button, self.corrections,
                     self.progress, self.status])

    def _build_outputs(self) -> None:
        """The big-volume output options, the run and save buttons, progress and status; the folding sections."""
        self.output = FileEdit(label="Output", mode="w", filter="OME-Zarr (*.zarr)",
                               tooltip="OME-Zarr store for big results (probabilities go beside it as X_prob.zarr); "
                                       "empty: a temporary store, kept with 'Save result…'")
        self.prob_dtype = ComboBox(label="Probabilities", choices=[d for d in PROBABILITY_DTYPES if d != "float32"],
                                   value="uint8", tooltip="how big results keep probabilities on disk: uint8 "
                                                          "(1 byte per voxel, steps of 1/255) or float16")
        self.overwrite = CheckBox(text="Overwrite the output store", value=False,
                                  tooltip="replace what is at 'Output'; otherwise an unfinished run of this layer "
                                          "there is continued, and anything else there is left alone")
        self.estimate = Label(value="", tooltip="what a run will take, before it is started")
        self.run_button = PushButton(text="Segment", tooltip="segment the chosen scope with the model, in the "
                                     "background (the viewer stays usable); results appear as '<image> (<model>)'")
        self.cancel_button = PushButton(text="Cancel", tooltip="stop after the part in flight; a big volume's "
                                        "finished blocks are kept and Segment continues from there")
        self.save_labels_button = PushButton(text="Save labels…", tooltip="save the result's labels as TIFF (.tif) "
                                             "or OME-Zarr (.zarr), with the image's pixel size (instances beside "
                                             "them as <name>_instances)")
        self.save_button = PushButton(text="Save result…", tooltip="keep a big-volume result (its temporary "
                                      "OME-Zarr store and probabilities) under a name you choose")
        self.progress = ProgressBar(label="", tooltip="progress of the run (details in napari's activity dock)")
        self.status = Label(value="", tooltip="what the last run did")
        self.big_volume = Section("Output store (big volumes)", [self.output, self.prob_dtype, self.overwrite],
                                  tooltip="where big results are written (OME-Zarr) and how; shown for big layers, "
                                          "3D instances and split objects, which are segmented block by block")
        self.advanced = Section("Advanced", [self.device, self.precision, self.tile],
                                tooltip="device, numeric precision and tile size of the network")

    def _connect(self) -> None:
        self.run_button.changed.connect(self.segment)
        self.save_button.changed.connect(self._ask_save)
        self.save_labels_button.changed.connect(self._ask_save_labels)
        self.status.changed.connect(self._sync_buttons)  # every run ends by saying how: then the results are set
        self.viewer.layers.selection.events.active.connect(self._on_selected)
        self.viewer.dims.events.current_step.connect(self._update_fit)  # a lazy layer is judged once shown
        self.threshold.changed.connect(self._rethreshold)
        self.instances.changed.connect(self._rethreshold)
        self.probabilities.changed.connect(self._rethreshold)
        self.image.changed.connect(self._on_image)
        self.scope.changed.connect(self._on_image)
        self.instances.changed.connect(self._on_image)
        self.stack_axis.changed.connect(self._update_estimate)
        for widget in (self.z_from, self.z_to, self.device, self.instances_3d, self.watershed, self.output):
            widget.changed.connect(self._update_estimate)
        self.models.on_change(self._on_model)
        for event in ("inserted", "removed", "reordered"):
            getattr(self.viewer.layers.events, event).connect(self._on_layers)

    # --- public -------------------------------------------------------------------------------------------------

    def segment(self, *_) -> bool:
        """Check the input and start segmenting in a worker; False (with a notification) if refused."""
        layer = self.image.value
        if layer is None:
            show_warning("Segment: no image layer; open an image (File > Open) or a sample (File > Open Sample > "
                         "napari-alnet), then choose it in 'Image'")
            return False
        name = f"{layer.name} ({self.models.value})"
        if not self.corrections.ask_before_run([name, f"{name} instances"]):
            return False
        try:
            model = self.models.load(self.device.value).with_precision(self.precision.value)
            region = self._region(layer)
            self._check_model(model, layer)
            if self._uses_engine(layer):
                return self._segment_volume(layer, model, region)
            image = read_region(layer, region)
            check_pixels(image, layer.name)
            job = model.predict_job(image, tile=self.tile.value or None, rgb=bool(layer.rgb))
        except (InputProblem, WeightsError, ValueError) as exc:  # all say what is wrong and what to do
            show_warning(f"Segment: {exc}")
            return False
        return self._start_in_memory(layer, model.metadata, region, job)

    def run_blocking(self) -> bool:
        """``segment()`` inline (no thread): for scripts and tests."""
        return self.runner.run_inline(self.segment)

    def output_name(self, kind: str = "labels") -> str | None:
        """Name of the output layer (``labels``, ``instances`` or ``probabilities``) of the last run."""
        if self._result is None:
            return None
        return self._result.name if kind == "labels" else f"{self._result.name} {kind}"

    def save_result(self, path: str | Path) -> bool:
        """Save the last volume result as OME-Zarr at ``path`` (probabilities beside it), in a worker, at the
        current threshold; False (with a notification) if there is nothing to save or ``path`` exists."""
        result = self._result
        if not isinstance(result, _VolumeResult) or not result.complete:
            show_warning("Segment: no finished big-volume result to save; segment first (small images are "
                         "in-memory layers: File > Save Selected Layers)")
            return False
        dest = output_store(path)
        if dest is None:
            show_warning("Segment: choose where to save the result (a name ending in .zarr)")
            return False
        try:  # the checks run here; the copying in the worker
            shown = _layer_named(self.viewer, self.output_name("instances" if result.instances else "labels"))
            job = save_job(result.labels, dest, float(self.threshold.value), semantic=result.instances is None,
                           corrected=corrected_view(shown))  # the corrections go into the saved labels
        except (VolumeError, OSError) as exc:
            show_warning(f"Segment: {exc}")
            return False

        def saved(out: Path) -> None:
            show_info(f"Segment: saved {out} and {prob_path(out).name}")
            self.status.value = f"saved {out}"

        return self.runner.start(job, saved)

    # --- in memory ----------------------------------------------------------------------------------------------

    def _start_in_memory(self, layer: Image, meta: ModelMetadata, region: Region, job) -> bool:
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

    def _region(self, layer: Image) -> Region:
        return region_for(self.viewer, layer, self.scope.value, self.stack_axis.value,
                          (int(self.z_from.value), int(self.z_to.value)))

    def _check_model(self, model: Segmenter, layer: Image) -> None:
        meta = model.metadata
        try:
            check_channels(meta, bool(layer.rgb), tuple(layer.data[0].shape if layer.multiscale else layer.data.shape))
        except ValueError as exc:
            raise InputProblem(f"layer {layer.name!r}: model {self.models.value!r}: {exc}") from exc
        if not layer.rgb and meta.in_channels == 3:
            show_warning(f"Segment: model {self.models.value!r} was trained on RGB images; the grayscale layer "
                         f"{layer.name!r} is given to it as three equal channels")

    # --- big volumes (blockwise engine) --------------------------------------------------------------------------

    def _volume_key(self) -> tuple:
        instances = ("3d" if self.instances_3d.value else "2d") if self.instances.value else None
        return (self.models.value, self.device.value, self.precision.value, self.tile.value, instances,
                self.prob_dtype.value, str(output_store(self.output.value)),
                bool(instances and self.watershed.value))

    def _segment_volume(self, layer: Image, model: Segmenter, region: Region) -> bool:
        """Start (or resume) a blockwise run of ``region`` into Zarr stores, shown lazily as blocks finish."""
        key = self._volume_key()
        pending = self._pending if self._pending is not None and self._pending.matches(layer, region, key) else None
        chosen = output_store(self.output.value)
        dest = pending.labels if pending else (chosen or temporary_store(layer.name))
        threshold = pending.threshold if pending else float(self.threshold.value)
        marker = layer_marker(layer, region)
        if pending is None and chosen is not None and not self.overwrite.value:
            earlier = _earlier_run(chosen, marker)
            threshold = threshold if earlier is None else float(earlier["run"]["settings"]["threshold"])
            pending = None if earlier is None else Pending(layer, region, key, chosen, threshold)
        source = lazy_source(layer, region)
        options = {"probabilities": True, "prob_dtype": self.prob_dtype.value, "instances": key[4],
                   "threshold": threshold, "tile": self.tile.value or None,
                   "overwrite": bool(self.overwrite.value) and pending is None,
                   **({"watershed": True} if key[7] else {})}
        result = _VolumeResult(layer, f"{layer.name} ({self.models.value})", model.metadata, region,
                               Placement.of(layer, region), dest, threshold, key[4], temporary=chosen is None)
        found = estimate(source.shape[: source.ndim - int(bool(layer.rgb))], source_chunks(source), model.metadata,
                         str(model.device))
        self.estimate.value = found.describe()
        if found.minutes >= LONG_RUN_MINUTES:
            show_info(f"Segment: {found.describe()}. Progress is in the activity dock; Cancel keeps the finished "
                      "blocks and Segment continues from there")
        self.status.value = f"{'resuming' if pending else 'segmenting'} {layer.name!r} blockwise into {dest}…"
        self._refreshed = 0.0
        shown = Pending(layer, region, key, dest, threshold)
        return self.runner.start(_in_worker(model, source, dest, options, marker),
                                 lambda summary: self._volume_ended(result, summary),
                                 on_progress=lambda report: self._volume_progress(result, report, shown),
                                 on_cancelled=lambda summary: self._volume_ended(result, summary))

    def _volume_progress(self, result: _VolumeResult, report, pending: Pending) -> None:
        """Show the result once its stores exist (the engine's first report); then refresh the output layers
        (napari re-reads the displayed slice only), at most every ``REFRESH_S``."""
        metrics = report.metrics
        if result.source not in self.viewer.layers:  # removed while it is segmented: nothing to show it over
            return
        if self._result is not result:
            self._result, self._pending = result, pending
            self._render_volume(result)
        if metrics.get("phase") == "blocks" and metrics.get("slices_per_s"):
            plane = int(np.prod(self._plane(result)))
            record_rate(str(resolve_device(self.device.value)), metrics["slices_per_s"], plane)
        now = time.perf_counter()
        if now - self._refreshed >= REFRESH_S:
            self._refreshed = now
            self._refresh_outputs(result)

    def _plane(self, result: _VolumeResult) -> tuple[int, int]:
        shape = spatial_shape(result.source)
        return tuple(len(range(*r.indices(n))) for r, n in zip(result.region[-2:], shape[-2:], strict=True))

    def _refresh_outputs(self, result: _VolumeResult, reopen: bool = False) -> None:
        for kind in ("labels", "instances", "probabilities"):
            name = self.output_name(kind) if self._result is result else None
            layer = _layer_named(self.viewer, name)
            if layer is not None and isinstance(layer.data, StoreView):
                if reopen:
                    layer.data.reopen()
                if layer.visible:
                    layer.refresh()

    def _volume_ended(self, result: _VolumeResult, summary: VolumeSummary | None) -> None:
        self.volume_summary = summary
        if summary is not None and summary.complete:
            result.complete = True
            self._pending = None
        if result.source not in self.viewer.layers:
            return
        if result.instances and result.complete:
            self._render_volume(result)  # the instance ids may have been widened to uint64
        self._refresh_outputs(result, reopen=True)
        self.status.value = _volume_message(result, summary)

    def _render_volume(self, result: _VolumeResult) -> None:
        """(Re)make the output layers of a volume result: views of its stores at the current threshold."""
        threshold = float(self.threshold.value)
        if result.instances is None and abs(threshold - result.threshold) < 1e-9:
            semantic = StoreView(result.labels, result.placement)
        else:
            semantic = StoreView(result.probabilities, result.placement, threshold=threshold)
        self._put_view(self.output_name(), Labels, semantic, result)
        if result.instances:
            self._put_view(self.output_name("instances"), Labels, StoreView(result.labels, result.placement),
                           result)
        if self.probabilities.value:
            self._put_view(self.output_name("probabilities"), Image, StoreView(result.probabilities,
                                                                                  result.placement), result)

    def _put_view(self, name: str, kind: type, view: StoreView, result: _VolumeResult) -> None:
        view = self.corrections.editable(name, view) if kind is Labels else view  # paintable; corrections kept
        layer = _layer_named(self.viewer, name)
        if isinstance(layer, kind) and isinstance(layer.data, StoreView) and layer.data.shape == view.shape:
            if layer.data.path != view.path or layer.data.threshold != view.threshold:
                layer.data = view
            return
        if layer is not None:
            self.viewer.layers.remove(layer)
        like = result.source
        kwargs = {"name": name, "scale": like.scale, "translate": result.placement.translate(like)}
        if kind is Labels:
            self.viewer.add_labels(view, **kwargs)
        else:
            top = 255.0 if view.dtype == np.uint8 else 1.0
            self.viewer.add_image(view, colormap="magma", blending="additive", contrast_limits=(0.0, top),
                                  metadata={OUTPUT_KEY: True}, **kwargs)

    # --- results ------------------------------------------------------------------------------------------------

    def _render(self, with_probabilities: bool = False) -> None:
        """(Re)write the output layers from the cached probabilities at the current threshold."""
        result = self._result
        if result is None or result.source not in self.viewer.layers:
            return
        if isinstance(result, _VolumeResult):
            self._render_volume(result)
            return
        threshold = float(self.threshold.value)
        prob = result.probabilities
        self.corrections.upsert(self.output_name(), result.source, np.dtype(np.uint8), result.region,
                                postprocess.semantic_labels(prob, threshold))  # corrections drawn over it
        if self.instances.value:
            ids = postprocess.instance_labels(prob, threshold, objects=result.metadata.objects)
            self.corrections.upsert(self.output_name("instances"), result.source, np.dtype(np.int32), result.region,
                                    ids, instances=True)
        if with_probabilities:
            upsert(self.viewer, self.output_name("probabilities"), Image, result.source, np.dtype(np.float32),
                   result.region, prob)

    def _uses_engine(self, layer: Image) -> bool:
        """Whether this layer and these options run blockwise (``_volume.uses_engine``)."""
        engine_instances = bool(self.instances.value and (self.instances_3d.value or self.watershed.value))
        return uses_engine(layer, engine_instances, output_store(self.output.value) is not None)

    def _rethreshold(self, *_) -> None:
        if not self.runner.running:
            self._render(with_probabilities=self.probabilities.value and not self._has_probability_layer())

    def _has_probability_layer(self) -> bool:
        name = self.output_name("probabilities")
        return any(layer.name == name for layer in self.viewer.layers)

    def _ask_save(self, *_) -> None:
        from qtpy.QtWidgets import QFileDialog

        path, _ = QFileDialog.getSaveFileName(None, "Save the result as OME-Zarr", "", "OME-Zarr (*.zarr)")
        if path:
            self.save_result(path)

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
        if removed and self._pending is not None and event.value is self._pending.layer:
            self._pending = None
        self._on_rename()

    def _on_rename(self, *_) -> None:
        self.image.reset_choices()
        self._on_image()

    def _on_image(self, *_) -> None:
        layer = self.image.value
        self.stack_axis.reset_choices()
        nd = len(spatial_shape(layer)) if layer is not None else 0
        stacked = self.scope.value in (WHOLE_STACK, Z_RANGE)
        self.stack_axis.visible = nd >= 4 and stacked
        self.z_from.visible = self.z_to.visible = nd >= 3 and self.scope.value == Z_RANGE
        self.instances_3d.visible = nd >= 3 and bool(self.instances.value)
        self.watershed.visible = bool(self.instances.value)
        depth = self._depth(layer)
        for box in (self.z_from, self.z_to):
            box.max = max(depth - 1, 0)
        self._update_estimate()
        self._update_layout(layer)

    def _depth(self, layer: Image | None) -> int:
        if layer is None:
            return 1
        shape = spatial_shape(layer)
        axis = 0 if len(shape) == 3 else self.stack_axis.value
        return int(shape[axis]) if len(shape) >= 3 and axis is not None and axis < len(shape) - 2 else 1

    def _update_estimate(self, *_) -> None:
        """Say what a run will take (blocks, minutes on the device) before it is started."""
        layer, name = self.image.value, self.models.value
        if layer is None or name is None or not hasattr(self, "estimate"):
            return
        try:
            region = self._region(layer)
            if not self._uses_engine(layer):
                self.estimate.value = "in memory (a small image: one network call)"
                return
            source = lazy_source(layer, region)
            shape = source.shape[: source.ndim - int(bool(layer.rgb))]
            found = estimate(shape, source_chunks(source), model_registry.metadata(name),
                             str(resolve_device(self.device.value)))
            self.estimate.value = found.describe()
        except (InputProblem, WeightsError, ValueError, KeyError, OSError) as exc:
            self.estimate.value = f"cannot estimate: {exc}"

    def _on_model(self, name: str, meta: ModelMetadata) -> None:
        with self.threshold.changed.blocked():
            self.threshold.value = float(np.clip(meta.threshold, self.threshold.min, self.threshold.max))
        self._update_estimate()
        self._update_fit()

    # --- layout, suitability and saving labels ----------------------------------------------------------------------

    def _on_selected(self, *_) -> None:
        """The user selected a layer (or added one): an image layer becomes the 'Image'."""
        choose_selected(self.viewer, self.image, Image)

    def _update_layout(self, layer: Image | None) -> None:
        """Show the big-volume options only where they apply (unfolded for a big layer), and judge the image."""
        blockwise = layer is not None and self._uses_engine(layer)
        self.big_volume.visible = blockwise
        if blockwise and uses_engine(layer, False, False):
            self.big_volume.folded = False
        self._update_fit()
        self._sync_buttons()

    def _update_fit(self, *_) -> None:
        """Warn (never refuse) when the image looks unlike the model's training data; suggest a better model."""
        layer, name = self.image.value, self.models.value
        stats = None
        if layer is not None:
            key = (id(layer), id(layer.data), bool(layer.rgb))
            if self._stats is None or self._stats[0] != key:
                try:
                    plane = sample_plane(self.viewer, layer)
                    found = None if plane is None else image_statistics(plane, rgb=bool(layer.rgb),
                                                                        pixel_size_nm=pixel_size_nm(layer))
                except (InputProblem, ValueError, IndexError, OSError):
                    plane = found = None
                if plane is not None:  # a lazy layer napari has not shown yet is judged once it has
                    self._stats = (key, found)
            stats = self._stats[1] if self._stats is not None and self._stats[0] == key else None
        if (id(stats), name) != self._judged:  # judge each image statistics and model once
            self._judged = (id(stats), name)
            self.fit.update(stats, name)

    def _sync_buttons(self, *_) -> None:
        """'Save labels…' for any finished result; 'Save result…' only for a finished big-volume result."""
        result = self._result
        volume = isinstance(result, _VolumeResult)
        finished = result is not None and (not volume or result.complete)
        self.save_labels_button.enabled = finished
        self.save_button.visible = volume or self.big_volume.visible
        self.save_button.enabled = volume and finished

    def save_labels(self, path: str | Path) -> bool:
        """Save the last result's labels (and instances) to ``path`` (.tif or .zarr) with the image's pixel size,
        in a worker; False (with a notification) if there is nothing to save or the path is refused."""
        result = self._result
        layers = [_layer_named(self.viewer, self.output_name(kind)) for kind in ("labels", "instances")]
        layers = [layer for layer in layers if isinstance(layer, Labels)]
        if result is None or not layers or (isinstance(result, _VolumeResult) and not result.complete):
            show_warning("Segment: no finished result to save; press Segment first")
            return False
        try:
            targets = labels_targets(layers, path)
        except InputProblem as exc:
            show_warning(f"Segment: {exc}")
            return False

        def saved(paths: list[Path]) -> None:
            show_info(f"Segment: saved {', '.join(str(p) for p in paths)}")
            self.status.value = f"saved labels to {', '.join(p.name for p in paths)} in {paths[0].parent}"

        return self.runner.start(save_labels_job(targets, result.source), saved)

    def _ask_save_labels(self, *_) -> None:
        from qtpy.QtWidgets import QFileDialog

        name = (self.output_name() or "labels").replace(" ", "_").replace("(", "").replace(")", "")
        path, _ = QFileDialog.getSaveFileName(None, "Save the labels", f"{name}.tif",
                                              "TIFF (*.tif *.tiff);;OME-Zarr (*.zarr)")
        if path:
            self.save_labels(path)


def _in_worker(model: Segmenter, source, dest: Path, options: dict, marker: dict):
    """The blockwise run as a job whose checks and store creation (``prepare_volume_run``) happen in the worker
    too (nothing of it runs in the GUI thread); the labels store is marked with the layer and region."""
    job = segment_volume_job(model, source, dest, **options)
    mark_store(dest, marker)
    return (yield from job)


def _earlier_run(chosen: Path, marker: dict) -> dict | None:
    """The record of an unfinished run of this layer and region at the chosen output (to continue it); ``None``
    when nothing is there; ``InputProblem`` when something else is."""
    if not (chosen.exists() or prob_path(chosen).exists()):
        return None
    earlier = unfinished_run(chosen, marker) if chosen.exists() else None
    if earlier is None:
        raise InputProblem(f"the output {chosen} (or {prob_path(chosen).name}) exists and is not an unfinished run "
                           "of this layer and region; choose another 'Output', or tick 'Overwrite the output store' "
                           "to replace it")
    return earlier


def _layer_named(viewer: napari.Viewer, name: str | None):
    return next((layer for layer in viewer.layers if layer.name == name), None) if name is not None else None


def _volume_message(result: _VolumeResult, summary: VolumeSummary | None) -> str:
    where = f"{result.labels}" + (" (temporary: 'Save result…' keeps it)" if result.temporary else "")
    if summary is None:
        return f"stopped; the finished blocks are kept in {where}: press Segment to continue"
    done = summary.blocks_run + summary.blocks_resumed
    speed = f"{summary.slices_per_second:.2f} slices/s"
    if summary.complete:
        objects = f", {summary.objects:,} objects" if summary.objects is not None else ""
        return (f"done: {summary.blocks} blocks ({summary.blocks_resumed} resumed) in {summary.seconds:.1f} s, "
                f"{speed}{objects} on {summary.device} → {where}")
    return (f"cancelled after {done}/{summary.blocks} blocks ({speed}); they are kept in {where}: press Segment "
            "to continue")
