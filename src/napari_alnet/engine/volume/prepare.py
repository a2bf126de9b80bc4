"""Preparing a volume run: every check, then the outputs created (or reopened, to resume)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import zarr

from ...io.atomic import release_writer
from ...io.volumes import Volume, VolumeError
from ..halo import context_width, make_context
from ..segmenter import Segmenter, as_segmenter
from ..tiling import WHOLE_IMAGE_PIXELS
from .plan import BlockPlan, can_cut, plan_volume, watershed_block
from .records import recorded_threads, run_record
from .settings import Settings
from .stores import (
    STATE,
    Outputs,
    Targets,
    check_not_source,
    claim,
    claim_output_writer,
    created,
    new_labels,
    new_probabilities,
    open_arrays,
    output_targets,
    store_path,
)


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


def prepare_volume_run(model: Segmenter, source: Any, dest: str | Path | zarr.Group, settings: Settings | None = None,
                       *, block: tuple[int, int, int] | None = None, whole_pixels: int = WHOLE_IMAGE_PIXELS,
                       overwrite: bool = False, prob_dest: str | Path | zarr.Group | None = None, device=None,
                       default_threads: int | None = None) -> VolumeRun:
    """Check everything and create (or reopen, to resume) the outputs; see ``segment_volume_job``. Without
    ``settings.threads``, a resumed run keeps the threads it was started with, a new one takes
    ``default_threads`` (``None``: each Dask worker decides)."""
    segmenter = as_segmenter(model, device)
    volume, plan = plan_volume(segmenter, source, block=block, whole_pixels=whole_pixels)
    settings = (settings or Settings()).resolved(segmenter, volume)
    targets = output_targets(volume, dest, settings.probabilities is not None, prob_dest)
    for target in (targets.labels, targets.probabilities):  # before anything is written, the lock included
        check_not_source(target if isinstance(target, (Path, type(None))) else store_path(target), volume)
    if settings.threads is None:
        threads = default_threads if overwrite else recorded_threads(targets.labels, default_threads)
        settings = replace(settings, threads=threads)
    if settings.watershed and block is None:  # memory is set by the watershed's window, not by the network's block
        chosen = watershed_block(plan, settings.watershed_halo, can_cut=can_cut(segmenter.metadata, volume.shape))
        volume, plan = plan_volume(segmenter, volume, block=chosen, whole_pixels=whole_pixels)
    record = run_record(segmenter, volume, plan, settings)
    lock = claim_output_writer(targets.labels)
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
    return VolumeRun(segmenter, volume, plan, settings, labels, prob, open_arrays(labels, prob), summary, lock)


def _open_outputs(segmenter: Segmenter, volume: Volume, plan: BlockPlan, settings: Settings, record: dict,
                  targets: Targets, overwrite: bool) -> tuple[zarr.Group, zarr.Group | None]:
    """The labels and probability groups: reopened to resume, or created (cleared first with ``overwrite``)."""
    labels = claim(targets.labels, record, overwrite, volume)
    prob = claim(targets.probabilities, record, overwrite, volume) if targets.probabilities is not None else None
    if labels is not None and STATE not in labels:
        raise VolumeError(f"{targets.labels}: its run record is incomplete but its block states are missing; "
                          "--overwrite starts it anew")
    width = context_width(make_context(segmenter, settings.tta)) if plan.cuts_planes else 0
    if labels is None:
        labels = created(targets.labels, lambda: new_labels(targets.labels, volume, plan, settings, record, width))
    if targets.probabilities is not None and prob is None:
        prob = created(targets.probabilities,
                       lambda: new_probabilities(targets.probabilities, volume, plan, settings, record))
    return labels, prob
