"""Optional training augmentation beyond the paper's flips and translations: rotation, zoom, intensity jitter."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Augmentation:
    """What each training crop gets on top of a random position and one of the 8 flips/transposes.

    ``rotate``: a uniformly random angle. ``zoom``: a scale factor drawn log-uniformly from [1/zoom, zoom]
    (1 = off). ``intensity``: contrast x exp(±intensity), per-channel gain x exp(±intensity/2) and a shift of
    ±intensity, in normalized input units (0 = off).
    """

    rotate: bool = False
    zoom: float = 1.0
    intensity: float = 0.0

    def __post_init__(self) -> None:
        if self.zoom < 1.0:
            raise ValueError(f"zoom must be >= 1 (1 = off), got {self.zoom}")
        if self.intensity < 0.0:
            raise ValueError(f"intensity jitter must be >= 0 (0 = off), got {self.intensity}")

    @property
    def geometric(self) -> bool:
        return self.rotate or self.zoom > 1.0

    def window(self, crop: int) -> int:
        """Side of the square window to cut so that any rotated/zoomed crop of side ``crop`` lies inside it."""
        if not self.geometric:
            return crop
        return math.ceil(crop * self.zoom * (math.sqrt(2.0) if self.rotate else 1.0)) + 2

    def warp(self, image: np.ndarray, mask: np.ndarray, ignore: np.ndarray, crop: int, rng: np.random.Generator
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """A rotated/zoomed ``crop`` x ``crop`` view of the centre of a square window, all bilinear. The mask comes
        back soft (in [0, 1]): thresholding it would make a 1-px line (a thin vessel) that falls between pixels
        broken or doubled. A pixel touched by ignored pixels stays ignored."""
        angle = rng.uniform(0.0, 2.0 * math.pi) if self.rotate else 0.0
        scale = math.exp(rng.uniform(-math.log(self.zoom), math.log(self.zoom)))
        side = mask.shape[-1]
        f = scale * crop / side
        theta = torch.tensor([[[math.cos(angle) * f, -math.sin(angle) * f, 0.0],
                               [math.sin(angle) * f, math.cos(angle) * f, 0.0]]], dtype=torch.float32)
        stack = torch.from_numpy(np.concatenate([image, mask[None], ignore[None]]).astype(np.float32))[None]
        grid = F.affine_grid(theta, [1, stack.shape[1], crop, crop], align_corners=False)
        out = F.grid_sample(stack, grid, mode="bilinear", padding_mode="border", align_corners=False)[0].numpy()
        return out[:-2], np.clip(out[-2], 0.0, 1.0).astype(mask.dtype), out[-1] > 0

    def jitter(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Contrast, per-channel gain and shift around the crop's mean (normalized units)."""
        j = self.intensity
        gain = math.exp(rng.uniform(-j, j)) * np.exp(rng.uniform(-j / 2, j / 2, size=(image.shape[0], 1, 1)))
        mean = image.mean(axis=(1, 2), keepdims=True)
        return ((image - mean) * gain + mean + rng.uniform(-j, j)).astype(np.float32)
