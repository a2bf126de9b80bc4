"""Inference: images to foreground probabilities (no Qt)."""

from __future__ import annotations

import numpy as np
import torch

from .api import model_metadata
from .model import ALNet
from .training.data import to_channels


def to_model_input(image: np.ndarray, model: ALNet) -> np.ndarray:
    """Normalized (C, H, W) float32 input for one 2D image (gray (H, W) or RGB(A) (H, W, C))."""
    meta = model_metadata(model)
    image = np.asarray(image)
    if not np.issubdtype(image.dtype, np.number) or np.issubdtype(image.dtype, np.complexfloating):
        raise ValueError(f"image dtype {image.dtype} is not a real numeric type")
    if np.issubdtype(image.dtype, np.floating) and not np.isfinite(image).all():
        raise ValueError("image contains NaN or infinite values; replace them before segmenting")
    if image.ndim == 3 and image.shape[-1] in (3, 4) and meta.in_channels == 1 and meta.rgb_to_gray == "refuse":
        raise ValueError("this model expects a 1-channel (grayscale) image, got RGB")
    bounds = meta.normalization.bounds(image[..., :3] if image.ndim == 3 else image)
    return meta.normalization.apply(to_channels(image, meta.in_channels), bounds)


@torch.no_grad()
def predict(model: ALNet, image: np.ndarray) -> np.ndarray:
    """Foreground probabilities (float32) with the image's spatial shape."""
    device = next(model.parameters()).device
    x = torch.from_numpy(to_model_input(image, model))[None].to(device)
    was_training = model.training
    model.eval()
    try:
        logits = model(x)
    finally:
        model.train(was_training)
    return torch.sigmoid(logits[0, 0]).float().cpu().numpy()
