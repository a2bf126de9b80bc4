"""Inference engine: 2D images and stacks of any size and dtype to foreground probabilities (no Qt).

``predict_job`` is a ``Job`` (see ``progress``): it yields a ``Progress`` per batch of slices or tiles and returns
float32 probabilities with the image's spatial shape. Images up to 2048 x 2048 run whole; larger ones in overlapping
tiles whose global context (Lite R-ASPP's average pool) is computed over the whole image first (pass 1), so the
tiled result matches whole-image inference (see ``tiling``). The device actually used is recorded as
``model.last_device`` (read it with ``used_device(model)``).
"""

from __future__ import annotations

import contextlib
import copy

import numpy as np
import torch

from .api import model_metadata
from .devices import resolve_device
from .model import ALNet
from .normalization import to_channels
from .progress import Job, Progress, StopRequested, run_job
from .resolution import resample_image, resample_probabilities
from .tiling import STRIDE, Tile, batch_limit, blend_window, ceil_to, check_overlap, choose_tile, plan_tiles
from .weights import ModelMetadata

SHAPES = "(Y, X), (Y, X, 3|4) RGB(A), (Z, Y, X) or (Z, Y, X, 3|4)"


def image_layout(shape: tuple[int, ...], rgb: bool | None = None) -> tuple[bool, bool]:
    """(is_stack, is_rgb) of an image shape; ``rgb=None`` takes a trailing axis of 3 or 4 as colour channels."""
    trailing_rgb = len(shape) >= 3 and shape[-1] in (3, 4)
    if rgb is None:
        rgb = trailing_rgb
    if rgb and not trailing_rgb:
        raise ValueError(f"rgb=True needs a trailing colour axis of 3 or 4; got an image of shape {shape}")
    spatial = len(shape) - int(rgb)
    if spatial not in (2, 3):
        raise ValueError(f"expected an image shaped {SHAPES}; got shape {shape}"
                         + (" (rgb=False: the last axis is taken as X)" if trailing_rgb and not rgb else ""))
    if 0 in shape:
        raise ValueError(f"the image is empty (shape {shape})")
    return spatial == 3, bool(rgb)


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


def slice_input(image: np.ndarray, meta: ModelMetadata) -> np.ndarray:
    """Normalized (C, Y, X) float32 model input of one 2D image (gray (Y, X) or RGB(A) (Y, X, C)).

    Normalization bounds are computed on the whole image (never per tile); RGB goes to a 1-channel model as
    luminance, gray to a 3-channel model replicated.
    """
    bounds = meta.normalization.bounds(image[..., :3] if image.ndim == 3 else image)
    return meta.normalization.apply(to_channels(image, meta.in_channels), bounds)


def to_model_input(image: np.ndarray, model: ALNet) -> np.ndarray:
    """Normalized (C, H, W) float32 input for one 2D image (gray (H, W) or RGB(A) (H, W, C))."""
    image = check_pixels(image)
    meta = model_metadata(model)
    _, is_rgb = image_layout(image.shape)
    check_channels(meta, is_rgb, image.shape)
    return slice_input(image, meta)


def prepare_model(model: ALNet, device: str | torch.device | None = None) -> tuple[ALNet, torch.device]:
    """The re-parameterized eval-mode network on ``device`` (``None``: where ``model`` is) and that device.

    A training-form ``model`` is left untouched: a fused copy is returned. On CPU the network is channels-last.
    """
    dev = next(model.parameters()).device if device is None else resolve_device(device)
    if model.is_reparameterized:
        net = model
    else:
        net = copy.deepcopy(model).reparameterize()
        net.metadata = model_metadata(model)
    net = net.to(dev).eval()
    if dev.type == "cpu":
        net = net.to(memory_format=torch.channels_last)
    return net, dev


def used_device(model: ALNet) -> str | None:
    """The device the last ``predict``/``predict_job`` on ``model`` ran on (e.g. ``"cpu"``), or ``None``."""
    return getattr(model, "last_device", None)


