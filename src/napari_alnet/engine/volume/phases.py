"""The phases of a volume run (context, blocks, watershed split, merge, relabel), what is left of them on a
resume, and their progress."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from ...io.volumes import record_of
from ..instances3d import label_dtype, merge, offsets
from ..progress import Job, Progress
from .plan import Block, BlockPlan
from .prepare import VolumeRun
from .stores import FINAL, PENDING, STATE, id_outputs, open_arrays, read_state
from .tasks import Work, block_task, context_task, merge_task, relabel_task, split_task

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


@dataclass
class Todo:
    """What is left: pass-1 slices, blocks to compute, whether to merge, blocks to relabel, blocks to split."""

    context: list[int]
    blocks: list[Block]
    merge: bool
    relabel: list[Block]
    split: list[Block] = field(default_factory=list)

    @classmethod
    def everything(cls, run: VolumeRun) -> Todo:
        """All of a run's work, as if nothing were done yet."""
        plan, settings = run.plan, run.settings
        return cls(list(range(plan.shape[0])) if plan.cuts_planes else [], plan.blocks(), bool(settings.instances),
                   plan.blocks() if settings.instances else [], plan.blocks() if settings.watershed else [])

    def work(self, plan: BlockPlan) -> float:
        plane = plan.shape[1] * plan.shape[2]
        return (CONTEXT_WEIGHT * len(self.context) + sum(b.voxels for b in self.blocks) / plane
                + MERGE_WEIGHT * len(plan) * self.merge + MERGE_WEIGHT * len(self.relabel)
                + SPLIT_WEIGHT * sum(b.voxels for b in self.split) / plane)


def todo_of(run: VolumeRun) -> Todo:
    blocks = run.plan.blocks()
    states = read_state(run.outputs.state)
    context = []
    if run.outputs.context is not None:
        rows = read_state(run.outputs.context)
        context = [z for z in range(len(rows)) if np.isnan(rows[z]).any()]
    if not run.settings.instances:
        return Todo(context, [b for b in blocks if states[b.position] == PENDING], False, [])
    merged = "merged" in run.labels_group[STATE].attrs
    split = []
    if run.outputs.split_state is not None and not merged:
        done = read_state(run.outputs.split_state)
        split = [b for b in blocks if not done[b.position]]
    return Todo(context, [b for b in blocks if states[b.position] == PENDING], not merged,
                 [b for b in blocks if states[b.position] != FINAL], split)


def run_phases(run: VolumeRun, ex, todo: Todo, tracker: Tracker) -> Job[None]:
    """Run what is left (``todo``) on the executor ``ex``, reporting progress to ``tracker``."""
    plan, settings = run.plan, run.settings
    network = ex.share(Work(run.outputs, settings, plan, segmenter=run.segmenter, reader=run.volume.reader))
    for z, _ in ex.run(context_task, network, todo.context):
        tracker.add(CONTEXT_WEIGHT)
        yield tracker.report("context", f"context of slice {z + 1}/{plan.shape[0]}")
    for block, (slices, inference_s, task_s) in ex.run(block_task, network, todo.blocks):
        run.summary.blocks_run += 1
        run.summary.slices += slices
        tracker.add(slices, block=not settings.instances)
        report = tracker.report("blocks", f"block {tracker.blocks_done}/{len(plan)}", block.bounds)
        report.metrics |= {"inference_s": inference_s, "task_s": task_s}
        yield report
    if settings.instances:
        yield from _split_phase(run, ex, todo.split, tracker)
        if todo.merge:
            yield from _merge_phase(run, ex, tracker)
        yield from _relabel_phase(run, ex, todo.relabel, tracker)


def _split_phase(run: VolumeRun, ex, blocks: list[Block], tracker: Tracker) -> Job[None]:
    plan = run.plan
    for block, _ in ex.run(split_task, ex.share(Work(run.outputs, run.settings, plan)), blocks):
        tracker.add(SPLIT_WEIGHT * block.voxels / (plan.shape[1] * plan.shape[2]))
        yield tracker.report("watershed", f"watershed of block {block.index + 1}/{len(plan)}", block.bounds)


def _merge_phase(run: VolumeRun, ex, tracker: Tracker) -> Job[None]:
    plan, outputs, settings = run.plan, id_outputs(run.outputs), run.settings
    counts = read_state(outputs.counts).ravel().astype(np.int64)
    starts = offsets(counts)
    sizes = np.zeros(int(counts.sum()) + 1, np.int64)
    pairs = []
    work = ex.share(Work(outputs, settings, plan, starts=starts))
    for block, (found, edges) in ex.run(merge_task, work, plan.blocks()):
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
        run.outputs = open_arrays(labels, run.prob_group)
    state.attrs["merged"] = {"objects": merged.objects, "dtype": str(merged.lut.dtype)}


def _relabel_phase(run: VolumeRun, ex, blocks: list[Block], tracker: Tracker) -> Job[None]:
    plan, outputs = run.plan, id_outputs(run.outputs)
    state = run.labels_group[STATE]
    starts = offsets(read_state(outputs.counts).ravel())
    work = ex.share(Work(outputs, run.settings, plan, starts=starts, lut=state["relabel"]))
    run.summary.objects = int(state.attrs["merged"]["objects"])
    for block, _ in ex.run(relabel_task, work, blocks):
        tracker.add(MERGE_WEIGHT, block=True)
        yield tracker.report("relabel", f"block {tracker.blocks_done}/{len(plan)}", block.bounds)


def finish(run: VolumeRun) -> None:
    """Mark the outputs complete (only now), then drop the run's state."""
    extra = {"objects": run.summary.objects} if run.summary.objects is not None else {}
    for group in (run.labels_group, run.prob_group):
        if group is not None:
            record = record_of(group) or {}
            group.attrs["napari_alnet"] = record | {"complete": True} | extra
    del run.labels_group[STATE]
    run.summary.complete = True
    run.summary.dtype = str(run.labels_group["0"].dtype)
