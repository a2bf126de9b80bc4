"""The 'Fine-tune (AL-Net)' dock: train AL-Net on slices the user annotated in a Labels layer, or live while they
paint.

The dock is its form (``_finetune_form.FinetuneForm``: the controls) and four presenters with one job each:
``AnnotatedSlices`` keeps the slice list current (``_finetune_slices``), ``RequestBuilder`` makes the checked
``FinetuneRequest`` (``_finetune_request``), ``FinetuneRun`` starts a run, shows it and registers what it saved
(``_finetune_run``), ``LivePresenter`` runs *Live* mode (``_live``). Everything is checked in the GUI thread before
training starts (a notification says what is wrong and what to do; nothing starts). The request copies image and
annotations, so painting during a run changes nothing in it; a live run takes new strokes through its mailbox.
"""

from __future__ import annotations

import napari
import numpy as np
from napari.layers import Labels
from napari.utils.notifications import show_warning

from ..engine.export import ExportReport
from ..training.finetune import FinetuneRequest
from ..training.loop import TrainResult
from ..training.meaning import MeaningCheck
from ._finetune_form import IOU, LOSS, NAME, NO_HOLDOUT, FinetuneForm
from ._finetune_request import RequestBuilder
from ._finetune_run import FinetuneRun, _ending, ask_flip
from ._finetune_slices import AnnotatedSlices, lazy_annotated_slices
from ._layers import spatial_shape
from ._live import LivePresenter

#: Importable from here as before the dock was split (scripts, tests).
__all__ = ["IOU", "LOSS", "NAME", "NO_HOLDOUT", "FinetuneWidget", "_ending", "ask_flip", "lazy_annotated_slices"]


class FinetuneWidget(FinetuneForm):
    """Choose an image, its annotations and a starting model; press Fine-tune (or tick Live and paint); watch the
    curve; Stop any time.

    Scripting/tests: set the widgets' values, then ``start()`` (threaded) or ``run_blocking()`` (inline);
    ``runner`` is the ``JobRunner``, ``request`` the last started ``FinetuneRequest``, ``result`` its
    ``TrainResult`` and ``model_name`` the registry name of the saved model; ``live`` is the Live presenter.
    """

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(viewer)
        self.slices = AnnotatedSlices(self)
        self.requests = RequestBuilder(self, self.slices)
        self.run = FinetuneRun(self, self.requests)
        self.live = LivePresenter(self.viewer, self.runner, self.live_toggle, make_request=self._live_request,
                                  on_saved=self.run.live_saved, on_progress=self.run.live_progress)
        self.start_button.changed.connect(self.start)
        self.export_button.changed.connect(self.export)
        self.new_labels.changed.connect(self.add_annotations_layer)
        self._on_layers()
        self._on_scratch()
        self._on_preset()

    # --- public -------------------------------------------------------------------------------------------------

    def start(self, *_) -> bool:
        """Check everything and start fine-tuning in a worker; False (with a notification) if refused."""
        return self.run.start()

    def run_blocking(self) -> bool:
        """``start()`` inline (no thread): for scripts and tests."""
        return self.runner.run_inline(self.start)

    def export(self, *_) -> bool:
        """Export the last fine-tuned model as a checked bioimage.io package beside its weight file (a worker)."""
        return self.run.export()

    def make_request(self) -> FinetuneRequest:
        """The request for the current choices (copies image and annotations); raises with a message to show."""
        return self.requests.make_request()

    def refresh_slices(self, *_) -> None:
        """Re-detect the annotated slices (any nonzero pixel) of the chosen annotations layer."""
        self.slices.refresh_slices()

    def add_annotations_layer(self, *_) -> Labels | None:
        """Add an empty Labels layer matching the image and choose it (brush ready to paint label 1)."""
        image = self.image.value
        if image is None:
            show_warning("Fine-tune: no image layer to annotate; open an image first")
            return None
        layer = Labels(np.zeros(spatial_shape(image), np.uint8), name=f"{image.name} annotations",
                       scale=image.scale, translate=image.translate)
        self.slices.track_new(layer)
        self.viewer.add_layer(layer)
        layer.selected_label = 1
        self.annotations.value = layer
        self.viewer.layers.selection.active = layer
        layer.mode = "paint"
        return layer

    @property
    def request(self) -> FinetuneRequest | None:
        return self.run.request

    @property
    def result(self) -> TrainResult | None:
        return self.run.result

    @property
    def model_name(self) -> str | None:
        return self.run.model_name

    @property
    def meaning(self) -> MeaningCheck | None:
        return self.run.meaning

    @property
    def export_report(self) -> ExportReport | None:
        return self.run.export_report

    def _live_request(self) -> tuple:
        """A live run's request and layers (``RequestBuilder.live_request``), the run's read-outs reset."""
        found = self.requests.live_request()
        self.run.begin(found[0])
        return found
