"""The 'Segment (AL-Net)' dock: segment the chosen image layer into a Labels layer.

The dock's controls (``_segment_form``) describe one ``SegmentRequest`` (``engine.request``), whose route says how
it runs: small layers in memory (``_segment_memory``: the region is read, the network runs once, the
probabilities are kept for re-thresholding, the labels go into a full-size NumPy layer); bigger layers, 3D or
split instances and runs with an 'Output' store blockwise in the worker (``_segment_volume``: OME-Zarr stores,
shown lazily as blocks finish, resumable after Cancel).
"""

from __future__ import annotations

from pathlib import Path

import napari
import numpy as np
from napari.layers import Image, Labels
from napari.utils.notifications import show_info, show_warning

from ..engine.devices import resolve_device
from ..engine.inference import check_channels
from ..engine.request import BLOCKWISE, segment_job
from ..engine.segmenter import Segmenter
from ..engine.volume import VolumeSummary
from ..io.weights import WeightsError
from ..model.metadata import ModelMetadata
from ._corrections import CorrectionsPanel
from ._layers import InputProblem, choose_selected, follow_renames, labels_targets, save_labels_job
from ._segment_form import SegmentForm
from ._segment_memory import MemoryResult, MemoryRun
from ._segment_volume import VolumeResult, VolumeRun, layer_named
from ._volume import source_chunks
from ._worker import JobRunner


