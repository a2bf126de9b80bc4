"""The Segment dock's controls: what to segment, with which model, and what comes out, as one ``SegmentRequest``.

``SegmentForm`` builds the controls (each with a tooltip), shows only those that apply to the chosen layer and
scope, judges the image against the model, and turns the choices into the ``SegmentRequest`` the dock runs
(``engine.request``: its route says in memory or blockwise).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import napari
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
from napari.layers import Image

from ..engine.devices import PRECISION_CHOICES
from ..engine.request import BLOCKWISE, SCOPES, WHOLE_STACK, Z_RANGE, Scope, SegmentOutputs, SegmentRequest
from ..engine.segmenter import Segmenter
from ..engine.suitability import image_statistics
from ..engine.volume import PROBABILITY_DTYPES
from ._layers import (
    InputProblem,
    Region,
    axis_choices,
    base_data,
    pixel_size_nm,
    region_for,
    sample_plane,
    spatial_shape,
)
from ._layout import ScrollDock, Section
from ._models import FitNote, ModelPicker, device_picker, tile_picker
from ._volume import output_store
from ._worker import unwrap


def precision_picker() -> ComboBox:
    """``auto`` plus the precisions (a choice the device cannot run is refused with a notification)."""
    return ComboBox(label="Precision", choices=list(PRECISION_CHOICES), value="auto",
                    tooltip="auto: fp16 on CUDA; on a CPU the fastest precision the model card validates — int8 "
                            "(the em model; needs onnxruntime) where measured fastest here, bf16 on a CPU with "
                            "native bf16 (AMX / AVX-512-BF16) — else fp32")


class SegmentForm(ScrollDock):
    """The controls of the Segment dock and the ``SegmentRequest`` they describe (the dock adds the behaviour)."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__()
        self.viewer = unwrap(viewer)
        self._stats = None  # (layer key, ImageStatistics) of the image last judged against the model
        self._judged: tuple = ()
        self._build()
        self._build_outputs()
        self.estimate.native.setWordWrap(True)
        self.status.native.setWordWrap(True)

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

    def lay_out(self, extra: Sequence[Any]) -> None:
        """Put the controls in the dock, ``extra`` (the corrections row) between the buttons and the progress."""
        self.extend([self.image, self.models.combo, self.models.summary, self.fit.label, self.fit.button, self.scope,
                     self.z_from, self.z_to, self.stack_axis, self.threshold, self.probabilities,
                     self.instances, self.instances_3d, self.watershed, self.big_volume, self.advanced, self.estimate,
                     self.run_button, self.cancel_button, self.save_labels_button, self.save_button, *extra,
                     self.progress, self.status])

    def choices(self) -> list[Any]:
        """The controls disabled while a run is in flight."""
        return [self.image, self.models.combo, self.device, self.precision, self.scope, self.z_from, self.z_to,
                self.stack_axis, self.tile, self.threshold, self.probabilities, self.instances, self.instances_3d,
                self.watershed, self.output, self.prob_dtype, self.overwrite, self.run_button]

    # --- the request ---------------------------------------------------------------------------------------------

    def instances_mode(self) -> str | None:
        """``None``, ``2d`` or ``3d``: the instances asked for."""
        return ("3d" if self.instances_3d.value else "2d") if self.instances.value else None

    def region(self, layer: Image) -> Region:
        """The index of the chosen scope in ``layer``."""
        return region_for(self.viewer, layer, self.scope.value, self.stack_axis.value,
                          (int(self.z_from.value), int(self.z_to.value)))

    def request(self, layer: Image, model: Segmenter | str, region: Region | None = None, **outputs: Any
                ) -> SegmentRequest:
        """The ``SegmentRequest`` of the choices for ``region`` of ``layer`` (``None``: the whole layer);
        ``outputs``: changes of its ``SegmentOutputs`` (``out``, ``temporary``, ``overwrite``)."""
        instances = self.instances_mode()
        chosen = SegmentOutputs(out=output_store(self.output.value), probabilities=True, instances=instances,
                                watershed=bool(instances and self.watershed.value), prob_dtype=self.prob_dtype.value,
                                overwrite=bool(self.overwrite.value))
        changed = {k: getattr(chosen, k) for k in SegmentOutputs.__dataclass_fields__} | outputs
        return SegmentRequest(model, image=base_data(layer), scope=Scope(self.scope.value, region),
                              outputs=SegmentOutputs(**changed), device=self.device.value,
                              precision=self.precision.value, threshold=float(self.threshold.value),
                              tile=self.tile.value or None, rgb=bool(layer.rgb), name=f"layer {layer.name!r}")

    def runs_blockwise(self, layer: Image, **outputs: Any) -> bool:
        """Whether the choices (``outputs``: changed) send ``layer`` through the blockwise engine: the request's
        route (the model takes no part in it); False for a layer that cannot be segmented."""
        try:
            return self.request(layer, self.models.value or "", **outputs).route == BLOCKWISE
        except ValueError:  # not an image AL-Net segments: Segment says why
            return False

    # --- showing what applies ------------------------------------------------------------------------------------

    def _image_choices(self, _widget=None) -> list[tuple[str, Image]]:
        return [(layer.name, layer) for layer in self.viewer.layers if isinstance(layer, Image)]

    def _axis_choices(self, _widget=None):
        return axis_choices(self.viewer, self.image.value if hasattr(self, "image") else None)

    def show_options(self, layer: Image | None) -> None:
        """Show the stack axis, z-range and instance options where they apply to ``layer`` and the scope."""
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

    def _depth(self, layer: Image | None) -> int:
        if layer is None:
            return 1
        shape = spatial_shape(layer)
        axis = 0 if len(shape) == 3 else self.stack_axis.value
        return int(shape[axis]) if len(shape) >= 3 and axis is not None and axis < len(shape) - 2 else 1

    def update_fit(self, *_) -> None:
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
