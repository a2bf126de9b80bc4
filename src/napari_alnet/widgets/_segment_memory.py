"""The Segment dock's in-memory runs: the region is read, the network runs once, the probabilities are kept so the
threshold can be changed without running it again, and the labels go into full-size NumPy layers (with the
corrections a user painted drawn over them)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from napari.layers import Image

from ..engine import postprocess
from ..engine.progress import Job
from ..engine.request import SegmentRequest
from ..engine.segmenter import Prediction
from ..model.metadata import ModelMetadata
from ._layers import Region, upsert

if TYPE_CHECKING:
    from .segment import SegmentWidget


@dataclass
class MemoryResult:
    """The last run's probabilities, kept so the threshold can be changed without re-running the network."""

    source: Image
    name: str
    metadata: ModelMetadata
    region: Region
    probabilities: np.ndarray


class MemoryRun:
    """Runs an in-memory request in the dock's worker, then shows its result; re-renders it at a new threshold."""

    def __init__(self, dock: SegmentWidget) -> None:
        self.dock = dock

    def start(self, layer: Image, request: SegmentRequest, job: Job[Prediction | None]) -> bool:
        """Run ``job`` (``segment_job(request)``) in the worker; its result becomes the dock's."""
        dock, name = self.dock, self.dock.models.value
        meta, region = request.model.metadata, request.scope.region
        started = time.perf_counter()
        dock.status.value = f"segmenting {layer.name!r} with {name}…"

        def done(prediction: Prediction) -> None:
            if layer not in dock.viewer.layers:
                dock.warn(f"layer {layer.name!r} was removed while it was being segmented")
                return
            dock.show_result(MemoryResult(layer, f"{layer.name} ({name})", meta, region, prediction.probabilities))
            dock.status.value = (f"done on {prediction.device} ({prediction.precision}) in "
                                 f"{time.perf_counter() - started:.1f} s")

        return dock.runner.start(job, done)

    def render(self, result: MemoryResult, with_probabilities: bool) -> None:
        """(Re)write the output layers from the kept probabilities at the dock's threshold."""
        dock = self.dock
        threshold = float(dock.threshold.value)
        prob = result.probabilities
        dock.corrections.upsert(dock.output_name(), result.source, np.dtype(np.uint8), result.region,
                                postprocess.semantic_labels(prob, threshold))  # corrections drawn over it
        if dock.instances.value:
            ids = postprocess.instance_labels(prob, threshold, objects=result.metadata.objects)
            dock.corrections.upsert(dock.output_name("instances"), result.source, np.dtype(np.int32), result.region,
                                    ids, instances=True)
        if with_probabilities:
            upsert(dock.viewer, dock.output_name("probabilities"), Image, result.source, np.dtype(np.float32),
                   result.region, prob)