class SegmentWidget(SegmentForm):
    """Choose an image layer and a model, press Segment; labels appear as '<layer> (<model>)'.

    Scripting/tests: set the widgets' values, then ``segment()`` (threaded) or ``run_blocking()`` (inline);
    ``runner`` is the ``JobRunner`` (``runner.running``, ``runner.worker``, ``runner.last``); ``save_result(path)``
    keeps a temporary volume result; ``volume_summary`` is the last blockwise run's ``VolumeSummary``; ``result``
    the last run's result.
    """

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(viewer)
        self.corrections = CorrectionsPanel(self.viewer, lambda: [self.output_name(), self.output_name("instances")],
                                            lambda: (self.result, float(self.threshold.value)))
        self.lay_out([self.corrections])
        self.runner = JobRunner("Segment (AL-Net)", progress_bar=self.progress, status=self.status,
                                cancel_button=self.cancel_button, controls=self.choices())
        self.result: MemoryResult | VolumeResult | None = None
        self.memory = MemoryRun(self)
        self.volume = VolumeRun(self)
        self._connect()
        self._on_layers()
        if self.models.value is not None:
            self._on_model(self.models.value, self.models._describe(self.models.value))

    def _connect(self) -> None:
        self.run_button.changed.connect(self.segment)
        self.save_button.changed.connect(self._ask_save)
        self.save_labels_button.changed.connect(self._ask_save_labels)
        self.status.changed.connect(self._sync_buttons)  # every run ends by saying how: then the results are set
        self.viewer.layers.selection.events.active.connect(self._on_selected)
        self.viewer.dims.events.current_step.connect(self.update_fit)  # a lazy layer is judged once shown
        self.threshold.changed.connect(self._rethreshold)
        self.instances.changed.connect(self._rethreshold)
        self.probabilities.changed.connect(self._rethreshold)
        for widget in (self.image, self.scope, self.instances, self.instances_3d, self.watershed):
            widget.changed.connect(self._on_image)  # they may change the route: the options shown follow
        for widget in (self.stack_axis, self.z_from, self.z_to, self.device, self.output):
            widget.changed.connect(self._update_estimate)
        self.models.on_change(self._on_model)
        for event in ("inserted", "removed", "reordered"):
            getattr(self.viewer.layers.events, event).connect(self._on_layers)

    # --- public -------------------------------------------------------------------------------------------------

    def segment(self, *_) -> bool:
        """Check the input and start segmenting in a worker; False (with a notification) if refused."""
        layer = self.image.value
        if layer is None:
            self.warn("no image layer; open an image (File > Open) or a sample (File > Open Sample > "
                      "napari-alnet), then choose it in 'Image'")
            return False
        name = f"{layer.name} ({self.models.value})"
        if not self.corrections.ask_before_run([name, f"{name} instances"]):
            return False
        try:
            model = self.models.load(self.device.value).with_precision(self.precision.value)
            region = self.region(layer)
            self._check_model(model, layer)
            request = self.request(layer, model, region)
            if request.route == BLOCKWISE:
                return self.volume.start(layer, model, region)
            job = segment_job(request)  # the region is read and checked now
        except (InputProblem, WeightsError, ValueError) as exc:  # all say what is wrong and what to do
            self.warn(str(exc))
            return False
        return self.memory.start(layer, request, job)

    def run_blocking(self) -> bool:
        """``segment()`` inline (no thread): for scripts and tests."""
        return self.runner.run_inline(self.segment)

    def output_name(self, kind: str = "labels") -> str | None:
        """Name of the output layer (``labels``, ``instances`` or ``probabilities``) of the last run."""
        if self.result is None:
            return None
        return self.result.name if kind == "labels" else f"{self.result.name} {kind}"

    def save_result(self, path: str | Path) -> bool:
        """Save the last volume result as OME-Zarr at ``path`` (probabilities beside it), in a worker, at the
        current threshold; False (with a notification) if there is nothing to save or ``path`` exists."""
        return self.volume.save(self.result, path)

    @property
    def volume_summary(self) -> VolumeSummary | None:
        """The last blockwise run's summary (``None``: none ran, or it stopped before the end)."""
        return self.volume.summary

    def warn(self, text: str) -> None:
        """A warning notification from this dock."""
        show_warning(f"Segment: {text}")

    def inform(self, text: str) -> None:
        """A notification from this dock."""
        show_info(f"Segment: {text}")

    def show_result(self, result: MemoryResult | VolumeResult) -> None:
        """Make ``result`` the dock's and show it."""
        self.result = result
        self._render(with_probabilities=self.probabilities.value)

    def _check_model(self, model: Segmenter, layer: Image) -> None:
        meta = model.metadata
        try:
            check_channels(meta, bool(layer.rgb), tuple(layer.data[0].shape if layer.multiscale else layer.data.shape))
        except ValueError as exc:
            raise InputProblem(f"layer {layer.name!r}: model {self.models.value!r}: {exc}") from exc
        if not layer.rgb and meta.in_channels == 3:
            self.warn(f"model {self.models.value!r} was trained on RGB images; the grayscale layer {layer.name!r} is "
                      "given to it as three equal channels")

    # --- results ------------------------------------------------------------------------------------------------

    def _render(self, with_probabilities: bool = False) -> None:
        """(Re)write the output layers of the last result at the current threshold."""
        result = self.result
        if result is None or result.source not in self.viewer.layers:
            return
        if isinstance(result, VolumeResult):
            self.volume.render(result)
        else:
            self.memory.render(result, with_probabilities)

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

    def _on_layers(self, event=None) -> None:
        """Follow layers being added, removed and renamed."""
        follow_renames(self.viewer, self._on_rename, event)
        if event is not None and getattr(event, "type", "") == "removed":
            if self.result is not None and event.value is self.result.source:
                self.result = None
            self.volume.forget(event.value)
        self._on_rename()

    def _on_rename(self, *_) -> None:
        self.image.reset_choices()
        self._on_image()

    def _on_image(self, *_) -> None:
        layer = self.image.value
        self.show_options(layer)
        self._update_estimate()
        self._update_layout(layer)

    def _update_estimate(self, *_) -> None:
        """Say what a run will take (blocks, minutes on the device) before it is started."""
        layer, name = self.image.value, self.models.value
        if layer is None or name is None or not hasattr(self, "estimate"):
            return
        try:
            request = self.request(layer, name, self.region(layer))
            if request.route != BLOCKWISE:
                self.estimate.value = "in memory (a small image: one network call)"
                return
            source = request.region_source()
            shape = source.shape[: source.ndim - int(bool(layer.rgb))]
            found = self.volume.session.estimate(shape, source_chunks(source), self.models.registry.metadata(name),
                                                 str(resolve_device(self.device.value)))
            self.estimate.value = found.describe()
        except (InputProblem, WeightsError, ValueError, KeyError, OSError) as exc:
            self.estimate.value = f"cannot estimate: {exc}"

    def _on_model(self, name: str, meta: ModelMetadata) -> None:
        with self.threshold.changed.blocked():
            self.threshold.value = float(np.clip(meta.threshold, self.threshold.min, self.threshold.max))
        self._update_estimate()
        self.update_fit()

    # --- layout and saving labels -------------------------------------------------------------------------------

    def _on_selected(self, *_) -> None:
        """The user selected a layer (or added one): an image layer becomes the 'Image'."""
        choose_selected(self.viewer, self.image, Image)

    def _update_layout(self, layer: Image | None) -> None:
        """Show the big-volume options only where they apply (unfolded for a big layer), and judge the image."""
        blockwise = layer is not None and self.runs_blockwise(layer)
        self.big_volume.visible = blockwise
        if blockwise and self.runs_blockwise(layer, instances=None, watershed=False, out=None):
            self.big_volume.folded = False
        self.update_fit()
        self._sync_buttons()

    def _sync_buttons(self, *_) -> None:
        """'Save labels…' for any finished result; 'Save result…' only for a finished big-volume result."""
        result = self.result
        volume = isinstance(result, VolumeResult)
        finished = result is not None and (not volume or result.complete)
        self.save_labels_button.enabled = finished
        self.save_button.visible = volume or self.big_volume.visible
        self.save_button.enabled = volume and finished

    def save_labels(self, path: str | Path) -> bool:
        """Save the last result's labels (and instances) to ``path`` (.tif or .zarr) with the image's pixel size,
        in a worker; False (with a notification) if there is nothing to save or the path is refused."""
        result = self.result
        layers = [layer_named(self.viewer, self.output_name(kind)) for kind in ("labels", "instances")]
        layers = [layer for layer in layers if isinstance(layer, Labels)]
        if result is None or not layers or (isinstance(result, VolumeResult) and not result.complete):
            self.warn("no finished result to save; press Segment first")
            return False
        try:
            targets = labels_targets(layers, path)
        except InputProblem as exc:
            self.warn(str(exc))
            return False

        def saved(paths: list[Path]) -> None:
            self.inform(f"saved {', '.join(str(p) for p in paths)}")
            self.status.value = f"saved labels to {', '.join(p.name for p in paths)} in {paths[0].parent}"

        return self.runner.start(save_labels_job(targets, result.source), saved)

    def _ask_save_labels(self, *_) -> None:
        from qtpy.QtWidgets import QFileDialog

        name = (self.output_name() or "labels").replace(" ", "_").replace("(", "").replace(")", "")
        path, _ = QFileDialog.getSaveFileName(None, "Save the labels", f"{name}.tif",
                                              "TIFF (*.tif *.tiff);;OME-Zarr (*.zarr)")
        if path:
            self.save_labels(path)
