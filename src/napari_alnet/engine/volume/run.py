"""A volume run as a ``Job``: ``segment_volume_job`` / ``segment_volume``."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import zarr

from ...io.atomic import release_writer
from ..arguments import volume_arguments
from ..progress import Job, StopRequested, run_job
from ..segmenter import Segmenter
from .executors import Placement, place_run, start_executor
from .phases import Tracker, _finish, _run_phases, _Todo, _todo
from .prepare import VolumeRun, VolumeSummary, prepare_volume_run
from .stores import disk_full_said

logger = logging.getLogger(__name__)

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
