"""Inference engine: 2D images and stacks of any size and dtype to foreground probabilities (no Qt).

``probability_job`` is a ``Job`` (see ``progress``): it yields a ``Progress`` per batch of slices or tiles and
returns float32 probabilities with the image's spatial shape. Images up to 2048 x 2048 run whole; larger ones in
overlapping tiles whose global context (Lite R-ASPP's average pool) is computed over the whole image first
(pass 1), so the tiled result matches whole-image inference (see ``tiling``). It runs a ``Segmenter``'s network on
the segmenter's device in the segmenter's precision (fp32, or bf16/fp16 autocast); ``Segmenter.predict_job`` wraps
it and reports the device and precision in its ``Prediction``.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..io.layout import canonical, image_layout
from ..model import STRIDE, ALNet
from ..model.metadata import ModelMetadata
from .devices import autocast_dtype
from .dihedral import dihedral, undo_dihedral
from .normalization import model_input
from .progress import Job, Progress, StopRequested, relay
from .resolution import resample_image, resample_probabilities
from .tiling import Tile, batch_limit, blend_window, ceil_to, check_overlap, choose_tile, plan_tiles

if TYPE_CHECKING:  # the segmenter calls into this module; only its type is needed here
    from .quantized import QuantizedNetwork
    from .segmenter import Segmenter


#: Slices (or tiles) per forward pass by precision: in fp32 one 512² slice at a time costs 24 % less CPU per slice
#: than four on this project's CPU (cache: four hold 4x the activations); bf16 gains from four (docs/performance.md).
DEFAULT_BATCH = {"fp32": 1, "bf16": 4, "fp16": 4, "int8": 1}


def default_batch(precision: str) -> int:
    """Slices per forward pass when none is asked for."""
    return DEFAULT_BATCH.get(precision, 1)


def check_pixels(image: np.ndarray, is_stack: bool = False) -> np.ndarray:
    """The image as a real numeric array (bool -> uint8); ``ValueError`` for other dtypes and NaN/inf."""
    image = np.asarray(image)
    if image.dtype == bool:
        return image.view(np.uint8)
    if not np.issubdtype(image.dtype, np.number) or np.issubdtype(image.dtype, np.complexfloating):
        raise ValueError(f"image dtype {image.dtype} is not a real numeric type (expected integers or floats)")
    if np.issubdtype(image.dtype, np.floating):
        for z, plane in enumerate(image if is_stack else [image]):
            if not np.isfinite(plane).all():
                where = f" (slice {z})" if is_stack else ""
                raise ValueError(f"the image contains NaN or infinite values{where}; replace them "
                                 "(e.g. numpy.nan_to_num) before segmenting")
    return image


def check_channels(meta: ModelMetadata, is_rgb: bool, shape: tuple[int, ...]) -> None:
    """``ValueError`` when an RGB image goes to a grayscale model whose metadata refuses conversion."""
    if is_rgb and meta.in_channels == 1 and meta.rgb_to_gray == "refuse":
        raise ValueError(f"this {meta.modality} model expects grayscale (1-channel) images and refuses RGB "
                         f"(its metadata says rgb_to_gray='refuse'); got an RGB image of shape {shape}. Convert it "
                         "to grayscale first, or pass rgb=False if the last axis is not colour")


def to_model_input(image: np.ndarray, meta: ModelMetadata) -> np.ndarray:
    """Normalized (C, H, W) float32 input for one 2D image (gray (H, W) or RGB(A) (H, W, C)), checked."""
    image = check_pixels(image)
    check_channels(meta, image_layout(image.shape).is_rgb, image.shape)
    return model_input(image, meta)


def probability_job(segmenter: Segmenter, image: np.ndarray, *, tile: int | None = None, overlap: int = 64,
                    batch_size: int | None = None, tta: bool = False,
                    rgb: bool | None = None) -> Job[np.ndarray | None]:
    """Foreground probabilities (float32, the image's spatial shape (Y, X) or (Z, Y, X)) as a ``Job``.

    ``image``: any real dtype, shaped (Y, X), (Y, X, 3|4), (Z, Y, X) or (Z, Y, X, 3|4); ``rgb`` forces whether the
    last axis is colour (``None``: a trailing axis of 3 or 4 is). ``tile``: tile size, a multiple of 32 and at
    least ``tiling.min_tile(overlap)`` (544 for overlap 64: the 224 px ``CONTEXT_MARGIN`` at inner tile edges is
    discarded); ``None`` runs images up to 2048 x 2048 whole and larger ones in tiles of 1536. ``overlap``
    (rounded up to 32): blended width between neighbouring tiles. ``batch_size``: slices or tiles per forward
    pass (at most 2048² pixels in all; ``None``: ``DEFAULT_BATCH`` for the segmenter's precision). ``tta``: average
    of the 8 flips/transposes.
    Yields a ``Progress`` per batch; a ``StopRequested`` thrown in ends it, returning ``None``.
    """
    image, layout = canonical(np.asarray(image), rgb)
    image = check_pixels(image, layout.is_stack)
    meta = segmenter.metadata
    check_channels(meta, layout.is_rgb, image.shape)
    batch_size = default_batch(segmenter.precision) if batch_size is None else batch_size
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    stack = image if layout.is_stack else image[None]
    working = meta.network_shape(layout.plane)
    tile = choose_tile(working, tile)
    if tile is not None:
        check_overlap(tile, overlap)
    run = Run(Context(segmenter.runner, segmenter.device, tta, segmenter.precision), meta, tile, overlap, batch_size)
    job = _predict(run, stack) if working == layout.plane else _predict_resampled(run, stack, working)
    return _guarded(job, squeeze=not layout.is_stack)


@dataclass(frozen=True)
class Prepared:
    """A batch of slices ready for the network: ``x`` (N, C, Y', X') padded, normalized float32 input of slices of
    spatial ``shape`` (Y, X)."""

    x: np.ndarray
    shape: tuple[int, int]


def prepare_whole(segmenter: Segmenter, planes: np.ndarray, *, tile: int | None = None,
                  rgb: bool | None = None) -> Prepared | None:
    """The network input of a (N, Y, X[, C]) batch of checked slices (``check_pixels``) when ``probability_job``
    would run them whole at the network's own resolution, in one forward pass; ``None`` when it would not (tiles,
    a resampling model, more pixels than a batch may hold): then give the slices to ``probability_job``.

    NumPy only (no torch), so a reader thread can prepare the next batch while the network runs this one.
    """
    planes, layout = canonical(np.asarray(planes), rgb)
    if not layout.is_stack:
        raise ValueError(f"expected a (N, Y, X[, C]) batch of slices, got shape {planes.shape}")
    meta = segmenter.metadata
    check_channels(meta, layout.is_rgb, planes.shape)
    working = meta.network_shape(layout.plane)
    if working != layout.plane or choose_tile(working, tile) is not None or batch_limit(working, len(planes)) < len(
            planes):
        return None
    return Prepared(np.stack([_pad(model_input(s, meta)) for s in planes]), layout.plane)


def prepared_probabilities(segmenter: Segmenter, prepared: Prepared) -> np.ndarray:
    """(N, Y, X) float32 probabilities of a ``prepare_whole`` batch: the same as ``probability_job`` gives."""
    ctx = Context(segmenter.runner, segmenter.device, False, segmenter.precision)
    return ctx.probs(prepared.x)[:, : prepared.shape[0], : prepared.shape[1]]


@dataclass(frozen=True)
class Run:
    """The settings of one prediction: the network's forward passes, metadata, tiling and batch size."""

    ctx: Context
    meta: ModelMetadata
    tile: int | None
    overlap: int
    batch_size: int


def _guarded(job: Job[np.ndarray], *, squeeze: bool) -> Job[np.ndarray | None]:
    try:
        out = yield from job
    except StopRequested:
        return None
    return out[0] if squeeze else out


def _predict(run: Run, stack: np.ndarray) -> Job[np.ndarray]:
    """(Z, Y, X) probabilities of a (Z, Y, X[, C]) stack at the network's resolution."""
    out = np.empty((stack.shape[0], *stack.shape[1:3]), np.float32)
    # torch context managers (inference mode, autocast) are entered per call, never held across a yield
    if run.tile is None:
        yield from _predict_whole(run, stack, out)
    else:
        yield from _predict_tiled(run, stack, out)
    return out


def _predict_whole(run: Run, stack: np.ndarray, out: np.ndarray) -> Job[None]:
    depth = stack.shape[0]
    batch_size = batch_limit(out.shape[1:], run.batch_size)
    total = -(-depth // batch_size)
    for step, z in enumerate(range(0, depth, batch_size), 1):
        x = _batch([_pad(model_input(s, run.meta)) for s in stack[z:z + batch_size]])  # pad before any flip
        out[z:z + len(x)] = run.ctx.probs(x)[:, : out.shape[1], : out.shape[2]]
        yield Progress(step, total, f"slice {min(z + batch_size, depth)}/{depth}")


def _predict_tiled(run: Run, stack: np.ndarray, out: np.ndarray) -> Job[None]:
    depth = stack.shape[0]
    tiles = plan_tiles(out.shape[1:], run.tile, run.overlap)
    batch_size = batch_limit((run.tile, run.tile), run.batch_size)
    weights = [blend_window(t, run.overlap) for t in tiles]
    wsum = _weight_sum(tiles, weights, out.shape[1:])
    batches = [tiles[i:i + batch_size] for i in range(0, len(tiles), batch_size)]
    wbatches = [weights[i:i + batch_size] for i in range(0, len(tiles), batch_size)]
    total, step = depth * 2 * len(batches), 0
    for z in range(depth):
        x = _pad(model_input(stack[z], run.meta))
        sums = None
        for batch in batches:  # pass 1: the image's pooled context from the tiles' cores
            part = run.ctx.core_sums(_gather(x, batch), batch)
            sums = part if sums is None else sums + part
            step += 1
            yield Progress(step, total, f"slice {z + 1}/{depth}: context")
        pooled = sums / ((x.shape[1] // STRIDE) * (x.shape[2] // STRIDE))
        acc = np.zeros(x.shape[1:], np.float32)
        for batch, wbatch in zip(batches, wbatches, strict=True):  # pass 2: tiles with that context, blended
            probs = run.ctx.probs(_gather(x, batch), pooled)
            for t, w, p in zip(batch, wbatch, probs, strict=True):
                acc[t.window] += p * w
            step += 1
            yield Progress(step, total, f"slice {z + 1}/{depth}: tiles")
        out[z] = (acc / wsum)[: out.shape[1], : out.shape[2]]


def _predict_resampled(run: Run, stack: np.ndarray, working: tuple[int, int]) -> Job[np.ndarray]:
    """Run at the model's working resolution, a few slices at a time (a zoomed stack is never held whole), and
    bring the probabilities back to the image's size (bilinear)."""
    depth, spatial = stack.shape[0], stack.shape[1:3]
    chunk = max(1, min(run.batch_size, batch_limit(working, run.batch_size)))
    out = np.empty((depth, *spatial), np.float32)
    for z in range(0, depth, chunk):
        part = np.stack([resample_image(s, working) for s in stack[z:z + chunk]])
        # the chunk's progress on the whole stack's scale (100 units per slice)
        probs = yield from relay(_predict(run, part), lambda p, z=z, n=len(part): Progress(
            z * 100 + round(p.fraction * n * 100), depth * 100, f"slice {min(z + chunk, depth)}/{depth}"))
        out[z:z + len(part)] = resample_probabilities(probs, spatial)
    return out


class Context:
    """Forward passes of one prepared network in one precision: probabilities (optionally with 8-fold TTA) and
    pass-1 sums. ``net``: the network, or in int8 a ``quantized.QuantizedNetwork`` (``Segmenter.runner``)."""

    def __init__(self, net: ALNet | QuantizedNetwork, dev: torch.device, tta: bool, precision: str = "fp32") -> None:
        self.net, self.dev, self.precision = net, dev, precision
        self.transforms = range(8) if tta else range(1)

    def autocast(self):
        """bf16 or fp16 autocast on the device for those precisions, nothing for fp32."""
        dtype = autocast_dtype(self.precision)
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.dev.type, dtype=dtype)

    def tensor(self, x: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(x)).to(self.dev)
        cpu_torch = self.dev.type == "cpu" and self.precision != "int8"  # ONNX Runtime takes plain NCHW
        return t.contiguous(memory_format=torch.channels_last) if cpu_torch else t

    @torch.inference_mode()
    def probs(self, x: np.ndarray, pooled: torch.Tensor | None = None) -> np.ndarray:
        """(N, Y, X) float32 foreground probabilities of a (N, C, Y, X) batch (``pooled``: per transform)."""
        with self.autocast():
            return self._probs(self.tensor(x), pooled).cpu().numpy()

    def _probs(self, t: torch.Tensor, pooled: torch.Tensor | None) -> torch.Tensor:
        acc = None
        for k in self.transforms:
            ctx = None if pooled is None else pooled[k].to(self.dev).expand(len(t), -1, -1, -1)
            logits = self.net(dihedral(t, k), pooled=ctx).float()
            prob = logits[:, 0].sigmoid_() if logits.shape[1] == 1 else torch.softmax(logits, 1)[:, 1]
            prob = undo_dihedral(prob, k)
            acc = prob if acc is None else acc + prob
        return acc / len(self.transforms)

    @torch.inference_mode()
    def core_sums(self, x: np.ndarray, tiles: list[Tile]) -> torch.Tensor:
        """(transforms, 1, C, 1, 1) float32 sums of the stride-32 features over each tile's core (on CPU)."""
        with self.autocast():
            return self._core_sums(self.tensor(x), tiles)

    def _core_sums(self, t: torch.Tensor, tiles: list[Tile]) -> torch.Tensor:
        sums = []
        for k in self.transforms:
            feats = undo_dihedral(self.net.deepest_features(dihedral(t, k)), k).float()
            cores = [tile.core_cells() for tile in tiles]
            total = sum(f[:, ys, xs].sum((-1, -2)) for f, (ys, xs) in zip(feats, cores, strict=True))
            sums.append(total.cpu()[None, :, None, None])
        return torch.stack(sums)


def _pad(x: np.ndarray) -> np.ndarray:
    """Edge-pad (C, Y, X) bottom/right to a multiple of 32 (what the network does for a whole image)."""
    h, w = x.shape[1:]
    if h % STRIDE == 0 and w % STRIDE == 0:
        return x  # no copy
    return np.pad(x, ((0, 0), (0, ceil_to(h) - h), (0, ceil_to(w) - w)), mode="edge")


def _batch(planes: list[np.ndarray]) -> np.ndarray:
    """(N, C, Y, X) of N (C, Y, X) planes (a view for one)."""
    return planes[0][None] if len(planes) == 1 else np.stack(planes)


def _gather(x: np.ndarray, tiles: list[Tile]) -> np.ndarray:
    return np.stack([x[(slice(None), *t.window)] for t in tiles])


def _weight_sum(tiles: list[Tile], weights: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    total = np.zeros((ceil_to(shape[0]), ceil_to(shape[1])), np.float32)
    for t, w in zip(tiles, weights, strict=True):
        total[t.window] += w
    return total
