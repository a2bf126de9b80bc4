"""Training pairs: loading, pairing by file stem, normalization, random crops with flips/transposes."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..engine.dihedral import dihedral
from ..engine.normalization import Normalization, to_channels
from ..engine.resolution import network_shape, resample_image, resample_mask
from ..io.images import ImageReadError, mask_foreground, mask_plane
from ..io.layout import is_plane
from ..io.stack_reader import read_image
from .augment import Augmentation


@dataclass
class Pair:
    """One training image (C, H, W) float32, normalized; mask (H, W) float32 in {0, 1}; optional ignore (H, W);
    optional ``focus`` (H, W) bool: the pixels crops are centred on with ``TrainConfig.focus`` (e.g. the pixels a
    user corrected; default: the labelled pixels)."""

    image: np.ndarray
    mask: np.ndarray
    ignore: np.ndarray | None = None
    name: str = ""
    focus: np.ndarray | None = None


def make_pair(image: np.ndarray, mask: np.ndarray, normalization: Normalization, in_channels: int,
              invert: bool = False, ignore: np.ndarray | None = None, name: str = "") -> Pair:
    """Validate and normalize one (image, mask[, ignore]) pair; masks: > 0 is foreground unless ``invert``."""
    image = np.asarray(image)
    bounds = normalization.bounds(image)
    chw = to_channels(image, in_channels)
    mask = mask_plane(mask)
    if mask.shape != chw.shape[1:]:
        raise ValueError(f"{name or 'pair'}: mask shape {mask.shape} does not match image shape {chw.shape[1:]}")
    fg = mask > 0
    if invert:
        fg = ~fg
    if ignore is not None and np.asarray(ignore).shape != mask.shape:
        raise ValueError(f"{name or 'pair'}: ignore mask shape {np.asarray(ignore).shape} does not match {mask.shape}")
    counted = fg if ignore is None else fg[np.asarray(ignore) == 0]
    if counted.size == 0:
        raise ValueError(f"{name or 'pair'}: every pixel is ignored; nothing to train on")
    norm = normalization.apply(chw, bounds).astype(np.float32)
    return Pair(norm, fg.astype(np.float32), None if ignore is None else (np.asarray(ignore) != 0), name)


def pairs_from_arrays(images: Sequence[np.ndarray] | np.ndarray, masks: Sequence[np.ndarray] | np.ndarray,
                      normalization: Normalization | None = None, in_channels: int = 1, invert: bool = False,
                      ignores: Sequence[np.ndarray | None] | None = None) -> list[Pair]:
    """Pairs from arrays: lists of 2D images, or stacks (Z, Y, X[, C]) with (Z, Y, X) masks."""
    normalization = normalization or Normalization()
    if len(images) != len(masks):
        raise ValueError(f"{len(images)} images but {len(masks)} masks")
    ignores = ignores if ignores is not None else [None] * len(images)
    return [make_pair(im, m, normalization, in_channels, invert, ig, name=f"#{i}")
            for i, (im, m, ig) in enumerate(zip(images, masks, ignores, strict=True))]


def _slices(array: np.ndarray, path: Path) -> list[np.ndarray]:
    """A file's 2D images: one for a 2D/RGB file, one per slice for a TIFF stack."""
    if is_plane(array.shape):
        return [array]
    if array.ndim in (3, 4):
        return list(array)
    raise ImageReadError(f"{path}: unsupported image shape {array.shape}")


def file_slices(file_pairs: Sequence[tuple[Path, Path]]) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """(name, image, mask) of each 2D image of (image file, mask file) pairs as read (TIFF stacks: one per slice,
    named ``stem[z]``); mask: ``io.images.mask_foreground`` as uint8 0/1, its shape checked against the image's."""
    for image_file, mask_file in file_pairs:
        ims, ms = _slices(read_image(image_file), image_file), _slices(read_image(mask_file), mask_file)
        if len(ims) != len(ms):
            raise ValueError(f"{image_file.name} has {len(ims)} slices but {mask_file.name} has {len(ms)}")
        for z, (im, m) in enumerate(zip(ims, ms, strict=True)):
            name = image_file.stem if len(ims) == 1 else f"{image_file.stem}[{z}]"
            m = mask_foreground(mask_plane(m), mask_file).astype(np.uint8)
            if m.shape != im.shape[:2]:  # checked before any resampling could hide it
                raise ValueError(f"{name}: mask shape {m.shape} does not match image shape {im.shape[:2]}")
            yield name, np.asarray(im), m


