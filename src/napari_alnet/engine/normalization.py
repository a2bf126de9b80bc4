"""From raw pixels to model input: channel conversion and a model's ``Normalization`` (see ``model.metadata``)."""

from __future__ import annotations

import numpy as np

from ..io.layout import has_colour_axis
from ..model.metadata import ModelMetadata, Normalization

__all__ = ["Normalization", "bounds_pixels", "model_input", "to_channels"]

#: ITU-R BT.601 luminance weights of R and B (G's is 1 minus both), for RGB into a one-channel model.
LUMA_R, LUMA_B = 0.299, 0.114


def as_gray(image: np.ndarray) -> np.ndarray:
    """A colour image (…, 3|4) whose R, G and B are equal everywhere is a gray image: its first channel (a view);
    anything else unchanged. Alpha is ignored, as everywhere."""
    if image.ndim >= 3 and has_colour_axis(image.shape):
        r, g, b = image[..., 0], image[..., 1], image[..., 2]
        if np.array_equal(r, g) and np.array_equal(r, b):
            return r
    return image


def bounds_pixels(image: np.ndarray) -> np.ndarray:
    """The pixels a plane's normalization bounds are computed on: gray, or the three colour channels (a gray image
    stored as RGB gives the gray image's bounds)."""
    image = as_gray(image)
    return image[..., :3] if image.ndim == 3 and has_colour_axis(image.shape) else image


def to_channels(image: np.ndarray, in_channels: int) -> np.ndarray:
    """(C, H, W) from a 2D (H, W) or RGB(A) (H, W, C) image, with ``in_channels`` channels; equal R, G, B are the
    gray image, exactly (``as_gray``); other RGB into one channel is its luminance."""
    image = as_gray(image)
    if image.ndim == 3 and has_colour_axis(image.shape):
        if in_channels == 1:
            kind = np.float64 if image.dtype.itemsize > 4 else np.float32
            r, g, b = (image[..., i].astype(kind) for i in range(3))
            return (g + kind(LUMA_R) * (r - g) + kind(LUMA_B) * (b - g))[None]
        return np.moveaxis(image[..., :3], -1, 0)
    if image.ndim != 2:
        raise ValueError(f"expected a 2D grayscale or RGB image, got shape {image.shape}")
    return np.repeat(image[None], in_channels, axis=0)


def model_input(image: np.ndarray, meta: ModelMetadata) -> np.ndarray:
    """Normalized (C, Y, X) float32 model input of one 2D image (gray (Y, X) or RGB(A) (Y, X, C)).

    Normalization bounds are computed on the whole image (never per tile); RGB goes to a 1-channel model as
    luminance, gray to a 3-channel model replicated.
    """
    bounds = meta.normalization.bounds(bounds_pixels(image))
    return meta.normalization.apply(to_channels(image, meta.in_channels), bounds)
