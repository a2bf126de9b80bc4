"""Batch segmentation of image files and TIFF stacks into label (and probability) TIFFs, streamed slice by slice.

Used by ``alnet segment`` and the Batch widget. For each input ``STEM.ext`` it writes ``OUTDIR/STEM_labels.tif``
(uint8 semantic mask, or int32 instance ids with ``instances``) and, with ``probabilities``, ``OUTDIR/STEM_prob.tif``
(float32). Inputs are never overwritten; existing outputs are kept unless ``overwrite``; outputs appear only
complete (temporary file + rename). A file that cannot be segmented is reported and the batch goes on.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..io.images import list_images
from ..io.stack_reader import SliceReader, count_slices, open_slices
from ..io.stack_writer import TiffStackWriter
from .inference import check_pixels, probability_job
from .postprocess import instance_labels, offset_ids, semantic_labels
from .progress import Job, Progress, StopRequested, relay
from .segmenter import Segmenter, as_segmenter
from .tiling import check_tile

#: Slices read and segmented together.
SLICES_PER_BATCH = 4


@dataclass
class BatchSummary:
    """What a batch did: files ``written``, existing outputs ``skipped`` (kept), ``failures`` (input, one-line
    message), slices segmented, wall time, whether it was ``stopped`` early and the device used."""

    written: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    failures: list[tuple[Path, str]] = field(default_factory=list)
    slices: int = 0
    seconds: float = 0.0
    stopped: bool = False
    device: str = ""

    @property
    def ok(self) -> bool:
        return not self.failures and not self.stopped


def output_paths(path: Path, outdir: Path, probabilities: bool) -> dict[str, Path]:
    """``{"labels": OUTDIR/STEM_labels.tif[, "prob": OUTDIR/STEM_prob.tif]}`` for an input file."""
    paths = {"labels": outdir / f"{path.stem}_labels.tif"}
    if probabilities:
        paths["prob"] = outdir / f"{path.stem}_prob.tif"
    return paths


def expand_inputs(inputs: Iterable[str | Path]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Image files from files and folders (folders: their image files, sorted), and the inputs that are neither."""
    files, failures = [], []
    for item in inputs:
        item = Path(item)
        if item.is_dir():
            found = list_images(item)
            if not found:
                failures.append((item, f"{item}: folder holds no .tif/.tiff/.png/.jpg/.jpeg images"))
            files.extend(found)
        elif item.is_file():
            files.append(item)
        else:
            failures.append((item, f"{item}: no such file or folder"))
    return files, failures


@dataclass(frozen=True)
class Outputs:
    """How each file is segmented: threshold, instance labels or not, and which objects they label."""

    tile: int | None
    threshold: float
    instances: bool
    objects: str


def segment_files_job(inputs: list[Path], outdir: Path, model: Segmenter, *, tile: int | None = None,
                      threshold: float | None = None, probabilities: bool = False, instances: bool = False,
                      overwrite: bool = False, device: str | torch.device | None = None) -> Job[BatchSummary]:
    """Segment every input (files or folders) into ``outdir``; yields ``Progress`` in slices, returns the summary.

    ``threshold``: default the model's; ``instances``: label connected objects per the model's ``objects``
    metadata instead of the semantic mask. ``device``: ``None`` runs where ``model`` is (a copy runs elsewhere).
    A ``StopRequested`` thrown in stops after cleaning up the file in
    progress and returns the summary with ``stopped=True``. Failures are also reported as they happen, in a
    ``Progress`` whose ``metrics["failure"]`` is ``(path, message)``.
    """
    start = time.perf_counter()
    if tile is not None:
        check_tile(tile)
    outdir = Path(outdir)
    files, failures = expand_inputs(inputs)
    summary = BatchSummary(failures=list(failures))
    segmenter = as_segmenter(model, device)
    summary.device = str(segmenter.device)
    settings = Outputs(tile, segmenter.threshold if threshold is None else float(threshold), instances,
                       segmenter.metadata.objects)
    sizes = [count_slices(f) for f in files]
    total, done = sum(sizes), 0
    inputs_resolved = {f.resolve() for f in files}
    claimed: dict[Path, Path] = {}
    try:
        for path, problem in failures:
            yield Progress(0, total, f"failed: {path.name}", {"failure": (path, problem)})
        for path, size in zip(files, sizes, strict=True):
            targets, problem = _targets(path, outdir, probabilities, overwrite, inputs_resolved, claimed, summary)
            if problem is None and targets:
                try:
                    with open_slices(path) as reader:
                        done = yield from _segment(reader, targets, segmenter, settings, done=done, total=total,
                                                   summary=summary)
                except StopRequested:
                    raise
                except Exception as exc:  # one file's failure must not end the batch
                    problem = one_line(exc, path)
            if problem is not None:
                summary.failures.append((path, problem))
                done += size
                yield Progress(done, total, f"failed: {path.name}", {"failure": (path, problem)})
            elif not targets:
                done += size
                yield Progress(done, total, f"skipped {path.name}: outputs exist")
    except StopRequested:
        summary.stopped = True
    summary.seconds = time.perf_counter() - start
    return summary


