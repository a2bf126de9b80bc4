"""The Segment dock's blockwise runs: big layers, 3D or split instances, runs with an 'Output' store.

The request runs in the worker (its checks and store creation too): the layer is read block by block, labels and
probabilities (uint8 or float16) go to OME-Zarr stores (the chosen path, or a temporary one that 'Save result'
keeps), and the output layers read those stores lazily, filling in as blocks finish. Cancel stops after the block
in flight and keeps the finished ones; Segment again with the same choices (``RunKey``) continues.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.layers import Image, Labels

from ..engine.devices import resolve_device
from ..engine.progress import Job, Progress
from ..engine.request import SegmentRequest, segment_job
from ..engine.segmenter import Segmenter
from ..engine.volume import VolumeSummary
from ..engine.volume.results import LONG_RUN_MINUTES, mark_store, save_job, unfinished_run
from ..engine.volume.stores import prob_path
from ..io.volumes import VolumeError
from ..model.metadata import ModelMetadata
from ._corrections import corrected_view
from ._layers import OUTPUT_KEY, InputProblem, Region, spatial_shape
from ._volume import (
    Pending,
    Placement,
    StoreView,
    VolumeSession,
    drawn_corrections,
    layer_marker,
    output_store,
    shows_store_in,
    source_chunks,
)

if TYPE_CHECKING:
    from .segment import SegmentWidget

#: Output layers of a running volume are refreshed at most this often (seconds).
REFRESH_S = 0.25


@dataclass(frozen=True)
class RunKey:
    """The choices a blockwise run was made with; Segment again with the same ones (and the same layer and
    region) resumes a run that stopped."""

    model: str | None
    device: str
    precision: str
    tile: int | None
    instances: str | None
    prob_dtype: str
    output: str
    watershed: bool

    @classmethod
    def of(cls, dock: SegmentWidget) -> RunKey:
        instances = dock.instances_mode()
        return cls(dock.models.value, dock.device.value, dock.precision.value, dock.tile.value, instances,
                   dock.prob_dtype.value, str(output_store(dock.output.value)),
                   bool(instances and dock.watershed.value))


@dataclass
class VolumeResult:
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


class VolumeRun:
    """Starts (or resumes) blockwise runs of the dock's requests and shows their stores as they fill in."""

    def __init__(self, dock: SegmentWidget) -> None:
        self.dock = dock
        self.session = VolumeSession()  # this dock's measured speeds and temporary stores
        self.session.close_with(dock.native, lambda folder: shows_store_in(dock.viewer.layers, folder))
        self.pending: Pending | None = None
        self.summary: VolumeSummary | None = None
        self._refreshed = 0.0

    def forget(self, layer: Any) -> None:
        """``layer`` was removed: its stopped run cannot be resumed."""
        if self.pending is not None and layer is self.pending.layer:
            self.pending = None

    def start(self, layer: Image, model: Segmenter, region: Region) -> bool:
        """Start (or resume) a blockwise run of ``region`` into Zarr stores, shown lazily as blocks finish."""
        dock, key = self.dock, RunKey.of(self.dock)
        pending, dest, threshold = self._destination(layer, region, key)
        temporary = output_store(dock.output.value) is None
        request = replace(dock.request(layer, model, region, out=dest, temporary=temporary,
                                       overwrite=bool(dock.overwrite.value) and pending is None), threshold=threshold)
        result = VolumeResult(layer, f"{layer.name} ({dock.models.value})", model.metadata, region,
                              Placement.of(layer, region), dest, threshold, key.instances, temporary=temporary)
        self._announce(request, model)
        dock.status.value = f"{'resuming' if pending else 'segmenting'} {layer.name!r} blockwise into {dest}…"
        self._refreshed = 0.0
        shown = Pending(layer, region, key, dest, threshold)
        return dock.runner.start(_in_worker(request, layer_marker(layer, region)),
                                 lambda summary: self._ended(result, summary),
                                 on_progress=lambda report: self._progress(result, report, shown),
                                 on_cancelled=lambda summary: self._ended(result, summary))

    def _destination(self, layer: Image, region: Region, key: RunKey) -> tuple[Pending | None, Path, float]:
        """The stopped run this one continues (if any), the labels store it writes and the threshold it runs at."""
        dock = self.dock
        pending = self.pending if self.pending is not None and self.pending.matches(layer, region, key) else None
        chosen = output_store(dock.output.value)
        dest = pending.labels if pending else (chosen or self.session.temporary_store(layer.name))
        threshold = pending.threshold if pending else float(dock.threshold.value)
        if pending is None and chosen is not None and not dock.overwrite.value:
            earlier = _earlier_run(chosen, layer_marker(layer, region))
            threshold = threshold if earlier is None else float(earlier["run"]["settings"]["threshold"])
            pending = None if earlier is None else Pending(layer, region, key, chosen, threshold)
        return pending, dest, threshold

    def _announce(self, request: SegmentRequest, model: Segmenter) -> None:
        """Say what the run will take; announce a long one."""
        source = request.region_source()
        found = self.session.estimate(source.shape[: source.ndim - int(request.rgb)], source_chunks(source),
                                      model.metadata, str(model.device))
        self.dock.estimate.value = found.describe()
        if found.minutes >= LONG_RUN_MINUTES:
            self.dock.inform(f"{found.describe()}. Progress is in the activity dock; Cancel keeps the finished "
                             "blocks and Segment continues from there")

    def _progress(self, result: VolumeResult, report: Progress, pending: Pending) -> None:
        """Show the result once its stores exist (the engine's first report); then refresh the output layers
        (napari re-reads the displayed slice only), at most every ``REFRESH_S``."""
        dock, metrics = self.dock, report.metrics
        if result.source not in dock.viewer.layers:  # removed while it is segmented: nothing to show it over
            return
        if dock.result is not result:
            self.pending = pending
            dock.show_result(result)
        if metrics.get("phase") == "blocks" and metrics.get("slices_per_s"):
            plane = int(np.prod(_plane(result)))
            self.session.record_rate(str(resolve_device(dock.device.value)), metrics["slices_per_s"], plane)
        now = time.perf_counter()
        if now - self._refreshed >= REFRESH_S:
            self._refreshed = now
            self._refresh_outputs(result)

    def _refresh_outputs(self, result: VolumeResult, reopen: bool = False) -> None:
        for kind in ("labels", "instances", "probabilities"):
            name = self.dock.output_name(kind) if self.dock.result is result else None
            layer = layer_named(self.dock.viewer, name)
            if layer is not None and isinstance(layer.data, StoreView):
                if reopen:
                    layer.data.reopen()
                if layer.visible:
                    layer.refresh()

    def _ended(self, result: VolumeResult, summary: VolumeSummary | None) -> None:
        self.summary = summary
        if summary is not None and summary.complete:
            result.complete = True
            self.pending = None
        if result.source not in self.dock.viewer.layers:
            return
        if result.instances and result.complete:
            self.render(result)  # the instance ids may have been widened to uint64
        self._refresh_outputs(result, reopen=True)
        self.dock.status.value = _message(result, summary)

    def render(self, result: VolumeResult) -> None:
        """(Re)make the output layers of a volume result: views of its stores at the dock's threshold."""
        dock = self.dock
        threshold = float(dock.threshold.value)
        if result.instances is None and abs(threshold - result.threshold) < 1e-9:
            semantic = StoreView(result.labels, result.placement)
        else:
            semantic = StoreView(result.probabilities, result.placement, threshold=threshold)
        self._put_view(dock.output_name(), Labels, semantic, result)
        if result.instances:
            self._put_view(dock.output_name("instances"), Labels, StoreView(result.labels, result.placement),
                           result)
        if dock.probabilities.value:
            self._put_view(dock.output_name("probabilities"), Image, StoreView(result.probabilities,
                                                                                  result.placement), result)

    def _put_view(self, name: str, kind: type, view: StoreView, result: VolumeResult) -> None:
        viewer = self.dock.viewer
        view = self.dock.corrections.editable(name, view) if kind is Labels else view  # paintable; kept
        layer = layer_named(viewer, name)
        if isinstance(layer, kind) and isinstance(layer.data, StoreView) and layer.data.shape == view.shape:
            if layer.data.path != view.path or layer.data.threshold != view.threshold:
                layer.data = view
            return
        if layer is not None:
            viewer.layers.remove(layer)
        like = result.source
        kwargs = {"name": name, "scale": like.scale, "translate": result.placement.translate(like)}
        if kind is Labels:
            viewer.add_labels(view, **kwargs)
        else:
            top = 255.0 if view.dtype == np.uint8 else 1.0
            viewer.add_image(view, colormap="magma", blending="additive", contrast_limits=(0.0, top),
                             metadata={OUTPUT_KEY: True}, **kwargs)

    def save(self, result: Any, path: str | Path) -> bool:
        """Save a finished volume result as OME-Zarr at ``path`` (probabilities beside it), in the worker, at the
        dock's threshold; False (with a notification) if there is nothing to save or ``path`` exists."""
        dock = self.dock
        if not isinstance(result, VolumeResult) or not result.complete:
            dock.warn("no finished big-volume result to save; segment first (small images are in-memory layers: "
                      "File > Save Selected Layers)")
            return False
        dest = output_store(path)
        if dest is None:
            dock.warn("choose where to save the result (a name ending in .zarr)")
            return False
        try:  # the checks run here; the copying in the worker
            shown = layer_named(dock.viewer, dock.output_name("instances" if result.instances else "labels"))
            job = save_job(result.labels, dest, float(dock.threshold.value), semantic=result.instances is None,
                           drawn=drawn_corrections(corrected_view(shown)))  # the corrections go into the saved labels
        except (VolumeError, OSError) as exc:
            dock.warn(str(exc))
            return False

        def saved(out: Path) -> None:
            dock.inform(f"saved {out} and {prob_path(out).name}")
            dock.status.value = f"saved {out}"

        return dock.runner.start(job, saved)


def _in_worker(request: SegmentRequest, marker: dict) -> Job[VolumeSummary]:
    """The blockwise run as a job whose checks and store creation happen in the worker too (nothing of it runs
    in the GUI thread); the labels store is marked with the layer and region."""
    job = segment_job(request)
    mark_store(request.outputs.out, marker)
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


def _plane(result: VolumeResult) -> tuple[int, ...]:
    shape = spatial_shape(result.source)
    return tuple(len(range(*r.indices(n))) for r, n in zip(result.region[-2:], shape[-2:], strict=True))


def layer_named(viewer: Any, name: str | None) -> Any:
    """The viewer's layer called ``name`` (``None`` when there is none, or no name)."""
    return next((layer for layer in viewer.layers if layer.name == name), None) if name is not None else None


def _message(result: VolumeResult, summary: VolumeSummary | None) -> str:
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
