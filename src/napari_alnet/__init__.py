"""napari-alnet: AL-Net segmentation for napari and the command line."""

from __future__ import annotations

__version__ = "0.1.0"

from .api import load_model
from .inference import predict

__all__ = ["__version__", "load_model", "predict"]
