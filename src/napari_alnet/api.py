"""The public Python API, re-exported from the layers that implement it."""

from __future__ import annotations

from .engine.progress import Progress, StopRequested, run_job
from .engine.request import SegmentOutputs, SegmentRequest, segment_job
from .engine.segmenter import Prediction, Segmenter, as_segmenter, load_model, predict
from .io.weights import WeightsError, resolve_weights
from .model.metadata import ModelMetadata

__all__ = ["ModelMetadata", "Prediction", "Progress", "SegmentOutputs", "SegmentRequest", "Segmenter", "StopRequested",
           "WeightsError", "as_segmenter", "load_model", "predict", "resolve_weights", "run_job", "segment_job"]
