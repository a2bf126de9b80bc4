"""napari-alnet: AL-Net segmentation for napari and the command line."""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

#: The public API, imported on first use: importing the package loads no torch, so that an entry point can first
#: choose how torch's OpenMP threads wait for its kind of work (``engine.threads.prepare_for``).
_API = ("ModelMetadata", "Prediction", "Progress", "SegmentOutputs", "SegmentRequest", "Segmenter", "StopRequested",
        "WeightsError", "load_model", "predict", "run_job", "segment_job")
__all__ = [*_API, "__version__"]


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(".api", __name__), name)
    raise AttributeError(f"module 'napari_alnet' has no attribute {name!r}")
