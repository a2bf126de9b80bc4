"""The Fine-tune dock's *Live* mode: train in the background while the user paints, preview the displayed slice.

``LivePresenter`` owns the *Live* toggle. Turned on, it starts ``training.live.live_job`` in the dock's
``JobRunner`` and hands the painted labels to the job's ``Mailbox`` ``POST_DELAY_S`` after the last paint event (a
copy in the GUI thread; the worker picks it up between two training steps, so painting never waits for
training), and the displayed slice whenever the viewer moves. Each preview goes to an ``<image> (live preview)``
layer (never the painted layer). Turned off (or Stop), the job saves the newest weights as a new version of the
model in 'Save to', registered at once (the Segment dock lists it).
"""

from __future__ import annotations

from collections.abc import Callable

import napari
import numpy as np
from magicgui.widgets import CheckBox
from napari.layers import Image, Labels
from napari.utils.notifications import show_info, show_warning
from qtpy.QtCore import QTimer

from ..engine.progress import Progress
from ..training.finetune import FinetuneRequest
from ..training.live import POST_DELAY_S, LiveConfig, Mailbox, live_job
from ..training.loop import TrainResult
from ._corrections import corrections_of, training_marks
from ._layers import CURRENT_SLICE, base_data, region_for, upsert
from ._worker import JobRunner

LIVE_TOOLTIP = ("train while you paint: every few seconds the displayed slice is predicted again with what the "
                "network has learned from your strokes so far (scribbles: 1 = foreground, 2 = background). "
                "Painting never waits. Untick (or Stop) to keep the model as a new version in 'Save to'")


def painted_labels(layer: Labels, mode: str) -> np.ndarray:
    """What live mode trains on from ``layer``: its data, or for a corrected Segment result its corrected slices'
    training marks (``_corrections.training_marks``) with zeros elsewhere."""
    marks = training_marks(layer, mode)
    data = base_data(layer)
    if marks is None:
        return np.asarray(data)
    out = np.zeros(data.shape, np.uint8)
    for z in corrections_of(layer).slices():
        out[z if data.ndim == 3 else ...] = marks(z)
    return out


class LivePresenter:
    """One live run at a time, started and stopped by ``toggle`` (the form's *Live* check box); ``mailbox`` is the
    running job's (None when off); ``previews`` counts the previews shown.

    ``make_request()`` gives the request, image layer and annotations layer (or raises a ``ValueError`` with a
    message to show); ``on_saved(result, request)`` gets the saved model (registration and the dock's report).
    """

    def __init__(self, viewer: napari.Viewer, runner: JobRunner, toggle: CheckBox, *,
                 make_request: Callable[[], tuple[FinetuneRequest, Image, Labels]],
                 on_saved: Callable[[TrainResult | None, FinetuneRequest], None],
                 on_progress: Callable[[Progress], None] | None = None) -> None:
        self.viewer, self.runner, self.toggle = viewer, runner, toggle
        self.make_request, self.on_saved, self.on_progress = make_request, on_saved, on_progress
        self.config = LiveConfig()
        self.mailbox: Mailbox | None = None
        self.request: FinetuneRequest | None = None
        self.previews = 0
        #: The last preview's metrics without its array (slice, snapshot version, slices trained on, ...).
        self.last: dict | None = None
        self._layers: tuple[Image, Labels] | None = None
        self._timer = QTimer()
        self._timer.setSingleShot(True)
        self._timer.setInterval(int(POST_DELAY_S * 1000))
        self._timer.timeout.connect(self.post)
        self.toggle.changed.connect(self._on_toggle)

    @property
    def running(self) -> bool:
        return self.mailbox is not None

    def start(self) -> bool:
        """Start live training on the dock's annotations and image; False (with a notification) if refused."""
        if self.runner.running:
            show_info("Fine-tune: a run is in progress; wait or press Stop, then turn on Live")
            return self._off()
        try:
            request, image, labels = self.make_request()
        except ValueError as exc:  # InputProblem, AnnotationError, WeightsError: a message to show
            show_warning(f"Fine-tune: {exc}")
            return self._off()
        self.request, self.previews, self.last, self._layers = request, 0, None, (image, labels)
        self.mailbox = Mailbox(view=self._displayed())
        labels.events.paint.connect(self._schedule)
        labels.events.data.connect(self._schedule)
        self.viewer.dims.events.current_step.connect(self._on_dims)
        with self.toggle.changed.blocked():
            self.toggle.value = True
        started = self.runner.start(live_job(request, self.mailbox, config=self.config), self._saved,
                                    on_cancelled=self._saved, on_progress=self._progress)
        if started and self.runner.worker is not None and not self.runner.synchronous:
            self.runner.worker.finished.connect(self._disconnect)  # also after a failure
        return started or self._off()

    def stop(self) -> None:
        """Stop at the next training step; the newest weights are saved (``on_saved``)."""
        if self.running:
            self.post()  # the last strokes count
            self.runner.cancel()

    def post(self) -> None:
        """Hand the painted labels to the running job (a copy; the job picks it up between two steps)."""
        self._timer.stop()
        if self.mailbox is not None and self._layers is not None:
            self.mailbox.post(painted_labels(self._layers[1], self.request.mode))

    def _schedule(self, *_) -> None:
        self._timer.start()  # strokes in quick succession are posted once

    def _on_toggle(self, on: bool) -> None:
        if on and not self.running:
            self.start()
        elif not on:
            self.stop()

    def _displayed(self) -> int:
        image = self._layers[0] if self._layers is not None else None
        if image is None or image not in self.viewer.layers:
            return 0
        region = region_for(self.viewer, image, CURRENT_SLICE)
        return int(region[0]) if len(region) == 3 else 0

    def _on_dims(self, *_) -> None:
        if self.mailbox is not None:
            self.mailbox.show(self._displayed())

    def _progress(self, report: Progress) -> None:
        if self.on_progress is not None:
            self.on_progress(report)
        preview = report.metrics.get("preview")
        if preview is None or self._layers is None or self._layers[0] not in self.viewer.layers:
            return
        image = self._layers[0]
        region = (report.metrics["preview_slice"], slice(None), slice(None)) if self.request.labels.ndim == 3 else (
            slice(None), slice(None))
        upsert(self.viewer, f"{image.name} (live preview)", Image, image, np.dtype(np.float32), region,
               np.asarray(preview, np.float32))
        self.previews += 1
        self.last = {k: v for k, v in report.metrics.items() if k != "preview"}

    def _saved(self, result: TrainResult | None) -> None:
        request = self.request
        self._disconnect()
        if request is not None:
            self.on_saved(result, request)

    def _disconnect(self, *_) -> None:
        """Live mode is off: stop listening to the layer and the viewer, untick the toggle."""
        self._timer.stop()
        if self._layers is not None:
            labels = self._layers[1]
            for handler in (labels.events.paint, labels.events.data):
                handler.disconnect(self._schedule)
            self.viewer.dims.events.current_step.disconnect(self._on_dims)
        self._layers, self.mailbox = None, None
        self._off()

    def _off(self) -> bool:
        with self.toggle.changed.blocked():
            self.toggle.value = False
        return False


__all__ = ["LIVE_TOOLTIP", "LivePresenter", "painted_labels"]
