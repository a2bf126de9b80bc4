"""The tasks of a volume run (module level: they run on Dask workers): context, block, split, merge, relabel."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import zarr

from ...io.volumes import get_region, put_region
from ..halo import PlaneContext, block_probabilities, halo_window, make_context, plane_context
from ..inference import probability_job
from ..instances3d import (
    FACE_AXES,
    block_sizes,
    core_ids,
    face_pairs,
    face_votes,
    ghost_plane,
    local_labels,
    object_mask,
    split_block,
    watershed_window,
)
from ..postprocess import semantic_labels
from ..progress import run_job
from ..segmenter import Segmenter
from ..tiling import choose_tile
from .executors import threads_per_task, usable_cores
from .plan import Block, BlockPlan
from .settings import Settings
from .stores import COMPUTED, FINAL, Outputs
from .strips import striped


@dataclass(frozen=True)
class Work:
    """What the tasks of one phase share (sent to each worker once): the output arrays, the settings and the plan;
    the model and the source's reader (the network phases); the first global id of each block (merge, relabel)
    and the merged lookup table (relabel)."""

    outputs: Outputs
    settings: Settings
    plan: BlockPlan
    segmenter: Segmenter | None = None
    reader: Any = None
    starts: np.ndarray | None = None
    lut: zarr.Array | None = None


def _set_threads(threads: int | None) -> None:
    """torch threads for this task: ``threads``, or on a Dask worker the cores divided among its task threads."""
    if threads is None:
        if "distributed" not in sys.modules:  # not on a Dask worker (importing it costs ~0.75 s per process)
            return
        try:
            from distributed import get_worker

            worker = get_worker()
        except (ImportError, ValueError):
            return
        threads = threads_per_task(usable_cores(), worker.state.nthreads)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def _put(array: zarr.Array, region: tuple[slice, slice, slice], data: np.ndarray) -> None:
    """Write a (z, y, x) block into a 3D array, or its only slice into a 2D one (in the order the array is stored
    in: an output keeps its source's declared axis order)."""
    put_region(array, region, data)


def _get(array: zarr.Array, region: tuple[slice, slice, slice]) -> np.ndarray:
    return get_region(array, region)


def context_task(work: Work, z: int) -> int:
    """Pass 1 for slice ``z``: its normalization bounds and pooled context, stored as one row."""
    settings, segmenter = work.settings, work.segmenter
    _set_threads(settings.threads)

    def read(ys: slice, xs: slice) -> np.ndarray:
        return work.reader.read((slice(z, z + 1), ys, xs))[0]

    ctx = make_context(segmenter, settings.tta)
    found = plane_context(ctx, segmenter.metadata, read, work.plan.shape[1:], tile=settings.context_tile,
                          overlap=settings.overlap, batch_size=settings.batch_size)
    work.outputs.context[z] = found.to_row()
    return z


def _whole_plane_probs(work: Work, block: Block) -> np.ndarray:
    settings = work.settings
    raw = work.reader.read(block.region)
    whole = choose_tile(work.segmenter.metadata.network_shape(raw.shape[1:3]), settings.tile) is None
    model = striped(work.segmenter) if whole else work.segmenter  # strips: the same bits, less memory traffic
    job = probability_job(model, raw, tile=settings.tile, overlap=settings.overlap,
                          batch_size=settings.batch_size, tta=settings.tta, rgb=settings.rgb)
    return run_job(job)


def _cut_plane_probs(work: Work, block: Block) -> np.ndarray:
    """Probabilities of a block that cuts YX planes: each slice in its halo window with that slice's context."""
    segmenter, settings = work.segmenter, work.settings
    zs, ys, xs = block.region
    plane = work.plan.shape[1:]
    window = tuple(slice(w.start, min(w.stop, n)) for w, n in zip(halo_window((ys, xs), plane), plane, strict=True))
    raw = work.reader.read((zs, *window))
    rows = work.outputs.context[zs]
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


def block_task(work: Work, block: Block) -> tuple[float, float, float]:
    """Segment one block and write it (labels or local ids, probabilities), then mark it computed; returns the
    slices it is worth (voxels / plane), the seconds of inference (reading included) and of the whole task."""
    outputs, settings, plan = work.outputs, work.settings, work.plan
    start = time.perf_counter()
    _set_threads(settings.threads)
    try:
        probs = _cut_plane_probs(work, block) if plan.cuts_planes else _whole_plane_probs(work, block)
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


def merge_task(work: Work, block: Block) -> tuple[np.ndarray, np.ndarray]:
    """One block's voxels per local id and the id pairs facing each other across its faces with the next blocks
    (in z, y and x for 3D instances; y and x for 2D)."""
    outputs, settings, plan, starts = work.outputs, work.settings, work.plan, work.starts
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


def split_task(work: Work, block: Block) -> int:
    """The watershed of one block in its window (the block plus ``watershed_halo``; the mask is where the block
    phase wrote local ids): the core's ids into ``split``, the planes beyond its inner faces into the ghosts, then
    mark it split."""
    outputs, settings, plan = work.outputs, work.settings, work.plan
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


def relabel_task(work: Work, block: Block) -> int:
    """Write one block's final ids (its local ids through the merged lookup table), then mark it final."""
    outputs = work.outputs
    local = _get(outputs.local, block.region)
    count = int(outputs.counts[block.position])
    start = int(work.starts[block.index])
    table = np.asarray(work.lut[start: start + count + 1]).copy()
    table[0] = 0
    _put(outputs.labels, block.region, table[local].astype(outputs.labels.dtype, copy=False))
    outputs.state[block.position] = FINAL
    return block.index