def predict_job(model: ALNet, image: np.ndarray, *, device: str | torch.device | None = None,
                tile: int | None = None, overlap: int = 64, batch_size: int = 4, tta: bool = False,
                rgb: bool | None = None) -> Job[np.ndarray]:
    """Foreground probabilities (float32, the image's spatial shape (Y, X) or (Z, Y, X)) as a ``Job``.

    ``image``: any real dtype, shaped (Y, X), (Y, X, 3|4), (Z, Y, X) or (Z, Y, X, 3|4); ``rgb`` forces whether the
    last axis is colour (``None``: a trailing axis of 3 or 4 is). ``tile``: tile size, a multiple of 32 and at
    least ``tiling.min_tile(overlap)`` (544 for overlap 64: the 224 px ``CONTEXT_MARGIN`` at inner tile edges is
    discarded); ``None`` runs images up to 2048 x 2048 whole and larger ones in tiles of 1536. ``overlap``
    (rounded up to 32): blended width between neighbouring tiles. ``batch_size``: slices or tiles per forward
    pass (at most 2048² pixels in all). ``tta``: average of the 8 flips/transposes. ``device``: ``None`` = the
    model's device, else ``"auto"``, ``"cuda"``, ``"mps"``, ``"cpu"`` (the model is moved there).
    Yields a ``Progress`` per batch; a ``StopRequested`` thrown in ends it, returning ``None``.
    """
    image = np.asarray(image)
    is_stack, is_rgb = image_layout(image.shape, rgb)
    image = check_pixels(image, is_stack)
    meta = model_metadata(model)
    check_channels(meta, is_rgb, image.shape)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    spatial = image.shape[-3:-1] if is_rgb else image.shape[-2:]
    stack = image if is_stack else image[None]
    working = meta.network_shape(spatial)
    tile = choose_tile(working, tile)
    if tile is not None:
        check_overlap(tile, overlap)
    if working != tuple(spatial):  # a model trained at a fixed size or zoom (see ``resolution``)
        return _guarded(_predict_resampled(model, stack, meta, device, tile, overlap, batch_size, tta, is_stack))
    return _guarded(_predict(model, stack, meta, device, tile, overlap, batch_size, tta, is_stack))


def predict(model: ALNet, image: np.ndarray, **kwargs) -> np.ndarray:
    """``predict_job`` run to its end: float32 foreground probabilities with the image's spatial shape."""
    return run_job(predict_job(model, image, **kwargs))


def _guarded(job: Job[np.ndarray]) -> Job[np.ndarray | None]:
    try:
        return (yield from job)
    except StopRequested:
        return None


