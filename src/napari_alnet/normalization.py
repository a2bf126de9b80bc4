"""Intensity normalization, stored in every weight file so inference matches training."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import numpy as np

KINDS = ("percentile", "dtype_range")


@dataclass(frozen=True)
class Normalization:
    """Maps raw intensities to model input.

    ``percentile``: per image (per slice), ``low``/``high`` percentiles over all channels -> [0, 1]; independent
    of dtype, so uint16 and uint8 copies of the same content give the same input.
    ``dtype_range``: integers divided by their dtype's maximum; floats taken as already in [0, 1].
    Then ``(x - mean) / std``.
    """

    kind: str = "percentile"
    low: float = 1.0
    high: float = 99.0
    mean: float = 0.5
    std: float = 0.25

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"normalization kind must be one of {KINDS}, got {self.kind!r}")

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Normalization:
        return cls(**json.loads(text))

    def bounds(self, image: np.ndarray) -> tuple[float, float]:
        """Intensity range mapped to [0, 1] for one image (a subsample is enough for big images)."""
        if self.kind == "dtype_range":
            if np.issubdtype(image.dtype, np.integer):
                info = np.iinfo(image.dtype)
                return (float(min(info.min, 0)), float(info.max))
            return (0.0, 1.0)
        step = max(1, int(np.sqrt(image.size / 1_000_000)))
        sample = image[::step, ::step] if image.ndim >= 2 else image
        lo, hi = np.percentile(sample, [self.low, self.high])
        return float(lo), float(hi)

    def apply(self, image: np.ndarray, bounds: tuple[float, float] | None = None) -> np.ndarray:
        """float32 model input from ``image`` (bounds computed from it unless given)."""
        lo, hi = bounds if bounds is not None else self.bounds(image)
        scale = 1.0 / (hi - lo) if hi > lo else 1.0
        out = (image.astype(np.float32) - np.float32(lo)) * np.float32(scale)
        return (out - np.float32(self.mean)) / np.float32(self.std)


def to_channels(image: np.ndarray, in_channels: int) -> np.ndarray:
    """(C, H, W) from a 2D (H, W) or RGB(A) (H, W, C) image, with ``in_channels`` channels."""
    if image.ndim == 3 and image.shape[-1] in (3, 4):
        rgb = image[..., :3].astype(np.float32)
        if in_channels == 1:
            return (rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32))[None]
        return np.moveaxis(rgb, -1, 0)
    if image.ndim != 2:
        raise ValueError(f"expected a 2D grayscale or RGB image, got shape {image.shape}")
    return np.repeat(image[None], in_channels, axis=0)