def raw_pairs(file_pairs: Sequence[tuple[Path, Path]], *, invert: bool = False
              ) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, image, foreground) of each 2D image of (image file, mask file) pairs, as read — not normalized or
    resampled — in ``load_pairs``' order (what a model's own predict is scored on)."""
    return [(name, im, (m == 0) if invert else (m > 0)) for name, im, m in file_slices(file_pairs)]


def load_pairs(file_pairs: Sequence[tuple[Path, Path]], normalization: Normalization, *, in_channels: int,
               invert: bool = False, resize: int | None = None, scale: float = 1.0) -> list[Pair]:
    """Normalized pairs from (image file, mask file) pairs (see ``io.images.pair_files``); TIFF stacks give one
    pair per slice; foreground: ``io.images.mask_foreground`` (unless ``invert``). ``resize`` trains at a fixed
    resolution (every image resized to ``resize`` squared), ``scale`` on zoomed images (see ``engine.resolution``)."""
    pairs: list[Pair] = []
    for name, im, m in file_slices(file_pairs):
        shape = network_shape(im.shape[:2], (resize, resize) if resize else None, scale)
        im, m = resample_image(im, shape), resample_mask(m, shape)
        pairs.append(make_pair(im, m, normalization, in_channels, invert, name=name))
    return pairs


class CropSampler:
    """Random crops (the paper's translations) with one of the 8 flips/transposes, as training batches; optionally
    rotated, zoomed and intensity-jittered (see ``Augmentation``). A ``focus`` fraction of the crops is centred
    on a pixel of the pair's ``focus`` (or, without one, on a labelled pixel), so that sparse annotations and small
    corrections are seen in most batches."""

    def __init__(self, pairs: Sequence[Pair], crop: int, rng: np.random.Generator,
                 augmentation: Augmentation | None = None, *, focus: float = 0.0) -> None:
        if not pairs:
            raise ValueError("no training pairs")
        self.pairs, self.crop, self.rng = list(pairs), crop, rng
        self.augmentation = augmentation or Augmentation()
        sizes = np.array([p.mask.size for p in self.pairs], dtype=np.float64)
        self.weights = sizes / sizes.sum()
        self.focus = focus
        #: Per pair: the flat indices of its focus pixels (None: no focus, crops placed uniformly).
        self.centres = [_focus_pixels(p) if focus > 0 else None for p in self.pairs]

    def sample(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        index = int(self.rng.choice(len(self.pairs), p=self.weights))
        pair = self.pairs[index]
        aug = self.augmentation
        c = aug.window(self.crop)
        h, w = pair.mask.shape
        ph, pw = max(0, c - h), max(0, c - w)
        image, mask = pair.image, pair.mask
        ignore = pair.ignore if pair.ignore is not None else np.zeros_like(mask, dtype=bool)
        if ph or pw:  # small images: pad around them (the window's centre stays on the image); ignore the padding
            pads = ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2))
            image = np.pad(image, ((0, 0), *pads), mode="reflect" if min(h, w) > 1 else "edge")
            mask = np.pad(mask, pads)
            ignore = np.pad(ignore, pads, constant_values=True)
        y, x = self._corner(self.centres[index] if self.centres else None, (h, w), mask.shape, c, (ph // 2, pw // 2))
        image, mask, ignore = image[:, y:y + c, x:x + c], mask[y:y + c, x:x + c], ignore[y:y + c, x:x + c]
        if aug.geometric:
            image, mask, ignore = aug.warp(image, mask, ignore, self.crop, self.rng)
        k = int(self.rng.integers(8))
        image, mask, ignore = (dihedral(a, k) for a in (image, mask, ignore))
        if aug.intensity:
            image = aug.jitter(image, self.rng)
        return image, mask, ignore

    def _corner(self, centres: np.ndarray | None, shape: tuple[int, int], padded: tuple[int, ...], c: int,
                offset: tuple[int, int]) -> tuple[int, int]:
        """Top-left corner of a ``c`` window in the (padded) image: around a focus pixel with probability
        ``focus``, else uniform."""
        if centres is not None and centres.size and self.rng.random() < self.focus:
            cy, cx = np.unravel_index(centres[self.rng.integers(centres.size)], shape)
            y = int(np.clip(cy + offset[0] - c // 2 + self.rng.integers(-(c // 4), c // 4 + 1), 0, padded[0] - c))
            x = int(np.clip(cx + offset[1] - c // 2 + self.rng.integers(-(c // 4), c // 4 + 1), 0, padded[1] - c))
            return y, x
        return int(self.rng.integers(0, padded[0] - c + 1)), int(self.rng.integers(0, padded[1] - c + 1))

    def batch(self, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        samples = [self.sample() for _ in range(size)]
        return tuple(np.ascontiguousarray(np.stack(s)) for s in zip(*samples, strict=True))  # type: ignore[return-value]



def _focus_pixels(pair: Pair) -> np.ndarray | None:
    """Flat indices of the pixels crops are centred on: ``focus``, else the labelled (not ignored) pixels; None
    when every pixel is labelled (uniform placement is then the same thing)."""
    if pair.focus is not None:
        where = np.asarray(pair.focus, bool)
    elif pair.ignore is not None:
        where = ~pair.ignore
    else:
        return None
    return np.flatnonzero(where) if where.any() and not where.all() else None