def _predict(model: ALNet, stack: np.ndarray, meta: ModelMetadata, device, tile: int | None, overlap: int,
             batch_size: int, tta: bool, is_stack: bool) -> Job[np.ndarray]:
    net, dev = prepare_model(model, device)
    model.last_device = net.last_device = str(dev)
    depth = stack.shape[0]
    out = np.empty((depth, *stack.shape[1:3]), np.float32)
    ctx = Context(net, dev, tta)
    # torch context managers (inference mode, autocast) are entered per call, never held across a yield
    if tile is None:
        batch_size = batch_limit(out.shape[1:], batch_size)
        total = -(-depth // batch_size)
        for step, z in enumerate(range(0, depth, batch_size), 1):
            x = np.stack([_pad(slice_input(s, meta)) for s in stack[z:z + batch_size]])  # pad before any flip
            out[z:z + len(x)] = ctx.probs(x)[:, : out.shape[1], : out.shape[2]]
            yield Progress(step, total, f"slice {min(z + batch_size, depth)}/{depth}")
    else:
        tiles = plan_tiles(out.shape[1:], tile, overlap)
        batch_size = batch_limit((tile, tile), batch_size)
        weights = [blend_window(t, overlap) for t in tiles]
        wsum = _weight_sum(tiles, weights, out.shape[1:])
        batches = [list(range(i, min(i + batch_size, len(tiles)))) for i in range(0, len(tiles), batch_size)]
        total, step = depth * 2 * len(batches), 0
        for z in range(depth):
            x = _pad(slice_input(stack[z], meta))
            sums = None
            for b in batches:  # pass 1: the image's pooled context from the tiles' cores
                part = ctx.core_sums(_gather(x, [tiles[i] for i in b]), [tiles[i] for i in b])
                sums = part if sums is None else sums + part
                step += 1
                yield Progress(step, total, f"slice {z + 1}/{depth}: context")
            pooled = sums / ((x.shape[1] // STRIDE) * (x.shape[2] // STRIDE))
            acc = np.zeros(x.shape[1:], np.float32)
            for b in batches:  # pass 2: tiles with that context, blended
                probs = ctx.probs(_gather(x, [tiles[i] for i in b]), pooled)
                for i, p in zip(b, probs, strict=True):
                    acc[tiles[i].window] += p * weights[i]
                step += 1
                yield Progress(step, total, f"slice {z + 1}/{depth}: tiles")
            out[z] = (acc / wsum)[: out.shape[1], : out.shape[2]]
    return out if is_stack else out[0]


def _predict_resampled(model: ALNet, stack: np.ndarray, meta: ModelMetadata, device, tile: int | None,
                       overlap: int, batch_size: int, tta: bool, is_stack: bool) -> Job[np.ndarray]:
    """Run at the model's working resolution, a few slices at a time (a zoomed stack is never held whole), and
    bring the probabilities back to the image's size (bilinear)."""
    depth, spatial = stack.shape[0], stack.shape[1:3]
    working = meta.network_shape(spatial)
    chunk = max(1, min(batch_size, batch_limit(working, batch_size)))
    out = np.empty((depth, *spatial), np.float32)
    for z in range(0, depth, chunk):
        part = np.stack([resample_image(s, working) for s in stack[z:z + chunk]])
        job = _predict(model, part, meta, device, tile, overlap, batch_size, tta, True)
        while True:  # re-yield the chunk's progress on the whole stack's scale (100 units per slice)
            try:
                p = next(job)
            except StopIteration as stop:
                out[z:z + len(part)] = resample_probabilities(stop.value, spatial)
                break
            yield Progress(z * 100 + round(p.fraction * len(part) * 100), depth * 100,
                           f"slice {min(z + chunk, depth)}/{depth}")
    return out if is_stack else out[0]


class Context:
    """Forward passes of one prepared network: probabilities (optionally with 8-fold TTA) and pass-1 sums."""

    def __init__(self, net: ALNet, dev: torch.device, tta: bool) -> None:
        self.net, self.dev = net, dev
        self.transforms = range(8) if tta else range(1)

    def autocast(self):
        """fp16 autocast on CUDA, nothing elsewhere."""
        if self.dev.type == "cuda":
            return torch.autocast("cuda", dtype=torch.float16)
        return contextlib.nullcontext()

    def tensor(self, x: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(x)).to(self.dev)
        return t.contiguous(memory_format=torch.channels_last) if self.dev.type == "cpu" else t

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
            prob = torch.sigmoid(logits[:, 0]) if logits.shape[1] == 1 else torch.softmax(logits, 1)[:, 1]
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


def dihedral(x: torch.Tensor, k: int) -> torch.Tensor:
    """Transform ``k`` (0-7) of the 8 flips/transposes of the last two axes (0 = identity)."""
    if k & 4:
        x = x.transpose(-1, -2)
    if k & 1:
        x = x.flip(-2)
    if k & 2:
        x = x.flip(-1)
    return x


def undo_dihedral(x: torch.Tensor, k: int) -> torch.Tensor:
    if k & 2:
        x = x.flip(-1)
    if k & 1:
        x = x.flip(-2)
    if k & 4:
        x = x.transpose(-1, -2)
    return x


def _pad(x: np.ndarray) -> np.ndarray:
    """Edge-pad (C, Y, X) bottom/right to a multiple of 32 (what the network does for a whole image)."""
    h, w = x.shape[1:]
    return np.pad(x, ((0, 0), (0, ceil_to(h) - h), (0, ceil_to(w) - w)), mode="edge")


def _gather(x: np.ndarray, tiles: list[Tile]) -> np.ndarray:
    return np.stack([x[(slice(None), *t.window)] for t in tiles])


def _weight_sum(tiles: list[Tile], weights: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    total = np.zeros((ceil_to(shape[0]), ceil_to(shape[1])), np.float32)
    for t, w in zip(tiles, weights, strict=True):
        total[t.window] += w
    return total
