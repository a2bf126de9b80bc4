"""A volume run as a ``Job``: ``segment_volume_job`` / ``segment_volume``."""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import zarr

from ...io.atomic import release_writer
from ..arguments import volume_arguments
from ..progress import Job, StopRequested, run_job
from ..segmenter import Segmenter
from ..tiling import WHOLE_IMAGE_PIXELS
from .executors import Placement, place_run, start_executor
from .memory import reused_memory
from .phases import Todo, Tracker, finish, run_phases, todo_of
from .prepare import VolumeRun, VolumeSummary, prepare_volume_run
from .settings import Settings
from .stores import disk_full_said

logger = logging.getLogger(__name__)


def _drive(run: VolumeRun, client, scheduler: str | None, placement: Placement) -> Job[VolumeSummary]:
    start = time.perf_counter()
    todo = todo_of(run)
    summary = run.summary
    summary.blocks_resumed = len(run.plan) - len(todo.blocks)
    tracker = Tracker(total=Todo.everything(run).work(run.plan), blocks=len(run.plan))
    tracker.done = tracker.total - todo.work(run.plan)
    tracker.blocks_done = 0 if run.settings.instances else summary.blocks_resumed
    ex = None
    try:
        ex = start_executor(client, placement.workers, scheduler, run.settings.threads)
        summary.workers = ex.name + (f" ({placement.note})" if placement.note else "")
        if placement.note:
            logger.info("alnet volume run: %s", placement.note)
        yield tracker.report("start", f"{len(run.plan)} blocks of {run.plan.block}, {summary.blocks_resumed} done"
                             + (f"; {placement.note}" if placement.note else ""))
        with disk_full_said(summary.labels), reused_memory():
            yield from run_phases(run, ex, todo, tracker)
            finish(run)
    except StopRequested:
        summary.stopped = True
    finally:
        if ex is not None:
            ex.close()
        release_writer(run.lock)
        summary.seconds = time.perf_counter() - start
    return summary


def segment_volume_job(model: Segmenter, source: Any, dest: str | Path | zarr.Group, settings: Settings | None = None,
                       *, block: tuple[int, int, int] | None = None, whole_pixels: int = WHOLE_IMAGE_PIXELS,
                       overwrite: bool = False, prob_dest: str | Path | zarr.Group | None = None, device=None,
                       client=None, workers: int | None = None, scheduler: str | None = None,
                       **options: Any) -> Job[VolumeSummary]:
    """Segment a volume blockwise into OME-Zarr as a ``Job`` (yields ``Progress`` per block, returns a
    ``VolumeSummary``; a ``StopRequested`` thrown in stops after the current block, leaving a resumable output).

    ``source``: a path (OME-Zarr, Zarr, N5, TIFF), a ``Volume``, or a NumPy/dask/Zarr array; ``dest``: a path
    ending in .zarr (the labels image; probabilities in a sibling ``STEM_prob.zarr``, or ``prob_dest``), a folder
    (for ``STEM_labels.zarr`` / ``STEM_prob.zarr``), or a Zarr group. ``settings``: what every block computes
    (``Settings``; or give its fields as keyword ``options``, e.g. ``instances="3d", probabilities=True,
    prob_dtype="float16", watershed=True``: ``Settings.of``). ``block``: the (Z, Y, X) block shape (default:
    automatic; planes up to ``whole_pixels`` pixels run whole); ``overwrite``: replace an output that is not this
    run's to resume; ``device``: where the model runs. Where the blocks run: in-process (default), ``workers=N``
    (a LocalCluster it starts and stops, unless workers would not add cores: ``choose_workers``; then in-process,
    said in ``VolumeSummary.workers``), ``scheduler`` (the address of a running Dask scheduler) or ``client``;
    ``settings.threads``: torch threads per block task (default: torch's in-process, the cores / workers on a
    LocalCluster; a resumed run keeps the threads it started with). The checks (and creating or reopening the
    outputs) happen at once; ``VolumeError``/``ValueError`` here.
    """
    if settings is not None and options:
        raise TypeError(f"give the settings or their fields ({', '.join(sorted(options))}), not both")
    volume_arguments(dest=dest, prob_dest=prob_dest, block_shape=block, tile_size=options.get("tile"),
                     workers_count=workers, threads_count=options.get("threads"),
                     halo=options.get("watershed_halo"))
    settings = settings if settings is not None else Settings.of(**options)
    placement = place_run(client, workers, scheduler, settings.threads)
    if placement.note:  # declined workers: their threads per worker do not apply
        settings = replace(settings, threads=None)
    run = prepare_volume_run(model, source, dest, settings, block=block, whole_pixels=whole_pixels,
                             overwrite=overwrite, prob_dest=prob_dest, device=device,
                             default_threads=placement.default_threads)
    return _drive(run, client, scheduler, placement)


def segment_volume(model: Segmenter, source: Any, dest: str | Path | zarr.Group, settings: Settings | None = None,
                   **options: Any) -> VolumeSummary:
    """``segment_volume_job`` run to its end (see there for the options)."""
    return run_job(segment_volume_job(model, source, dest, settings, **options))