def one_line(exc: BaseException, path: Path) -> str:
    """An exception as one line naming ``path`` (unexpected exception types are named too)."""
    text = " ".join(str(exc).split())
    if not isinstance(exc, (ValueError, OSError)):
        text = f"{type(exc).__name__}: {text}"
    return text if str(path) in text else f"{path}: {text}"


def _targets(path: Path, outdir: Path, probabilities: bool, overwrite: bool, inputs: set[Path],
             claimed: dict[Path, Path], summary: BatchSummary) -> tuple[dict[str, Path], str | None]:
    """The outputs to write for ``path`` (existing ones kept unless ``overwrite``), or a reason to refuse."""
    targets = {}
    for kind, out in output_paths(path, outdir, probabilities).items():
        resolved = out.resolve()
        if resolved in inputs:
            return {}, f"{path}: its output {out} is one of the inputs; refusing to overwrite an input"
        if resolved in claimed:
            return {}, f"{path}: its output {out} is also the output of {claimed[resolved]} (same file stem)"
        claimed[resolved] = path
        if out.exists() and not overwrite:
            summary.skipped.append(out)
            continue
        targets[kind] = out
    return targets, None


def _segment(reader: SliceReader, targets: dict[str, Path], segmenter: Segmenter, settings: Outputs, *, done: int,
             total: int, summary: BatchSummary) -> Job[int]:
    """Stream one file through the network into its target files; returns the updated slice count."""
    writers: dict[str, TiffStackWriter] = {}
    try:
        for kind, out in targets.items():
            dtype = np.float32 if kind == "prob" else (np.int32 if settings.instances else np.uint8)
            writers[kind] = TiffStackWriter(out, reader.shape, dtype, reader.pixel_size, compress=kind != "prob")
        next_id = 0
        for z0 in range(0, len(reader), SLICES_PER_BATCH):
            planes = np.stack([_checked(reader, z) for z in range(z0, min(z0 + SLICES_PER_BATCH, len(reader)))])
            job = probability_job(segmenter, planes, tile=settings.tile, batch_size=SLICES_PER_BATCH, rgb=reader.rgb)
            message = f"{reader.path.name}: slice {z0 + 1}/{len(reader)}"
            probs = yield from relay(job, lambda _p, m=message, d=done: Progress(d, total, m))
            if probs is None:
                raise StopRequested
            for prob in probs:
                if "labels" in writers:
                    next_id = _write_labels(writers["labels"], prob, settings, next_id)
                if "prob" in writers:
                    writers["prob"].write(prob)
            done += len(planes)
            summary.slices += len(planes)
            yield Progress(done, total, f"{reader.path.name}: slice {z0 + len(planes)}/{len(reader)}")
        for kind in list(writers):
            summary.written.append(writers.pop(kind).finish())
        return done
    finally:
        for writer in writers.values():
            writer.abort()


def _write_labels(writer: TiffStackWriter, prob: np.ndarray, settings: Outputs, next_id: int) -> int:
    """Write one slice's labels; returns the last instance id used so far."""
    if settings.instances:
        ids, next_id = offset_ids(instance_labels(prob, settings.threshold, settings.objects), next_id)
        writer.write(ids)
    else:
        writer.write(semantic_labels(prob, settings.threshold))
    return next_id


def _checked(reader: SliceReader, z: int) -> np.ndarray:
    """Slice ``z``, with NaN/inf or a non-numeric dtype reported for that slice."""
    try:
        return check_pixels(reader[z])
    except ValueError as exc:
        raise ValueError(f"slice {z}: {exc}" if reader.is_stack else str(exc)) from exc
