"""The network's working resolution: a model may run at a fixed size or at a zoom of the image.

A model card's ``input_size`` (dermoscopy: trained at 192 x 192) or ``input_scale`` (``alnet train --scale 2``:
trained on images upsampled 2x) says at which resolution the network saw its training data. Training,
fine-tuning and inference all resample through the functions here, so the three agree.
"""

from __future__ import annotations

import numpy as np
import torch

from ..model.metadata import network_shape

__all__ = ["network_shape", "resample_image", "resample_mask", "resample_probabilities"]


def resample_image(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``image`` (Y, X[, C]) resized to ``shape`` (bilinear, anti-aliased when shrinking); the dtype is kept
    (integers rounded), so a dtype-range normalization still applies."""
    shape = tuple(int(s) for s in shape)
    if tuple(image.shape[:2]) == shape:
        return image
    from skimage.transform import resize  # here: importing scikit-image and SciPy costs a quarter of torch's import

    shrinking = shape[0] < image.shape[0] or shape[1] < image.shape[1]
    out = resize(image, shape + image.shape[2:], order=1, preserve_range=True, anti_aliasing=shrinking)
    if np.issubdtype(image.dtype, np.integer):
        info = np.iinfo(image.dtype)
        return np.clip(np.rint(out), info.min, info.max).astype(image.dtype)
    return out.astype(image.dtype if image.dtype.kind == "f" else np.float32)


def resample_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Boolean ``mask > 0`` of a (Y, X) mask resized to ``shape``: area-weighted (bilinear / anti-aliased),
    then > 0.5."""
    m = np.asarray(mask)
    shape = tuple(int(s) for s in shape)
    if tuple(m.shape) == shape:
        return m > 0
    return resample_image((m > 0).astype(np.float32), shape) > 0.5


def resample_probabilities(probs: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(N, Y, X) float32 probabilities resized (bilinear) to (N, *shape)."""
    if tuple(probs.shape[1:]) == tuple(shape):
        return probs
    t = torch.nn.functional.interpolate(torch.from_numpy(np.ascontiguousarray(probs))[:, None], size=tuple(shape),
                                        mode="bilinear", align_corners=False)
    return t[:, 0].numpy()
