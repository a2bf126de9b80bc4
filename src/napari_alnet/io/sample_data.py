"""A generated EM-like stack (our own, not from any dataset): cells separated by dark membranes."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi


def em_like_stack(depth: int = 5, size: int = 256, cells: int = 60, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A uint8 (Z, Y, X) EM-like stack and its boolean membrane mask.

    Cells are a Voronoi tessellation whose seeds drift slowly through Z; membranes are dark 2-3 px
    boundaries; the interior has textured grey levels, a few dark vesicles, blur and shot noise.
    """
    rng = np.random.default_rng(seed)
    seeds = rng.uniform(0, size, (cells, 2))
    drift = rng.normal(0, 1.5, (cells, 2))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    images, masks = [], []
    for z in range(depth):
        pts = seeds + drift * z
        d = (yy[..., None] - pts[:, 0]) ** 2 + (xx[..., None] - pts[:, 1]) ** 2
        order = np.argsort(d, axis=-1)[..., :2]
        d1 = np.take_along_axis(d, order[..., :1], -1)[..., 0]
        d2 = np.take_along_axis(d, order[..., 1:2], -1)[..., 0]
        membrane = (np.sqrt(d2) - np.sqrt(d1)) < 2.5
        shade = rng.uniform(150, 210, cells).astype(np.float32)[order[..., 0]]
        texture = ndi.gaussian_filter(rng.normal(0, 12, (size, size)), 2)
        image = shade + texture
        vesicles = ndi.gaussian_filter((rng.random((size, size)) > 0.9985).astype(np.float32), 2) * 900
        image = image - np.clip(vesicles, 0, 80)
        image[membrane] = 60 + rng.normal(0, 10, int(membrane.sum()))
        image = ndi.gaussian_filter(image, 1.0) + rng.normal(0, 8, (size, size))
        images.append(np.clip(image, 0, 255).astype(np.uint8))
        masks.append(membrane)
    return np.stack(images), np.stack(masks)


def napari_em_sample() -> list[tuple[np.ndarray, dict, str]]:
    """napari sample-data contribution: the generated EM-like stack (4 x 4 x 50 nm voxels, as ISBI 2012)."""
    stack, _ = em_like_stack(depth=8, size=512, cells=240)
    return [(stack, {"name": "EM-like stack (generated)", "scale": (0.05, 0.004, 0.004)}, "image")]


def organelle_stack(depth: int = 4, size: int = 256, count: int = 12, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """An EM-like stack with dark, textured elliptical 'mitochondria' and their mask: a new target for fine-tuning."""
    rng = np.random.default_rng(seed)
    stack, _ = em_like_stack(depth=depth, size=size, cells=max(8, size // 8), seed=seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    images, masks = [], []
    for image in stack:
        mask = np.zeros((size, size), bool)
        for _ in range(count):
            cy, cx = rng.uniform(10, size - 10, 2)
            a, b = rng.uniform(5, 14), rng.uniform(3, 7)
            t = rng.uniform(0, np.pi)
            u = ((yy - cy) * np.cos(t) + (xx - cx) * np.sin(t)) / a
            v = (-(yy - cy) * np.sin(t) + (xx - cx) * np.cos(t)) / b
            mask |= u**2 + v**2 <= 1
        texture = ndi.gaussian_filter(rng.normal(0, 15, (size, size)), 1) + 95
        out = image.astype(np.float32)
        out[mask] = texture[mask]
        images.append(np.clip(ndi.gaussian_filter(out, 0.7), 0, 255).astype(np.uint8))
        masks.append(mask)
    return np.stack(images), np.stack(masks)
