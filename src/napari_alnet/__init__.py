"""napari-alnet: AL-Net segmentation for napari and the command line."""

from __future__ import annotations

__version__ = "0.1.0"

from .api import ModelMetadata, Prediction, Segmenter, WeightsError, load_model, predict

__all__ = ["ModelMetadata", "Prediction", "Segmenter", "WeightsError", "__version__", "load_model", "predict"]
