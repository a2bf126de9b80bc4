"""Volumes beyond memory and beyond one machine: blockwise segmentation into OME-Zarr, on Dask, resumable.

A volume (``io.volumes.open_volume``: OME-Zarr, Zarr, N5, TIFF, or a NumPy/dask array) is cut into blocks
(``plan_blocks``): whole YX planes, ``bz`` slices each, when a plane fits the whole-image limit (each block then runs
``inference.probability_job``, so results equal in-memory ``predict``); otherwise YX tiles, each run in a window
with ``CONTEXT_MARGIN`` of halo and the pooled context and normalization bounds of its whole slice, computed first
per slice (``halo``). Blocks are multiples of the output chunks, so parallel writers never share a chunk.

Outputs are standalone OME-Zarr images made with ``zarr``/``ome-zarr``: ``STEM_labels.zarr`` (uint8 semantic mask, or
uint32/uint64 instance ids) and, on request, ``STEM_prob.zarr`` (uint8 = round(255 p), or float16). Their
``napari_alnet`` attribute records the settings and, once every block is done, ``complete: true``. While a run is
under way the labels store holds ``alnet_state/``: one uint8 per block (0 pending, 1 computed, 2 relabelled),
written after the block's data, so rerunning the same command recomputes only unfinished blocks; it is removed
when the run completes. An output we did not make, a complete one, or one made with other settings is refused
unless ``overwrite``.

3D (or 2D) instances (``instances3d``): connected components per block into ``alnet_state/local``, merged across
block faces with a union-find over touching ids, then relabelled block by block; ids unique over the volume. With
``watershed``, a split phase first runs a distance-transform watershed of each block in a window with a halo (its
mask read from the neighbours' ``local``) into ``alnet_state/split``, and ids across a face are merged only where
both sides' watersheds agree (``instances3d.face_votes``).

Runs in-process (blocks one after another, torch using the cores), on a ``distributed.LocalCluster`` it starts
(``workers=N``), or on an existing cluster (``scheduler=ADDRESS`` or ``client=``); each block is one task, retried
if its worker dies. ``segment_volume_job`` is a ``Job`` yielding a ``Progress`` per finished block (metrics: phase,
blocks done / total, slices/s, ETA, the block's region) and returning a ``VolumeSummary``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr

from ..io.atomic import claim_writer, is_disk_full, release_writer, write_error, writer_lock
from ..io.fingerprint import fingerprint
from ..io.volumes import (
    N5_SUFFIXES,
    TIFF_SUFFIXES,
    ZARR_SUFFIXES,
    Volume,
    VolumeError,
    create_output,
    get_region,
    is_volume_path,
    open_output,
    open_volume,
    put_region,
    record_of,
    remove_output,
)
from ..model import STRIDE
from .arguments import volume_arguments
from .devices import cpu_bf16_support, onednn_isa_cap
from .halo import PlaneContext, block_probabilities, context_width, halo_window, make_context, plane_context
from .inference import check_channels, probability_job
from .instances3d import (
    FACE_AXES,
    MODES,
    block_sizes,
    core_ids,
    face_pairs,
    face_votes,
    ghost_plane,
    halo_voxels,
    label_dtype,
    local_labels,
    merge,
    object_mask,
    offsets,
    split_block,
    voxel_sampling,
    watershed_window,
)
from .postprocess import semantic_labels
from .progress import Job, Progress, StopRequested, run_job
from .segmenter import Segmenter, as_segmenter
from .tiling import DEFAULT_TILE, WHOLE_IMAGE_PIXELS, ceil_to, check_overlap, check_tile

#: Automatic blocks of whole planes hold about this many voxels (bz = this / plane, at least 1).
BLOCK_VOXELS = 4 * 2048 * 2048
#: Automatic blocks that cut YX planes are about this many pixels on a side (a multiple of the source chunks; less
#: when the whole-image limit is lowered: 3/4 of its side).
CUT_BLOCK = 1536
STATE = "alnet_state"
logger = logging.getLogger(__name__)
PENDING, COMPUTED, FINAL = 0, 1, 2
RECORD_VERSION = 2
PROBABILITY_DTYPES = ("uint8", "float16", "float32")
#: The most two fp32 runs' probabilities differ when their blocks ran with other torch thread counts or batch
#: compositions (measured 1.8e-7 and 1.05e-5 on an AVX2 CPU; docs/volumes.md). Equal settings: equal bits.
FP32_TOLERANCE = 1e-4
#: Retries of a block whose worker died or failed (Dask ``retries``).
RETRIES = 3
#: Default context of the blockwise watershed, in voxels of the finest axis (``watershed_halo``).
WATERSHED_HALO = 16


# --- planning -----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Block:
    """One block: its ``index`` (C order over the grid), grid ``position`` and (z, y, x) ``region``."""

    index: int
    position: tuple[int, int, int]
    region: tuple[slice, slice, slice]

    @property
    def bounds(self) -> tuple[int, int, int, int, int, int]:
        """(z0, z1, y0, y1, x0, x1)."""
        return tuple(v for s in self.region for v in (s.start, s.stop))  # type: ignore[return-value]

    @property
    def voxels(self) -> int:
        return int(np.prod([s.stop - s.start for s in self.region]))


@dataclass(frozen=True)
class BlockPlan:
    """How a (Z, Y, X) volume is cut: ``block`` shape, output ``chunks`` (each divides the block where the axis has
    several blocks), and whether blocks cut YX planes (then the per-slice context pass runs first)."""

    shape: tuple[int, int, int]
    block: tuple[int, int, int]
    chunks: tuple[int, int, int]

    @property
    def grid(self) -> tuple[int, int, int]:
        return tuple(-(-n // b) for n, b in zip(self.shape, self.block, strict=True))  # type: ignore[return-value]

    @property
    def cuts_planes(self) -> bool:
        return self.block[1] < self.shape[1] or self.block[2] < self.shape[2]

    def __len__(self) -> int:
        return int(np.prod(self.grid))

    def blocks(self) -> list[Block]:
        out = []
        for i, pos in enumerate(np.ndindex(*self.grid)):
            region = tuple(slice(p * b, min((p + 1) * b, n)) for p, b, n in zip(pos, self.block, self.shape,
                                                                                   strict=True))
            out.append(Block(i, tuple(int(p) for p in pos), region))  # type: ignore[arg-type]
        return out

    def index_of(self, position: tuple[int, ...]) -> int:
        return int(np.ravel_multi_index(position, self.grid))


def plan_blocks(shape: tuple[int, int, int], *, chunks: tuple[int, int, int] | None = None,
                block: tuple[int, int, int] | None = None, whole_pixels: int = WHOLE_IMAGE_PIXELS,
                can_cut: bool = True) -> BlockPlan:
    """The blocks of a (Z, Y, X) volume with source ``chunks``; ``block``: an explicit (Z, Y, X) block shape.

    Automatic: whole planes when the padded plane has at most ``whole_pixels`` pixels (or when ``can_cut`` is
    False: models that resize images for their network), ``BLOCK_VOXELS`` per block; else ``CUT_BLOCK`` tiles.
    Blocks are rounded to multiples of the source chunks where that keeps them near the intended size.
    """
    shape = tuple(int(s) for s in shape)  # type: ignore[assignment]
    chunks = tuple(max(1, min(int(c), n)) for c, n in zip(chunks or (1, *shape[1:]), shape, strict=True))
    if block is None:
        block = _auto_block(shape, chunks, whole_pixels, can_cut)
    else:
        if len(block) != 3 or any(int(b) < 1 for b in block):
            raise ValueError(f"block must be three positive sizes (Z, Y, X), got {tuple(block)}")
        block = tuple(min(int(b), n) for b, n in zip(block, shape, strict=True))
    plan_chunks = tuple(c if (b >= n or b % c == 0) else b for b, c, n in zip(block, chunks, shape, strict=True))
    plan = BlockPlan(shape, block, plan_chunks)  # type: ignore[arg-type]
    if plan.cuts_planes:
        if not can_cut:
            raise ValueError(f"block {block} cuts the {shape[1]} x {shape[2]} planes, but this model resizes "
                             "images for its network: blocks must hold whole YX planes (--block BZ Y X)")
        if min(block[1:]) < STRIDE:
            raise ValueError(f"blocks that cut YX planes must be at least {STRIDE} px on a side, got {block}")
    return plan


def _auto_block(shape: tuple[int, ...], chunks: tuple[int, ...], whole_pixels: int,
                can_cut: bool) -> tuple[int, int, int]:
    depth, height, width = shape
    if ceil_to(height) * ceil_to(width) <= whole_pixels or not can_cut:
        bz = max(1, min(depth, BLOCK_VOXELS // (height * width)))
        if chunks[0] <= bz:
            bz = bz // chunks[0] * chunks[0]
        return (bz, height, width)
    target = max(STRIDE, min(CUT_BLOCK, math.isqrt(whole_pixels) * 3 // 4))  # 1536 for the 2048^2 limit
    side = [min(n, max(c, target // c * c)) if c <= target else min(n, target)
            for c, n in zip(chunks[1:], shape[1:], strict=True)]
    bz = chunks[0] if chunks[0] <= 16 else 1
    return (min(bz, depth), side[0], side[1])


# --- settings, outputs and the record -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Settings:
    """What every task needs besides the data (picklable)."""

    threshold: float
    objects: str
    instances: str | None
    probabilities: str | None
    tile: int | None
    overlap: int
    tta: bool
    batch_size: int
    rgb: bool
    ndim: int
    min_size: int
    threads: int | None = None
    watershed: bool = False
    #: Voxels of context per (z, y, x) axis of each block's watershed, and the voxel size relative to the finest axis.
    watershed_halo: tuple[int, int, int] = (0, 0, 0)
    watershed_sampling: tuple[float, float, float] = (1.0, 1.0, 1.0)

    @property
    def context_tile(self) -> int:
        return self.tile or DEFAULT_TILE

    @property
    def transforms(self) -> int:
        return 8 if self.tta else 1


@dataclass
class Outputs:
    """The arrays a run writes (zarr arrays pickle by store path and are reopened on workers)."""

    labels: zarr.Array
    state: zarr.Array
    probabilities: zarr.Array | None = None
    context: zarr.Array | None = None
    local: zarr.Array | None = None
    counts: zarr.Array | None = None
    #: The watershed split: its ids and counts per block, which blocks are split, and per face axis the planes
    #: beyond each block's faces as its window saw them (index 2 * block position + side along that axis).
    split: zarr.Array | None = None
    split_counts: zarr.Array | None = None
    split_state: zarr.Array | None = None
    ghosts: tuple[zarr.Array | None, ...] = (None, None, None)


@dataclass
class VolumeSummary:
    """What a volume run did: output locations, the plan, blocks computed now and found done (resumed), slices
    computed, objects (instances), wall time, whether it was stopped and where it ran."""

    labels: str
    probabilities: str | None
    shape: tuple[int, int, int]
    block: tuple[int, int, int]
    blocks: int
    blocks_run: int = 0
    blocks_resumed: int = 0
    slices: float = 0.0
    objects: int | None = None
    dtype: str = "uint8"
    seconds: float = 0.0
    stopped: bool = False
    complete: bool = False
    device: str = ""
    workers: str = "in-process"
    #: torch threads of each block task (``None``: each Dask worker's cores / its task threads).
    threads: int | None = None

    @property
    def slices_per_second(self) -> float:
        return self.slices / self.seconds if self.seconds else 0.0


def network_digest(segmenter: Segmenter) -> str:
    """A short hash of the network's weights (part of the settings a resumed run must share)."""
    h = hashlib.sha256()
    for name, tensor in sorted(segmenter.network.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


@dataclass(frozen=True)
class Targets:
    """Where the labels (and probabilities) go: paths, or groups given by the caller."""

    labels: Path | zarr.Group
    probabilities: Path | zarr.Group | None


def output_targets(volume: Volume, dest: str | Path | zarr.Group, probabilities: bool,
                   prob_dest: str | Path | zarr.Group | None = None) -> Targets:
    """``dest`` ending in .zarr (or a group): the labels there, probabilities in ``prob_dest`` or a sibling
    ``STEM_prob.zarr``; any other ``dest`` is a folder for ``STEM_labels.zarr`` and ``STEM_prob.zarr``."""
    if isinstance(dest, zarr.Group):
        if probabilities and prob_dest is None:
            raise ValueError("with a Zarr group as dest, give prob_dest (a path or group) for the probabilities")
        return Targets(dest, prob_dest if probabilities else None)
    dest = Path(dest)
    if dest.name.lower().endswith(".zarr"):
        stem = dest.name[: -len(".zarr")]
        stem = stem[: -len("_labels")] if stem.endswith("_labels") else stem
        prob = Path(prob_dest) if prob_dest is not None else dest.with_name(f"{stem}_prob.zarr")
        return Targets(dest, prob if probabilities else None)
    prob = Path(prob_dest) if prob_dest is not None else dest / f"{volume.name}_prob.zarr"
    return Targets(dest / f"{volume.name}_labels.zarr", prob if probabilities else None)


def volume_routes(inputs: list[str], out: str | Path, instances: str | None,
                  volume_options: bool = False) -> tuple[list[str], list[str]]:
    """Which ``alnet segment`` inputs go to this engine (OME-Zarr out) and which to the TIFF batch: Zarr/N5 inputs
    always; every input when ``out`` ends in .zarr (then exactly one) or for 3D instances (volumes and TIFF
    stacks). ``volume_options`` (--block, --workers, ...) without any volume input is an error."""
    to_zarr = str(out).lower().rstrip("/").endswith(".zarr")
    if to_zarr and len(inputs) != 1:
        raise ValueError(f"-o {out} names one OME-Zarr output: give one input, or an output folder")
    if to_zarr or instances == "3d":
        odd = [i for i in inputs if not is_volume_path(i) and not str(i).lower().endswith(TIFF_SUFFIXES)]
        if odd:
            raise ValueError(f"{odd[0]}: OME-Zarr output (-o *.zarr, --instances 3d) takes Zarr/N5 volumes or TIFF "
                             "stacks, one path each (not folders or PNG/JPEG)")
        return list(inputs), []
    volumes = [i for i in inputs if is_volume_path(i)]
    if volume_options and not volumes:
        raise ValueError("--block, --workers, --scheduler and --threads apply to OME-Zarr outputs: Zarr/N5 inputs, "
                         "-o ending in .zarr, or --instances 3d")
    return volumes, [i for i in inputs if i not in volumes]


# --- the tasks (module level: they run on Dask workers) -----------------------------------------------------------

def _set_threads(threads: int | None) -> None:
    """torch threads for this task: ``threads``, or on a Dask worker the cores divided among its task threads."""
    if threads is None:
        try:
            from distributed import get_worker

            worker = get_worker()
        except (ImportError, ValueError):
            return
        threads = max(1, usable_cores() // max(1, worker.state.nthreads))
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def _put(array: zarr.Array, region: tuple[slice, slice, slice], data: np.ndarray) -> None:
    """Write a (z, y, x) block into a 3D array, or its only slice into a 2D one (in the order the array is stored
    in: an output keeps its source's declared axis order)."""
    put_region(array, region, data)


def _get(array: zarr.Array, region: tuple[slice, slice, slice]) -> np.ndarray:
    return get_region(array, region)


def context_task(segmenter: Segmenter, reader, outputs: Outputs, settings: Settings, plane: tuple[int, int],
                 z: int) -> int:
    """Pass 1 for slice ``z``: its normalization bounds and pooled context, stored as one row."""
    _set_threads(settings.threads)

    def read(ys: slice, xs: slice) -> np.ndarray:
        return reader.read((slice(z, z + 1), ys, xs))[0]

    ctx = make_context(segmenter, settings.tta)
    found = plane_context(ctx, segmenter.metadata, read, plane, tile=settings.context_tile,
                          overlap=settings.overlap, batch_size=settings.batch_size)
    outputs.context[z] = found.to_row()
    return z


def _whole_plane_probs(segmenter: Segmenter, reader, settings: Settings, block: Block) -> np.ndarray:
    raw = reader.read(block.region)
    job = probability_job(segmenter, raw, tile=settings.tile, overlap=settings.overlap,
                          batch_size=settings.batch_size, tta=settings.tta, rgb=settings.rgb)
    return run_job(job)


def _cut_plane_probs(segmenter: Segmenter, reader, outputs: Outputs, settings: Settings, plan: BlockPlan,
                     block: Block) -> np.ndarray:
    """Probabilities of a block that cuts YX planes: each slice in its halo window with that slice's context."""
    zs, ys, xs = block.region
    plane = plan.shape[1:]
    window = tuple(slice(w.start, min(w.stop, n)) for w, n in zip(halo_window((ys, xs), plane), plane, strict=True))
    raw = reader.read((zs, *window))
    rows = outputs.context[zs]
    if np.isnan(rows).any():
        raise RuntimeError(f"slices {zs.start}-{zs.stop - 1}: the context pass has not run (a bug)")
    ctx = make_context(segmenter, settings.tta)
    out = np.empty((zs.stop - zs.start, ys.stop - ys.start, xs.stop - xs.start), np.float32)
    for k in range(len(out)):
        def read(ry: slice, rx: slice, k=k) -> np.ndarray:
            return raw[k, ry.start - window[0].start: ry.stop - window[0].start,
                       rx.start - window[1].start: rx.stop - window[1].start]

        out[k] = block_probabilities(ctx, segmenter.metadata, read, plane, (ys, xs),
                                     PlaneContext.from_row(rows[k], settings.transforms))
    return out


def encode_probabilities(probs: np.ndarray, dtype: str) -> np.ndarray:
    """uint8 = round(255 p), or float16 / float32."""
    if dtype == "uint8":
        return np.rint(np.clip(probs, 0, 1) * 255).astype(np.uint8)
    return probs.astype(dtype)


def block_task(segmenter: Segmenter, reader, outputs: Outputs, settings: Settings, plan: BlockPlan,
               block: Block) -> tuple[float, float, float]:
    """Segment one block and write it (labels or local ids, probabilities), then mark it computed; returns the
    slices it is worth (voxels / plane), the seconds of inference (reading included) and of the whole task."""
    start = time.perf_counter()
    _set_threads(settings.threads)
    try:
        if plan.cuts_planes:
            probs = _cut_plane_probs(segmenter, reader, outputs, settings, plan, block)
        else:
            probs = _whole_plane_probs(segmenter, reader, settings, block)
    except ValueError as exc:
        z0, z1, y0, y1, x0, x1 = block.bounds
        raise ValueError(f"block z {z0}:{z1}, y {y0}:{y1}, x {x0}:{x1}: {exc}") from exc
    inferred = time.perf_counter()
    if settings.instances:
        local, count = local_labels(object_mask(probs, settings.threshold, settings.objects), settings.instances)
        _put(outputs.local, block.region, local)
        outputs.counts[block.position] = count
    else:
        _put(outputs.labels, block.region, semantic_labels(probs, settings.threshold))
    if outputs.probabilities is not None:
        _put(outputs.probabilities, block.region, encode_probabilities(probs, settings.probabilities))
    outputs.state[block.position] = COMPUTED
    end = time.perf_counter()
    return block.voxels / (plan.shape[1] * plan.shape[2]), inferred - start, end - start


def merge_task(outputs: Outputs, settings: Settings, plan: BlockPlan, block: Block,
               starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One block's voxels per local id and the id pairs facing each other across its faces with the next blocks
    (in z, y and x for 3D instances; y and x for 2D)."""
    local = _get(outputs.local, block.region)
    count = int(outputs.counts[block.position])
    sizes = block_sizes(local, count)
    pairs = []
    for axis in FACE_AXES[settings.instances]:
        nxt = list(block.position)
        nxt[axis] += 1
        if nxt[axis] >= plan.grid[axis]:
            continue
        region = list(block.region)
        start = region[axis].stop
        region[axis] = slice(start, start + 1)
        high = _get(outputs.local, tuple(region))  # type: ignore[arg-type]
        low = np.take(local, [local.shape[axis] - 1], axis=axis)
        here, there = int(starts[block.index]), int(starts[plan.index_of(tuple(nxt))])
        if settings.watershed:
            pairs.append(_agreed_pairs(outputs, block, axis, nxt[axis], (low, high), (here, there)))
        else:
            pairs.append(face_pairs(low, high, here, there))
    return sizes, (np.concatenate(pairs) if pairs else np.zeros((0, 2), np.int64))


def _agreed_pairs(outputs: Outputs, block: Block, axis: int, nxt: int, planes: tuple[np.ndarray, np.ndarray],
                  starts: tuple[int, int]) -> np.ndarray:
    """The pairs across the face between ``block`` and its next block along ``axis`` (at grid position ``nxt``)
    that both watersheds agree on: each side's ids on its face plane (``planes``: the low block's last, the high
    block's first) voted against what the other side's window made of the same voxels (its ghost plane)."""
    low, high = planes
    region = list(block.region)
    region[axis] = slice(2 * block.position[axis] + 1, 2 * block.position[axis] + 2)
    seen_by_low = outputs.ghosts[axis][tuple(region)]  # the high block's first plane, in the low block's ids
    region[axis] = slice(2 * nxt, 2 * nxt + 1)
    seen_by_high = outputs.ghosts[axis][tuple(region)]  # the low block's last plane, in the high block's ids
    here, there = starts
    return np.concatenate([face_votes(high, seen_by_low, there, here), face_votes(low, seen_by_high, here, there)])


def split_task(outputs: Outputs, settings: Settings, plan: BlockPlan, block: Block) -> int:
    """The watershed of one block in its window (the block plus ``watershed_halo``; the mask is where the block
    phase wrote local ids): the core's ids into ``split``, the planes beyond its inner faces into the ghosts, then
    mark it split."""
    window = watershed_window(block.region, plan.shape, settings.watershed_halo)
    ids = split_block(_get(outputs.local, window) > 0, settings.instances, settings.watershed_sampling)
    core = tuple(slice(r.start - w.start, r.stop - w.start) for r, w in zip(block.region, window, strict=True))
    local, count, table = core_ids(ids, core)
    outputs.split[block.region] = local
    outputs.split_counts[block.position] = count
    for axis in FACE_AXES[settings.instances]:
        for side, step in ((0, -1), (1, 1)):
            if 0 <= block.position[axis] + step < plan.grid[axis]:
                region = list(block.region)
                region[axis] = slice(2 * block.position[axis] + side, 2 * block.position[axis] + side + 1)
                outputs.ghosts[axis][tuple(region)] = ghost_plane(ids, core, axis, side, table)
    outputs.split_state[block.position] = 1
    return block.index


def relabel_task(outputs: Outputs, lut: zarr.Array, block: Block, start: int) -> int:
    """Write one block's final ids (its local ids through the merged lookup table), then mark it final."""
    local = _get(outputs.local, block.region)
    count = int(outputs.counts[block.position])
    table = np.asarray(lut[start: start + count + 1]).copy()
    table[0] = 0
    _put(outputs.labels, block.region, table[local].astype(outputs.labels.dtype, copy=False))
    outputs.state[block.position] = FINAL
    return block.index


# --- executors ----------------------------------------------------------------------------------------------------

class InProcess:
    """Runs tasks one after another in the calling thread (torch uses the cores)."""

    name = "in-process"

    def share(self, obj: Any) -> Any:
        return obj

    def run(self, fn: Callable, items: list, args: Callable[[Any], tuple]) -> Iterator[tuple[Any, Any]]:
        for item in items:
            yield item, fn(*args(item))

    def close(self) -> None:
        pass


class OnDask:
    """Runs tasks on a ``distributed`` client, each retried ``RETRIES`` times (a dead worker loses its task only)."""

    def __init__(self, client, cluster=None, name: str = "dask", owns_client: bool = False) -> None:
        self.client, self.cluster, self.name, self.owns_client = client, cluster, name, owns_client
        self.pending: list = []

    def share(self, obj: Any) -> Any:
        return self.client.scatter(obj, broadcast=True, hash=False)

    def run(self, fn: Callable, items: list, args: Callable[[Any], tuple]) -> Iterator[tuple[Any, Any]]:
        from distributed import as_completed

        token = uuid.uuid4().hex[:8]
        futures = {self.client.submit(fn, *args(item), key=f"alnet-{fn.__name__}-{i}-{token}", retries=RETRIES,
                                      pure=False): item for i, item in enumerate(items)}
        self.pending = list(futures)
        for future in as_completed(futures):
            result = future.result()
            self.pending.remove(future)
            yield futures[future], result
            future.release()

    def close(self) -> None:
        if self.pending:
            self.client.cancel(self.pending)
            self.pending = []
        if self.owns_client:
            self.client.close()
        if self.cluster is not None:
            self.cluster.close()


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS tells it)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


#: A LocalCluster needs more cores than this: on 2 cores one process already uses both (torch's threads), and
#: 2 worker processes were measured 40 % slower than in-process (issue 27, an Intel Xeon with AMX).
MIN_CLUSTER_CORES = 2


def choose_workers(workers: int | None, cores: int) -> tuple[int | None, str]:
    """The LocalCluster size for a ``workers`` request on ``cores`` usable cores, or ``None`` to run in-process,
    and why not the request (empty when it is followed): workers cannot add cores to an in-process run (whose
    torch threads use every core) when there are more workers than cores or ``MIN_CLUSTER_CORES`` or fewer."""
    if not workers:
        return None, ""
    if workers < 2:
        return None, "1 worker would not add cores (torch's threads already use them all)"
    if workers > cores:
        return None, f"{workers} workers on {cores} usable cores would not add cores"
    if cores <= MIN_CLUSTER_CORES:
        return None, (f"on {cores} usable cores one process already uses every core; {workers} "
                      "workers would not add any (and were measured 40 % slower)")
    return workers, ""


@dataclass(frozen=True)
class Placement:
    """Where a run's tasks go: a LocalCluster of ``workers`` (``None``: in-process, or the given cluster), the
    torch threads per task when the caller did not fix them (``default_threads``), and why not the requested
    workers (``note``)."""

    workers: int | None
    default_threads: int | None
    note: str = ""


def place_run(client=None, workers: int | None = None, scheduler: str | None = None,
              threads: int | None = None) -> Placement:
    """Where a run goes (see ``choose_workers``) and its default torch threads per block task: the cores / workers
    on a LocalCluster, torch's current threads in-process (with ``threads`` per requested worker, at most the
    cores, when the workers were declined), ``None`` on a given cluster (each worker decides)."""
    if client is not None or scheduler:
        return Placement(None, None)
    cores = usable_cores()
    chosen, note = choose_workers(workers, cores)
    if chosen:
        return Placement(chosen, max(1, cores // chosen))
    if note and threads:
        return Placement(None, min(cores, threads * int(workers or 1)), note)
    return Placement(None, torch.get_num_threads(), note)


def start_executor(client=None, workers: int | None = None, scheduler: str | None = None,
                   threads: int | None = None) -> InProcess | OnDask:
    """The executor for a run: ``client``, a client of ``scheduler``, a LocalCluster of ``workers`` (one task
    thread each; ``threads``: the torch threads of its tasks, for the name), or in-process."""
    if client is not None:
        return OnDask(client, name=f"dask client {client.scheduler.address}")
    if scheduler:
        from distributed import Client

        return OnDask(Client(scheduler), name=f"dask scheduler {scheduler}", owns_client=True)
    if workers:
        from distributed import Client, LocalCluster

        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                               dashboard_address="127.0.0.1:0", silence_logs=logging.ERROR, memory_limit=0)
        name = f"LocalCluster {workers} workers x {threads} threads"
        return OnDask(Client(cluster), cluster, name, owns_client=True)
    return InProcess()


# --- preparing a run ----------------------------------------------------------------------------------------------

@dataclass
class VolumeRun:
    """A prepared run: the model, source, plan, settings, output groups and arrays, and its summary so far."""

    segmenter: Segmenter
    volume: Volume
    plan: BlockPlan
    settings: Settings
    labels_group: zarr.Group
    prob_group: zarr.Group | None
    outputs: Outputs
    summary: VolumeSummary
    #: This run's writer lock beside a path output (``io.atomic.claim_writer``), released when the run ends.
    lock: Path | None = None


def plan_volume(model: Segmenter, source: Any, *, block: tuple[int, int, int] | None = None,
                whole_pixels: int = WHOLE_IMAGE_PIXELS) -> tuple[Volume, BlockPlan]:
    """The opened source and its block plan (for an estimate before a run: ``len(plan)`` blocks)."""
    volume = source if isinstance(source, Volume) else open_volume(source)
    return volume, plan_blocks(volume.shape, chunks=volume.chunks, block=block, whole_pixels=whole_pixels,
                               can_cut=_can_cut(model, volume))


def _can_cut(model: Segmenter, volume: Volume) -> bool:
    """Whether blocks may cut YX planes: not for models that resize images for their network."""
    return model.metadata.network_shape(volume.shape[1:]) == volume.shape[1:]


#: The most voxels a block's watershed window may hold when the block shape is automatic: about 2.7 GB at the
#: split's ~80 bytes per window voxel (``benchmarks/watershed.py``).
WATERSHED_WINDOW_VOXELS = 32 * 1024 * 1024


def watershed_block(plan: BlockPlan, halo: tuple[int, int, int], *, can_cut: bool,
                    budget: int | None = None) -> tuple[int, int, int]:
    """The block shape for a watershed run: the automatic ``plan``'s block if its window (block + ``halo`` on each
    side) fits ``budget`` voxels, else the first that fits of whole-plane blocks of fewer slices, then (``can_cut``)
    YX tiles of 1024, 512 and 256 px of 16 down to 1 slice; the smallest of them if none fits. ``budget``: default
    ``WATERSHED_WINDOW_VOXELS``."""
    budget = WATERSHED_WINDOW_VOXELS if budget is None else budget
    shape = plan.shape
    whole = [(z, shape[1], shape[2]) for z in range(plan.block[0], 0, -1)]
    tiles = [(z, t, t) for t in (1024, 512, 256) for z in (16, 8, 4, 2, 1)] if can_cut else []
    candidates = [tuple(min(b, n) for b, n in zip(c, shape, strict=True)) for c in [plan.block, *whole, *tiles]]
    for block in candidates:
        if math.prod(min(n, b + 2 * h) for b, n, h in zip(block, shape, halo, strict=True)) <= budget:
            return block  # type: ignore[return-value]
    return candidates[-1]  # type: ignore[return-value]


def _settings(segmenter: Segmenter, volume: Volume, *, threshold, instances, probabilities, prob_dtype, tile,
              overlap, tta, batch_size, min_size) -> Settings:
    if instances not in (None, *MODES):
        raise ValueError(f"instances must be None, '2d' or '3d', got {instances!r}")
    if prob_dtype not in PROBABILITY_DTYPES:
        raise ValueError(f"prob_dtype must be one of {PROBABILITY_DTYPES}, got {prob_dtype!r}")
    if tile is not None:
        check_tile(tile, overlap)
    check_overlap(tile or DEFAULT_TILE, overlap)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    check_channels(segmenter.metadata, volume.rgb, volume.data.shape)
    return Settings(float(segmenter.threshold if threshold is None else threshold), segmenter.metadata.objects,
                    instances, prob_dtype if probabilities else None, tile, overlap, bool(tta), int(batch_size),
                    volume.rgb, volume.ndim, int(min_size))


def _watershed_settings(settings: Settings, volume: Volume, watershed: bool, halo: int) -> Settings:
    """``settings`` with the watershed split: its halo in voxels per axis from ``halo`` voxels of the finest axis
    and the volume's voxel size (``instances3d.voxel_sampling``: isotropic without a usable scale)."""
    if not watershed:
        raise ValueError("watershed_halo is the context of the watershed split: give it with watershed=True")
    if not settings.instances:
        raise ValueError("the watershed splits instances: give instances='2d' or '3d' with it")
    if isinstance(halo, bool) or not isinstance(halo, (int, np.integer)):
        raise ValueError(f"watershed_halo must be a whole number of voxels, got {halo!r}")
    sampling = voxel_sampling(volume.geometry.scale, volume.geometry.units)
    return replace(settings, watershed=True, watershed_halo=halo_voxels(sampling, int(halo), settings.instances),
                   watershed_sampling=sampling)


def model_identity(segmenter: Segmenter) -> dict[str, str]:
    """Which model made an output: where it came from, a hash of its weights and one of its metadata (card,
    normalization, threshold, ...)."""
    meta = json.dumps(segmenter.metadata.to_strings(), sort_keys=True)
    return {"source": segmenter.source, "weights": network_digest(segmenter),
            "card": hashlib.sha256(meta.encode()).hexdigest()[:16]}


def device_class(device: torch.device) -> str:
    """What of a device changes a block's floating-point results: on a CPU the kernels' instruction set (ATen's,
    oneDNN's cap, native bf16), on a GPU its name."""
    if device.type == "cpu":
        cap = onednn_isa_cap()
        return (f"cpu {torch.backends.cpu.get_cpu_capability()}"
                + (" native-bf16" if cpu_bf16_support().native else "") + (f" oneDNN<={cap}" if cap else ""))
    if device.type == "cuda":
        return f"cuda {torch.cuda.get_device_name(device)}"
    return device.type


def run_record(segmenter: Segmenter, volume: Volume, plan: BlockPlan, settings: Settings) -> dict[str, Any]:
    """What a resumed run must share with the run that made an output (compared as JSON): the model's identity,
    the numerics (device class, precision, torch threads per block), the source's identity (path, shape, dtype,
    ``io.fingerprint``), the plan and every setting."""
    return _jsonable({"version": RECORD_VERSION, "model": model_identity(segmenter),
                      "numerics": {"device": device_class(segmenter.device), "precision": segmenter.precision,
                                   "threads": settings.threads},
                      "source": {"path": str(volume.path) if volume.path is not None else "array",
                                 "shape": list(volume.data.shape), "dtype": str(volume.reader.dtype),
                                 "fingerprint": fingerprint(volume)},
                      "plan": {"shape": plan.shape, "block": plan.block, "chunks": plan.chunks},
                      "settings": {k: v for k, v in asdict(settings).items()
                                   if k != "threads" and (settings.watershed or not k.startswith("watershed"))}})


def _flat(record: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in record.items():
        if isinstance(value, dict):
            out |= _flat(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def _differences(old: dict, new: dict) -> str:
    """What differs between two run records: the names, then each value, e.g. ``(numerics.precision):
    numerics.precision fp32 then, bf16 now`` (settings by their bare names)."""
    before, now = _flat(old), _flat(new)
    keys = [k for k in sorted({*before, *now}) if before.get(k) != now.get(k)]
    if not keys:
        return "(unknown)"
    names = [k.removeprefix("settings.") for k in keys]
    details = "; ".join(f"{n} {_short(before.get(k))} then, {_short(now.get(k))} now"
                        for n, k in zip(names, keys, strict=True))
    return f"({', '.join(names)}): {details}"


def _short(value: Any) -> str:
    text = "absent" if value is None else str(value)
    return text if len(text) <= 40 else text[:37] + "..."


#: Names that make a folder part of a Zarr or N5 container.
_CONTAINER_FILES = ("zarr.json", ".zgroup", ".zarray", ".zattrs")


def input_root(path: Path) -> Path:
    """The outermost Zarr/N5 container holding ``path`` (a folder named *.zarr / *.n5 or holding Zarr metadata, or
    an N5 root), or ``path`` itself when none does: everything under it is the user's input."""
    path = Path(path).resolve()
    root = path
    for folder in (path, *path.parents):
        named = folder.name.lower().endswith((*ZARR_SUFFIXES, *N5_SUFFIXES))
        if named or any((folder / n).is_file() for n in _CONTAINER_FILES) or _is_n5_root(folder):
            root = folder
    return root


def _is_n5_root(folder: Path) -> bool:
    try:
        return "n5" in json.loads((folder / "attributes.json").read_text())
    except (OSError, ValueError, TypeError):
        return False


def _source_path(volume: Volume) -> Path | None:
    """Where the source lies on disk: its path, or the local store of an on-disk Zarr array given as an array."""
    if volume.path is not None:
        return Path(volume.path)
    return _store_path(getattr(volume.reader, "_raw", None))


def _store_path(node: Any) -> Path | None:
    root = getattr(getattr(node, "store", None), "root", None)
    return Path(str(root)) / getattr(node, "path", "") if root is not None else None


def _check_not_source(target: Path | None, volume: Volume) -> None:
    """``VolumeError`` when an output would lie anywhere inside the input's container (or hold the input)."""
    source = _source_path(volume)
    if target is None or source is None:
        return
    out, root, src = Path(target).resolve(), input_root(source), source.resolve()
    if out == root or root in out.parents or out in src.parents:
        raise VolumeError(f"output {target} lies inside (or holds) the input {source} (its container: {root}); "
                          "an input is never written to: choose an output outside it")


def _claim(target: Path | zarr.Group, record: dict, overwrite: bool, volume: Volume) -> zarr.Group | None:
    """The existing output to resume, or ``None`` to create one (after clearing it with ``overwrite``);
    ``VolumeError`` when it must not be touched."""
    where = target if isinstance(target, Path) else f"Zarr group {target.store_path}"
    if isinstance(target, Path):
        try:
            existing = open_output(target)
        except VolumeError:
            if not overwrite:
                raise
            remove_output(target)
            return None
    else:
        existing = target if (list(target.keys()) or dict(target.attrs)) else None
    if existing is None:
        return None
    found = record_of(existing)
    if found is None:
        why = "was not made by napari-alnet"
    elif found.get("complete"):
        why = "is complete"
    elif found.get("run") != record:
        why = (f"was started with other settings {_differences(found.get('run') or {}, record)}; resuming would "
               "mix blocks of both runs")
    else:
        return existing
    if not overwrite:
        raise VolumeError(f"{where} exists and {why}; refusing to write over it. To start over: --overwrite "
                          "(overwrite=True) replaces it, or choose another output")
    if isinstance(target, Path):
        remove_output(target)
    else:
        _clear_group(target)
    return None


#: What a full disk mid-run leaves (unlike a TIFF, a volume output keeps its finished blocks for the resume).
DISK_FULL_KEPT = "the blocks finished so far are kept: free some space and run the same command again to continue"


@contextlib.contextmanager
def disk_full_said(path: Path | str, after: str = DISK_FULL_KEPT) -> Iterator[None]:
    """A full disk while writing ``path`` is said in the TIFF path's words (``io.atomic.write_error``: "the disk
    is full (N MB free on ...)"), then ``after``; other errors pass unchanged."""
    try:
        yield
    except OSError as exc:
        if not is_disk_full(exc):
            raise
        raise write_error(exc, Path(str(path)), after=after) from exc


def _created(target: Path | zarr.Group, create: Callable[[], zarr.Group]) -> zarr.Group:
    """``create()`` a new output at ``target``; a path it fails to fill is removed (nothing half-made is left)."""
    try:
        with disk_full_said(target if isinstance(target, Path) else target.store_path,
                            after="nothing was left at that path: free some space and run again"):
            return create()
    except BaseException:
        if isinstance(target, Path):
            remove_output(target)
        raise


def _clear_group(group: zarr.Group) -> None:
    for name in list(group.keys()):
        del group[name]
    for key in list(group.attrs.keys()):
        del group.attrs[key]


def _spatial(values: tuple[int, ...], ndim: int) -> tuple[int, ...]:
    return tuple(values) if ndim == 3 else tuple(values[1:])


def _new_labels(target: Path | zarr.Group, volume: Volume, plan: BlockPlan, settings: Settings, record: dict,
                width: int) -> zarr.Group:
    dtype = np.uint32 if settings.instances else np.uint8
    props = None if settings.instances else [{"label-value": 1, "class": settings.objects}]
    group = create_output(target, shape=_spatial(plan.shape, volume.ndim), dtype=dtype,
                          chunks=_spatial(plan.chunks, volume.ndim), geometry=volume.geometry,
                          zarr_format=volume.zarr_format, label=True, name=f"{volume.name} labels",
                          record={"version": RECORD_VERSION, "kind": "labels", "complete": False, "run": record},
                          label_properties=props)
    state = group.create_group(STATE)
    state.create_array("blocks", shape=plan.grid, dtype="uint8", chunks=(1, 1, 1), fill_value=0, compressors=None)
    if settings.instances:
        state.create_array("counts", shape=plan.grid, dtype="uint64", chunks=(1, 1, 1), fill_value=0,
                           compressors=None)
        state.create_array("local", shape=plan.shape, dtype="uint32", chunks=plan.chunks, fill_value=0)
    if settings.watershed:
        _new_split(state, plan, settings)
    if plan.cuts_planes:
        state.create_array("context", shape=(plan.shape[0], width), dtype="float32", chunks=(1, width),
                           fill_value=float("nan"), compressors=None)
    return group


def _new_probabilities(target: Path | zarr.Group, volume: Volume, plan: BlockPlan, settings: Settings,
                       record: dict) -> zarr.Group:
    encoding = ("uint8: probability = value / 255" if settings.probabilities == "uint8"
                else f"{settings.probabilities}: probability")
    return create_output(target, shape=_spatial(plan.shape, volume.ndim), dtype=settings.probabilities,
                         chunks=_spatial(plan.chunks, volume.ndim), geometry=volume.geometry,
                         zarr_format=volume.zarr_format, label=False, name=f"{volume.name} probabilities",
                         record={"version": RECORD_VERSION, "kind": "probabilities", "encoding": encoding,
                                 "dtype": settings.probabilities, "complete": False, "run": record})


def _new_split(state: zarr.Group, plan: BlockPlan, settings: Settings) -> None:
    """The watershed's arrays: ids like ``local``, counts and done flags per block, and per face axis the ghost
    planes (the axis holds 2 per block, its low and high side; chunks of one plane, so each block writes its own)."""
    state.create_array("split", shape=plan.shape, dtype="uint32", chunks=plan.chunks, fill_value=0)
    for name, dtype in (("split_counts", "uint64"), ("split_blocks", "uint8")):
        state.create_array(name, shape=plan.grid, dtype=dtype, chunks=(1, 1, 1), fill_value=0, compressors=None)
    for axis in FACE_AXES[settings.instances]:
        shape, chunks = list(plan.shape), list(plan.chunks)
        shape[axis], chunks[axis] = 2 * plan.grid[axis], 1
        state.create_array(f"ghost{axis}", shape=tuple(shape), dtype="uint32", chunks=tuple(chunks), fill_value=0)


def _outputs(labels: zarr.Group, prob: zarr.Group | None) -> Outputs:
    state = labels[STATE]
    names = set(state.array_keys())
    outputs = Outputs(labels["0"], state["blocks"], prob["0"] if prob is not None else None,
                      state["context"] if "context" in names else None, state["local"] if "local" in names else None,
                      state["counts"] if "counts" in names else None)
    if "split" in names:
        outputs.split, outputs.split_counts = state["split"], state["split_counts"]
        outputs.split_state = state["split_blocks"]
        outputs.ghosts = tuple(state[f"ghost{a}"] if f"ghost{a}" in names else None for a in range(3))
    return outputs


def _id_outputs(outputs: Outputs) -> Outputs:
    """What the merge and relabel phases read as the blocks' ids: the watershed's where it ran, else ``local``."""
    return outputs if outputs.split is None else replace(outputs, local=outputs.split, counts=outputs.split_counts)


def _check_threads(threads: Any) -> int:
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 1:
        raise ValueError(f"threads must be a whole number >= 1 (torch threads per block task), got {threads!r}")
    return int(threads)


def _recorded_threads(target: Path | zarr.Group, default: int | None) -> int | None:
    """The torch threads per block an unfinished output at ``target`` was started with (a resume keeps them: a
    block's floating-point results depend on them), else ``default``."""
    try:
        group = open_output(target) if isinstance(target, Path) else target
    except VolumeError:
        return default
    found = record_of(group) if group is not None else None
    numerics = (found or {}).get("run", {}).get("numerics") if not (found or {}).get("complete") else None
    if isinstance(numerics, dict) and "threads" in numerics:
        return numerics["threads"]
    return default


def prepare_volume_run(model: Segmenter, source: Any, dest: str | Path | zarr.Group, *,
                       block: tuple[int, int, int] | None = None, probabilities: bool = False,
                       prob_dtype: str = "uint8", instances: str | None = None, threshold: float | None = None,
                       min_size: int = 16, overwrite: bool = False, tile: int | None = None, overlap: int = 64,
                       tta: bool = False, batch_size: int = 4, whole_pixels: int = WHOLE_IMAGE_PIXELS,
                       device=None, prob_dest: str | Path | zarr.Group | None = None, watershed: bool = False,
                       watershed_halo: int = WATERSHED_HALO, threads: int | None = None,
                       default_threads: int | None = None) -> VolumeRun:
    """Check everything and create (or reopen, to resume) the outputs; see ``segment_volume_job``. ``threads``:
    torch threads per block task; without it, a resumed run keeps the threads it was started with, a new one
    takes ``default_threads`` (``None``: each Dask worker decides)."""
    segmenter = as_segmenter(model, device)
    volume, plan = plan_volume(segmenter, source, block=block, whole_pixels=whole_pixels)
    settings = _settings(segmenter, volume, threshold=threshold, instances=instances, probabilities=probabilities,
                         prob_dtype=prob_dtype, tile=tile, overlap=overlap, tta=tta, batch_size=batch_size,
                         min_size=min_size)
    targets = output_targets(volume, dest, probabilities, prob_dest)
    for target in (targets.labels, targets.probabilities):  # before anything is written, the lock included
        _check_not_source(target if isinstance(target, (Path, type(None))) else _store_path(target), volume)
    if threads is None:
        threads = default_threads if overwrite else _recorded_threads(targets.labels, default_threads)
    else:
        threads = _check_threads(threads)
    settings = replace(settings, threads=threads)
    if watershed or watershed_halo != WATERSHED_HALO:
        settings = _watershed_settings(settings, volume, watershed, watershed_halo)
        if block is None:  # memory is set by the watershed's window, not by the network's block
            chosen = watershed_block(plan, settings.watershed_halo, can_cut=_can_cut(segmenter, volume))
            volume, plan = plan_volume(segmenter, volume, block=chosen, whole_pixels=whole_pixels)
    record = run_record(segmenter, volume, plan, settings)
    lock = _claim_writer(targets.labels)
    try:
        labels, prob = _open_outputs(segmenter, volume, plan, settings, record, targets, overwrite)
    except BaseException:
        release_writer(lock)
        raise
    name = str(targets.labels) if isinstance(targets.labels, Path) else str(labels.store_path)
    prob_name = None if prob is None else (str(targets.probabilities) if isinstance(targets.probabilities, Path)
                                           else str(prob.store_path))
    summary = VolumeSummary(name, prob_name, plan.shape, plan.block, len(plan), dtype=str(labels["0"].dtype),
                            device=f"{segmenter.device} ({segmenter.precision})", threads=settings.threads)
    return VolumeRun(segmenter, volume, plan, settings, labels, prob, _outputs(labels, prob), summary, lock)


def _claim_writer(target: Path | zarr.Group) -> Path | None:
    """This run as the one writer of a path output (``io.atomic.claim_writer``); a second run is refused saying
    it kept the first one's work."""
    if not isinstance(target, Path):
        return None
    try:
        return claim_writer(target)
    except FileExistsError as exc:
        raise VolumeError(f"{exc}; kept that run's output and wrote nothing: wait for it to end (if it does not "
                          "finish, run the same command again to resume it; if no run is writing it any more, "
                          f"delete {writer_lock(target)})") from None


def _open_outputs(segmenter: Segmenter, volume: Volume, plan: BlockPlan, settings: Settings, record: dict,
                  targets: Targets, overwrite: bool) -> tuple[zarr.Group, zarr.Group | None]:
    """The labels and probability groups: reopened to resume, or created (cleared first with ``overwrite``)."""
    labels = _claim(targets.labels, record, overwrite, volume)
    prob = _claim(targets.probabilities, record, overwrite, volume) if targets.probabilities is not None else None
    if labels is not None and STATE not in labels:
        raise VolumeError(f"{targets.labels}: its run record is incomplete but its block states are missing; "
                          "--overwrite starts it anew")
    width = context_width(make_context(segmenter, settings.tta)) if plan.cuts_planes else 0
    if labels is None:
        labels = _created(targets.labels, lambda: _new_labels(targets.labels, volume, plan, settings, record, width))
    if targets.probabilities is not None and prob is None:
        prob = _created(targets.probabilities,
                        lambda: _new_probabilities(targets.probabilities, volume, plan, settings, record))
    return labels, prob


# --- running ------------------------------------------------------------------------------------------------------

#: Work of one pass-1 slice and of one merge or relabel block, in slices of full inference (for progress / ETA).
CONTEXT_WEIGHT = 0.4
MERGE_WEIGHT = 0.02
#: Work of the watershed split per slice of a block, in slices of full inference (for progress / ETA: about the
#: network's cost per voxel, times a window about twice the block; benchmarks/watershed.py).
SPLIT_WEIGHT = 2.0


@dataclass
class Tracker:
    """Progress over all phases in slice-equivalents; the rate counts work done in this run only."""

    total: float
    blocks: int
    done: float = 0.0
    done_now: float = 0.0
    blocks_done: int = 0
    start: float = field(default_factory=time.perf_counter)

    def add(self, work: float, block: bool = False) -> None:
        self.done += work
        self.done_now += work
        self.blocks_done += int(block)

    def report(self, phase: str, message: str, region: tuple[int, ...] | None = None) -> Progress:
        elapsed = time.perf_counter() - self.start
        rate = self.done_now / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else None
        text = f"{message} · {rate:.2f} slices/s" + (f" · ETA {_duration(eta)}" if eta is not None else "")
        return Progress(round(self.done), max(1, round(self.total)), text,
                        {"phase": phase, "blocks_done": self.blocks_done, "blocks_total": self.blocks,
                         "slices_per_s": rate, "eta_s": eta, "region": region})


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def read_state(array: zarr.Array) -> np.ndarray:
    """A state array as NumPy; chunks that cannot be read count as never written (fill value)."""
    try:
        return np.asarray(array[...])
    except Exception:
        out = np.full(array.shape, array.fill_value, array.dtype)
        for index in np.ndindex(*array.cdata_shape):
            region = tuple(slice(i * c, (i + 1) * c) for i, c in zip(index, array.chunks, strict=True))
            with contextlib.suppress(Exception):
                out[region] = array[region]
        return out


@dataclass
class _Todo:
    """What is left: pass-1 slices, blocks to compute, whether to merge, blocks to relabel, blocks to split."""

    context: list[int]
    blocks: list[Block]
    merge: bool
    relabel: list[Block]
    split: list[Block] = field(default_factory=list)

    def work(self, plan: BlockPlan) -> float:
        plane = plan.shape[1] * plan.shape[2]
        return (CONTEXT_WEIGHT * len(self.context) + sum(b.voxels for b in self.blocks) / plane
                + MERGE_WEIGHT * len(plan) * self.merge + MERGE_WEIGHT * len(self.relabel)
                + SPLIT_WEIGHT * sum(b.voxels for b in self.split) / plane)


def _todo(run: VolumeRun) -> _Todo:
    blocks = run.plan.blocks()
    states = read_state(run.outputs.state)
    context = []
    if run.outputs.context is not None:
        rows = read_state(run.outputs.context)
        context = [z for z in range(len(rows)) if np.isnan(rows[z]).any()]
    if not run.settings.instances:
        return _Todo(context, [b for b in blocks if states[b.position] == PENDING], False, [])
    merged = "merged" in run.labels_group[STATE].attrs
    split = []
    if run.outputs.split_state is not None and not merged:
        done = read_state(run.outputs.split_state)
        split = [b for b in blocks if not done[b.position]]
    return _Todo(context, [b for b in blocks if states[b.position] == PENDING], not merged,
                 [b for b in blocks if states[b.position] != FINAL], split)


def _run_phases(run: VolumeRun, ex, shared: tuple, settings: Settings, todo: _Todo, tracker: Tracker) -> Job[None]:
    plan, outputs = run.plan, run.outputs
    for z, _ in ex.run(context_task, todo.context, lambda z: (*shared, outputs, settings, plan.shape[1:], z)):
        tracker.add(CONTEXT_WEIGHT)
        yield tracker.report("context", f"context of slice {z + 1}/{plan.shape[0]}")
    for block, (slices, inference_s, task_s) in ex.run(block_task, todo.blocks,
                                                       lambda b: (*shared, outputs, settings, plan, b)):
        run.summary.blocks_run += 1
        run.summary.slices += slices
        tracker.add(slices, block=not settings.instances)
        report = tracker.report("blocks", f"block {tracker.blocks_done}/{len(plan)}", block.bounds)
        report.metrics |= {"inference_s": inference_s, "task_s": task_s}
        yield report
    if settings.instances:
        yield from _split_phase(run, ex, settings, todo.split, tracker)
        if todo.merge:
            yield from _merge_phase(run, ex, settings, tracker)
        yield from _relabel_phase(run, ex, todo.relabel, tracker)


def _split_phase(run: VolumeRun, ex, settings: Settings, blocks: list[Block], tracker: Tracker) -> Job[None]:
    plan, outputs = run.plan, run.outputs
    for block, _ in ex.run(split_task, blocks, lambda b: (outputs, settings, plan, b)):
        tracker.add(SPLIT_WEIGHT * block.voxels / (plan.shape[1] * plan.shape[2]))
        yield tracker.report("watershed", f"watershed of block {block.index + 1}/{len(plan)}", block.bounds)


def _merge_phase(run: VolumeRun, ex, settings: Settings, tracker: Tracker) -> Job[None]:
    plan, outputs = run.plan, _id_outputs(run.outputs)
    counts = read_state(outputs.counts).ravel().astype(np.int64)
    starts = offsets(counts)
    sizes = np.zeros(int(counts.sum()) + 1, np.int64)
    pairs = []
    shared_starts = ex.share(starts)
    for block, (found, edges) in ex.run(merge_task, plan.blocks(),
                                        lambda b: (outputs, settings, plan, b, shared_starts)):
        start = int(starts[block.index])
        sizes[start + 1: start + len(found)] = found[1:]
        pairs.append(edges)
        tracker.add(MERGE_WEIGHT)
        yield tracker.report("merge", f"merging faces of block {block.index + 1}/{len(plan)}")
    merged = merge(counts, pairs, sizes, settings.min_size)
    state = run.labels_group[STATE]
    lut = state.create_array("relabel", shape=merged.lut.shape, dtype=merged.lut.dtype,
                             chunks=(min(len(merged.lut), 1 << 20),), fill_value=0, overwrite=True)
    lut[...] = merged.lut
    if label_dtype(merged.objects) != outputs.labels.dtype:
        labels = run.labels_group
        old = labels["0"]
        labels.create_array("0", shape=old.shape, dtype=label_dtype(merged.objects), chunks=old.chunks,
                            fill_value=0, overwrite=True, attributes=dict(old.attrs),
                            **({"dimension_names": old.metadata.dimension_names}
                               if old.metadata.zarr_format == 3 else {}))
        run.outputs = _outputs(labels, run.prob_group)
    state.attrs["merged"] = {"objects": merged.objects, "dtype": str(merged.lut.dtype)}


def _relabel_phase(run: VolumeRun, ex, blocks: list[Block], tracker: Tracker) -> Job[None]:
    plan, outputs = run.plan, _id_outputs(run.outputs)
    state = run.labels_group[STATE]
    starts = offsets(read_state(outputs.counts).ravel())
    lut = state["relabel"]
    run.summary.objects = int(state.attrs["merged"]["objects"])
    for block, _ in ex.run(relabel_task, blocks, lambda b: (outputs, lut, b, int(starts[b.index]))):
        tracker.add(MERGE_WEIGHT, block=True)
        yield tracker.report("relabel", f"block {tracker.blocks_done}/{len(plan)}", block.bounds)


def _finish(run: VolumeRun) -> None:
    """Mark the outputs complete (only now), then drop the run's state."""
    extra = {"objects": run.summary.objects} if run.summary.objects is not None else {}
    for group in (run.labels_group, run.prob_group):
        if group is not None:
            record = record_of(group) or {}
            group.attrs["napari_alnet"] = record | {"complete": True} | extra
    del run.labels_group[STATE]
    run.summary.complete = True
    run.summary.dtype = str(run.labels_group["0"].dtype)


def _drive(run: VolumeRun, client, scheduler: str | None, placement: Placement) -> Job[VolumeSummary]:
    start = time.perf_counter()
    todo = _todo(run)
    summary = run.summary
    summary.blocks_resumed = len(run.plan) - len(todo.blocks)
    tracker = Tracker(total=0.0, blocks=len(run.plan))
    full = _Todo(list(range(run.plan.shape[0])) if run.plan.cuts_planes else [], run.plan.blocks(),
                 bool(run.settings.instances), run.plan.blocks() if run.settings.instances else [],
                 run.plan.blocks() if run.settings.watershed else [])
    tracker.total = full.work(run.plan)
    tracker.done = tracker.total - todo.work(run.plan)
    tracker.blocks_done = 0 if run.settings.instances else summary.blocks_resumed
    ex = None
    try:
        ex = start_executor(client, placement.workers, scheduler, run.settings.threads)
        summary.workers = ex.name + (f" ({placement.note})" if placement.note else "")
        if placement.note:
            logger.info("alnet volume run: %s", placement.note)
        shared = (ex.share(run.segmenter), ex.share(run.volume.reader))
        yield tracker.report("start", f"{len(run.plan)} blocks of {run.plan.block}, {summary.blocks_resumed} done"
                             + (f"; {placement.note}" if placement.note else ""))
        with disk_full_said(summary.labels):
            yield from _run_phases(run, ex, shared, run.settings, todo, tracker)
            _finish(run)
    except StopRequested:
        summary.stopped = True
    finally:
        if ex is not None:
            ex.close()
        release_writer(run.lock)
        summary.seconds = time.perf_counter() - start
    return summary


def segment_volume_job(model: Segmenter, source: Any, dest: str | Path | zarr.Group, *, client=None,
                       workers: int | None = None, scheduler: str | None = None, threads: int | None = None,
                       **options) -> Job[VolumeSummary]:
    """Segment a volume blockwise into OME-Zarr as a ``Job`` (yields ``Progress`` per block, returns a
    ``VolumeSummary``; a ``StopRequested`` thrown in stops after the current block, leaving a resumable output).

    ``source``: a path (OME-Zarr, Zarr, N5, TIFF), a ``Volume``, or a NumPy/dask/Zarr array; ``dest``: a path
    ending in .zarr (the labels image; probabilities in a sibling ``STEM_prob.zarr``), a folder (for
    ``STEM_labels.zarr`` / ``STEM_prob.zarr``), or a Zarr group. Options (see ``prepare_volume_run``): ``block``
    (Z, Y, X), ``probabilities``, ``prob_dtype`` ('uint8' or 'float16'), ``instances`` (None, '2d', '3d'),
    ``threshold``, ``min_size`` (instances), ``overwrite``, ``tile``, ``overlap``, ``tta``, ``batch_size``,
    ``whole_pixels`` (planes up to this many pixels run whole), ``device``, ``prob_dest``, ``watershed`` (split
    touching instances at distance-transform ridges, consistently across blocks; docs/volumes.md) and
    ``watershed_halo`` (its context per block, in voxels of the finest axis; default ``WATERSHED_HALO``).
    Where it runs: in-process (default), ``workers=N`` (a LocalCluster it starts and stops, unless workers would
    not add cores: ``choose_workers``; then in-process, said in ``VolumeSummary.workers``), ``scheduler`` (the
    address of a running Dask scheduler) or ``client``; ``threads``: torch threads per block task (default:
    torch's in-process, the cores / workers on a LocalCluster; a resumed run keeps the threads it started with).
    The checks (and creating or reopening the outputs) happen at once; ``VolumeError``/``ValueError`` here.
    """
    volume_arguments(dest=dest, prob_dest=options.get("prob_dest"), block_shape=options.get("block"),
                     tile_size=options.get("tile"), workers_count=workers, threads_count=threads,
                     halo=options.get("watershed_halo"))
    placement = place_run(client, workers, scheduler, threads)
    explicit = None if placement.note else threads  # declined workers: their threads per worker do not apply
    run = prepare_volume_run(model, source, dest, threads=explicit, default_threads=placement.default_threads,
                             **options)
    return _drive(run, client, scheduler, placement)


def segment_volume(model: Segmenter, source: Any, dest: str | Path | zarr.Group, **options) -> VolumeSummary:
    """``segment_volume_job`` run to its end (see there for the options)."""
    return run_job(segment_volume_job(model, source, dest, **options))
