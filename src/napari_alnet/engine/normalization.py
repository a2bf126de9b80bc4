"""From raw pixels to model input: channel conversion and a model's ``Normalization`` (see ``model.metadata``)."""

from __future__ import annotations

import numpy as np

from ..io.layout import has_colour_axis
from ..model.metadata import ModelMetadata, Normalization

__all__ = ["Normalization", "model_input", "to_channels"]


def to_channels(image: np.ndarray, in_channels: int) -> np.ndarray:
    """(C, H, W) from a 2D (H, W) or RGB(A) (H, W, C) image, with ``in_channels`` channels."""
    if image.ndim == 3 and has_colour_axis(image.shape):
        rgb = image[..., :3].astype(np.float32)
        if in_channels == 1:
            return (rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32))[None]
        return np.moveaxis(rgb, -1, 0)
    if image.ndim != 2:
        raise ValueError(f"expected a 2D grayscale or RGB image, got shape {image.shape}")
    return np.repeat(image[None], in_channels, axis=0)


def model_input(image: np.ndarray, meta: ModelMetadata) -> np.ndarray:
    """Normalized (C, Y, X) float32 model input of one 2D image (gray (Y, X) or RGB(A) (Y, X, C)).

    Normalization bounds are computed on the whole image (never per tile); RGB goes to a 1-channel model as
    luminance, gray to a 3-channel model replicated.
    """
    bounds = meta.normalization.bounds(image[..., :3] if image.ndim == 3 else image)
    return meta.normalization.apply(to_channels(image, meta.in_channels), bounds)
