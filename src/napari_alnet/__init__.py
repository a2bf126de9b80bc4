"""napari-alnet: AL-Net segmentation for napari and the command line."""

from __future__ import annotations

import os

# Before torch loads its OpenMP runtime (libgomp reads this once): idle OpenMP threads sleep instead of spinning.
# With spinning (the default), a core shared with any other work — the stack pipeline's reader/writer threads,
# another program — stalls every parallel region: 1.5x end to end on the project's 2-core CPU (docs/performance.md).
# A value the user set is kept; it has no effect if torch was imported before napari_alnet.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"

from .api import ModelMetadata, Prediction, Segmenter, WeightsError, load_model, predict

__all__ = ["ModelMetadata", "Prediction", "Segmenter", "WeightsError", "__version__", "load_model", "predict"]
