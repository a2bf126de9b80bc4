"""Inference engine: 2D images and stacks of any size and dtype to foreground probabilities (no Qt).

``probability_job`` is a ``Job`` (see ``progress``): it yields a ``Progress`` per batch of slices or tiles and
returns probabilities with the image's spatial shape (float32, or into a caller's array). Images up to 2048 x 2048
run whole; larger ones in overlapping tiles whose global context (Lite R-ASPP's average pool) is that of the whole
image, so the tiled result matches whole-image inference (see ``tiling``): the paper's network runs its encoder once
per tile and adds the context branch once the plane's pooled vector is known (``single_pass``); other networks
compute the pooled vector in a first pass over the tiles. Tiles are normalized one at a time (with the whole
plane's bounds) and each pixel is written once, from the tile whose core holds it, so a big plane never has a
float32 copy of itself or an accumulator beside its output. It runs a ``Segmenter``'s network on
the segmenter's device in the segmenter's precision (fp32, or bf16/fp16 autocast); ``Segmenter.predict_job`` wraps
it and reports the device and precision in its ``Prediction``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from ..io.layout import canonical, image_layout
from ..model.metadata import ModelMetadata
from ..model.network import ForwardPasses, ReadyModel
from .devices import autocast_dtype
from .dihedral import dihedral, undo_dihedral
from .normalization import bounds_pixels, model_input, to_channels
from .progress import Job, Progress, StopRequested, relay
from .resolution import resample_image, resample_probabilities
from .single_pass import DECODER_HALO, encode, finish, grid_stride, splittable
from .tiling import STRIDE, Tile, batch_limit, ceil_to, check_overlap, choose_tile, plan_tiles

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


def probability_job(segmenter: ReadyModel, image: np.ndarray, *, tile: int | None = None, overlap: int = 64,
                    batch_size: int | None = None, tta: bool = False, rgb: bool | None = None,
                    out: np.ndarray | None = None) -> Job[np.ndarray | None]:
    """Foreground probabilities (float32, the image's spatial shape (Y, X) or (Z, Y, X)) as a ``Job``.

    ``image``: any real dtype, shaped (Y, X), (Y, X, 3|4), (Z, Y, X) or (Z, Y, X, 3|4); ``rgb`` forces whether the
    last axis is colour (``None``: a trailing axis of 3 or 4 is). ``tile``: tile size, a multiple of 32 and at
    least ``tiling.min_tile(overlap)`` (544 for overlap 64: the 224 px ``CONTEXT_MARGIN`` at inner tile edges is
    discarded); ``None`` runs images up to 2048 x 2048 whole and larger ones in tiles of ``tiling.DEFAULT_TILE``.
    ``overlap`` (rounded up to 32): width neighbouring tiles share beyond their margins (each pixel comes from the
    tile whose core holds it, at least ``CONTEXT_MARGIN + overlap / 2`` from its inner edges). ``batch_size``:
    slices or tiles per forward pass (at most 2048² pixels in all; ``None``: ``DEFAULT_BATCH`` for the segmenter's
    precision). ``tta``: average of the 8 flips/transposes. ``out``: an array of the image's spatial shape
    (float32, float16 or uint8 = round(255 p); a ``numpy.memmap`` works) the probabilities are written into as
    they are computed, and returned; ``None``: a new float32 array.
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
    target = _output(out, stack.shape[:3], layout.is_stack)
    job = _predict(run, stack, target) if working == layout.plane else _predict_resampled(run, stack, working, target)
    return _guarded(job, squeeze=not layout.is_stack, given=out)


#: dtypes ``probability_job`` writes into (uint8: round(255 p)).
OUTPUT_DTYPES = (np.float32, np.float64, np.float16, np.uint8)


def _output(out: np.ndarray | None, shape: tuple[int, ...], is_stack: bool) -> np.ndarray:
    """The (Z, Y, X) array to write into: a view of the caller's ``out`` (checked) or a new float32 one."""
    if out is None:
        return np.empty(shape, np.float32)
    want = shape if is_stack else shape[1:]
    if not isinstance(out, np.ndarray) or tuple(out.shape) != tuple(want):
        raise ValueError(f"out must be a NumPy array of shape {want} (the image's spatial shape), got "
                         f"{getattr(out, 'shape', type(out).__name__)}")
    if out.dtype not in OUTPUT_DTYPES:
        raise ValueError(f"out must be float32, float64, float16 or uint8, got {out.dtype}")
    if not out.flags.writeable:
        raise ValueError("out is read-only")
    return out if is_stack else out[None]


def _store(dst: np.ndarray, probs: np.ndarray) -> None:
    """Write float32 probabilities into part of the output (uint8: round(255 p))."""
    if dst.dtype == np.uint8:
        np.multiply(probs, 255, out=probs)
        np.rint(probs, out=probs)
    dst[...] = probs


@dataclass(frozen=True)
class Prepared:
    """A batch of slices ready for the network: ``x`` (N, C, Y', X') padded, normalized float32 input of slices of
    spatial ``shape`` (Y, X)."""

    x: np.ndarray
    shape: tuple[int, int]


def prepare_whole(segmenter: ReadyModel, planes: np.ndarray, *, tile: int | None = None,
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


def prepared_probabilities(segmenter: ReadyModel, prepared: Prepared) -> np.ndarray:
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


def _guarded(job: Job[np.ndarray], *, squeeze: bool, given: np.ndarray | None = None) -> Job[np.ndarray | None]:
    try:
        out = yield from job
    except StopRequested:
        return None
    if given is not None:
        return given
    return out[0] if squeeze else out


def _predict(run: Run, stack: np.ndarray, out: np.ndarray) -> Job[np.ndarray]:
    """(Z, Y, X) probabilities of a (Z, Y, X[, C]) stack at the network's resolution, written into ``out``."""
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
        _store(out[z:z + len(x)], run.ctx.probs(x)[:, : out.shape[1], : out.shape[2]])
        yield Progress(step, total, f"slice {min(z + batch_size, depth)}/{depth}")


def _predict_tiled(run: Run, stack: np.ndarray, out: np.ndarray) -> Job[None]:
    depth = stack.shape[0]
    tiles = plan_tiles(out.shape[1:], run.tile, run.overlap)
    batch_size = batch_limit((run.tile, run.tile), run.batch_size)
    batches = [tiles[i:i + batch_size] for i in range(0, len(tiles), batch_size)]
    total, step = depth * 2 * len(batches), 0
    for z in range(depth):
        plane = TiledPlane.of(stack[z], run.meta)
        passes = _encoder_once if run.ctx.splits else _context_first
        for label in passes(run.ctx, plane, batches, out[z]):
            step += 1
            yield Progress(step, total, f"slice {z + 1}/{depth}: {label}")


@dataclass(frozen=True)
class TiledPlane:
    """One raw (Y, X[, C]) plane of a tiled prediction with its whole-plane normalization ``bounds``."""

    image: np.ndarray
    bounds: tuple[float, float]
    meta: ModelMetadata

    @classmethod
    def of(cls, image: np.ndarray, meta: ModelMetadata) -> TiledPlane:
        return cls(image, meta.normalization.bounds(bounds_pixels(image)), meta)

    @property
    def cells(self) -> int:
        """Stride-32 cells of the padded plane (the pooled vector's denominator)."""
        return (ceil_to(self.image.shape[0]) // STRIDE) * (ceil_to(self.image.shape[1]) // STRIDE)

    def inputs(self, tiles: list[Tile]) -> np.ndarray:
        """(N, C, h, w) normalized input of ``tiles``: what ``_pad(model_input(plane))`` holds in their windows."""
        return np.stack([self._window(t) for t in tiles])

    def _window(self, t: Tile) -> np.ndarray:
        (ys, xs), (h, w) = t.window, self.image.shape[:2]
        raw = self.image[ys.start:min(ys.stop, h), xs.start:min(xs.stop, w)]
        x = self.meta.normalization.apply(to_channels(raw, self.meta.in_channels), self.bounds)
        pad_y, pad_x = t.size[0] - x.shape[1], t.size[1] - x.shape[2]
        return np.pad(x, ((0, 0), (0, pad_y), (0, pad_x)), mode="edge") if pad_y or pad_x else x


def _write_cores(out: np.ndarray, tiles: list[Tile], probs: np.ndarray) -> None:
    """Each tile's core of its (h, w) probabilities into the (Y, X) ``out`` (cropped to the image)."""
    for t, p in zip(tiles, probs, strict=True):
        _write_core(out, t, p, (t.y, t.x))


def _write_core(out: np.ndarray, t: Tile, probs: np.ndarray, origin: tuple[int, int]) -> None:
    """The core of ``t`` from ``probs`` (whose top-left pixel is ``origin`` of the padded plane) into ``out``."""
    y0, y1, x0, x1 = t.core
    y1, x1 = min(y1, out.shape[0]), min(x1, out.shape[1])
    _store(out[y0:y1, x0:x1], probs[y0 - origin[0]:y1 - origin[0], x0 - origin[1]:x1 - origin[1]])


def _around_core(t: Tile) -> tuple[int, int, int, int]:
    """The core of ``t`` plus ``DECODER_HALO``, within the tile (absolute padded-plane pixels)."""
    y0, y1, x0, x1 = t.core
    return (max(t.y, y0 - DECODER_HALO), min(t.y + t.size[0], y1 + DECODER_HALO),
            max(t.x, x0 - DECODER_HALO), min(t.x + t.size[1], x1 + DECODER_HALO))


def _context_first(ctx: Context, plane: TiledPlane, batches: list[list[Tile]], out: np.ndarray) -> Iterator[str]:
    """Any network: pass 1 sums the tiles' core features into the pooled vector, pass 2 runs the tiles with it."""
    sums = None
    for batch in batches:
        part = ctx.core_sums(plane.inputs(batch), batch)
        sums = part if sums is None else sums + part
        yield "context"
    pooled = sums / plane.cells
    for batch in batches:
        _write_cores(out, batch, ctx.probs(plane.inputs(batch), pooled))
        yield "tiles"


def _encoder_once(ctx: Context, plane: TiledPlane, batches: list[list[Tile]], out: np.ndarray) -> Iterator[str]:
    """The paper's network (``single_pass``): pass 1 runs each tile's encoder once (its decoder only around the
    core), keeping the pooled-independent maps of its core on the decoder's grid and the stride-32 grid
    (``num_classes`` + 128 channels, < 0.4 values per pixel); pass 2 adds the context branch with the whole
    plane's pooled vector around each core (no encoder)."""
    g, maps, sums = grid_stride(ctx.net), None, None
    for batch in batches:
        around = [_around_core(t) for t in batch]
        crops = [(y0 - t.y, y1 - t.y, x0 - t.x, x1 - t.x) for t, (y0, y1, x0, x1) in zip(batch, around, strict=True)]
        for t, (ay, _, ax, _), (lo, fe, de) in zip(batch, around, ctx.encode(plane.inputs(batch), crops), strict=True):
            if maps is None:
                padded = ceil_to(plane.image.shape[0]), ceil_to(plane.image.shape[1])
                maps = (np.empty((lo.shape[0], padded[0] // g, padded[1] // g), np.float32),
                        np.empty((fe.shape[0], padded[0] // STRIDE, padded[1] // STRIDE), np.float32))
            y0, y1, x0, x1 = t.core
            maps[0][:, y0 // g:y1 // g, x0 // g:x1 // g] = lo[:, (y0 - ay) // g:(y1 - ay) // g,
                                                             (x0 - ax) // g:(x1 - ax) // g]
            cells = (slice(None), *t.core_cells())
            maps[1][:, y0 // STRIDE:y1 // STRIDE, x0 // STRIDE:x1 // STRIDE] = fe[cells]
            part = de[cells].sum((-1, -2), dtype=np.float64)
            sums = part if sums is None else sums + part
        yield "encoder"
    pooled = torch.from_numpy((sums / plane.cells).astype(np.float32))[None, :, None, None]
    for batch in batches:
        for t in batch:
            y0, y1, x0, x1 = _around_core(t)
            low = maps[0][None, :, y0 // g:y1 // g, x0 // g:x1 // g]
            features = maps[1][None, :, y0 // STRIDE:y1 // STRIDE, x0 // STRIDE:x1 // STRIDE]
            _write_core(out, t, ctx.finish(low, features, pooled, (y1 - y0, x1 - x0))[0], (y0, x0))
        yield "context"


def _predict_resampled(run: Run, stack: np.ndarray, working: tuple[int, int], out: np.ndarray) -> Job[np.ndarray]:
    """Run at the model's working resolution, a few slices at a time (a zoomed stack is never held whole), and
    bring the probabilities back to the image's size (bilinear)."""
    depth, spatial = stack.shape[0], stack.shape[1:3]
    chunk = max(1, min(run.batch_size, batch_limit(working, run.batch_size)))
    for z in range(0, depth, chunk):
        part = np.stack([resample_image(s, working) for s in stack[z:z + chunk]])
        # the chunk's progress on the whole stack's scale (100 units per slice)
        job = _predict(run, part, np.empty(part.shape[:3], np.float32))
        probs = yield from relay(job, lambda p, z=z, n=len(part): Progress(
            z * 100 + round(p.fraction * n * 100), depth * 100, f"slice {min(z + chunk, depth)}/{depth}"))
        _store(out[z:z + len(part)], resample_probabilities(probs, spatial))
    return out


class Context:
    """Forward passes of one prepared network in one precision: probabilities (optionally with 8-fold TTA) and
    pass-1 sums. ``net``: the network, or in int8 a ``quantized.QuantizedNetwork`` (``Segmenter.runner``)."""

    def __init__(self, net: ForwardPasses, dev: torch.device, tta: bool, precision: str = "fp32") -> None:
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
            prob = undo_dihedral(_foreground(self.net(dihedral(t, k), pooled=ctx)), k)
            acc = prob if acc is None else acc + prob
        return acc / len(self.transforms)

    @property
    def splits(self) -> bool:
        """Whether tiles can run the encoder once (``single_pass``; without TTA, whose 8 transforms would each
        need their own maps)."""
        return len(self.transforms) == 1 and splittable(self.net)

    @torch.inference_mode()
    def encode(self, x: np.ndarray, crops: list[tuple[int, int, int, int]]
               ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """float32 ``single_pass.encode`` maps (low over its crop, features, deepest) of each image of a (N, C, Y, X)
        batch."""
        with self.autocast():
            return [tuple(m[0].float().cpu().numpy() for m in (e.low, e.features, e.deepest))
                    for e in encode(self.net, self.tensor(x), crops)]

    @torch.inference_mode()
    def finish(self, low: np.ndarray, features: np.ndarray, pooled: torch.Tensor,
               size: tuple[int, int]) -> np.ndarray:
        """(N, Y, X) float32 probabilities from ``encode``'s maps and the plane's (1, C5, 1, 1) ``pooled`` vector."""
        with self.autocast():
            low_t, features_t = (torch.from_numpy(np.ascontiguousarray(m)).to(self.dev) for m in (low, features))
            logits = finish(self.net, low_t, features_t, pooled.to(self.dev).expand(len(low), -1, -1, -1), size)
            return _foreground(logits).cpu().numpy()

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


def _foreground(logits: torch.Tensor) -> torch.Tensor:
    """(N, Y, X) float32 foreground probabilities of (N, 1|2, Y, X) logits."""
    logits = logits.float()
    return logits[:, 0].sigmoid_() if logits.shape[1] == 1 else torch.softmax(logits, 1)[:, 1]


def _pad(x: np.ndarray) -> np.ndarray:
    """Edge-pad (C, Y, X) bottom/right to a multiple of 32 (what the network does for a whole image)."""
    h, w = x.shape[1:]
    if h % STRIDE == 0 and w % STRIDE == 0:
        return x  # no copy
    return np.pad(x, ((0, 0), (0, ceil_to(h) - h), (0, ceil_to(w) - w)), mode="edge")


def _batch(planes: list[np.ndarray]) -> np.ndarray:
    """(N, C, Y, X) of N (C, Y, X) planes (a view for one)."""
    return planes[0][None] if len(planes) == 1 else np.stack(planes)
