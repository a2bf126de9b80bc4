"""Batch segmentation of image files and TIFF stacks into label (and probability) TIFFs, streamed slice by slice.

Used by ``alnet segment`` and the Batch widget. For each input ``STEM.ext`` it writes ``OUTDIR/STEM_labels.tif``
(uint8 semantic mask), with ``instances`` also ``OUTDIR/STEM_instances.tif`` (int32 object ids) and, with
``probabilities``, ``OUTDIR/STEM_prob.tif`` (float32). Inputs are never overwritten; existing outputs are kept
unless ``overwrite``; outputs appear only complete (temporary file + rename). A file that cannot be segmented is
reported and the batch goes on.

Stacks are pipelined where a core is left to it: when torch runs on fewer threads than there are cores, a reader
thread decodes, checks and normalizes the next batch of slices while the network runs this one, and a writer thread
thresholds (or labels instances) and hands the previous batch to the TIFF writers; every hand-over is a bounded
queue of two batches, so memory stays flat in stack depth. When torch has every core (the default), that work runs
in the job's thread between forward passes: extra Python threads would take the GIL and the cores from torch's
threads, measured 20 % slower end to end on two cores (docs/performance.md). The TIFF writers always compress in
their own threads. Each output records what made it (model, device, precision, threshold) in its TIFF metadata
(``io.stack_writer.recorded_info``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import metadata as package_metadata
from pathlib import Path

import numpy as np
import torch

from ..io.images import list_images
from ..io.stack_reader import SliceReader, count_slices, open_slices
from ..io.stack_writer import MappedTiff, NotContiguous, TiffStackWriter, recorded_info
from .arguments import output_folder
from .arguments import tile as tile_argument
from .inference import Prepared, check_pixels, default_batch, prepare_whole, prepared_probabilities, probability_job
from .pipeline import Drain, Prefetch
from .postprocess import instance_labels, offset_ids, semantic_labels
from .progress import Job, Progress, StopRequested, relay
from .segmenter import Segmenter, as_segmenter
from .tiling import check_tile, choose_tile

#: Batches the reader thread may be ahead of the network, and the writer thread behind it; 0: no reader/writer
#: threads (all in the job's thread); ``None``: ``pipeline_depth()`` decides (benchmarks/stack.py --modes).
QUEUE_DEPTH: int | None = None


def pipeline_depth() -> int:
    """``QUEUE_DEPTH``, or where it is ``None``: 2 when torch leaves a core free (fewer threads than cores), else 0."""
    if QUEUE_DEPTH is not None:
        return QUEUE_DEPTH
    return 2 if torch.get_num_threads() < (os.cpu_count() or 1) else 0


@dataclass
class BatchSummary:
    """What a batch did: files ``written``, existing outputs ``skipped`` (kept), ``failures`` (input, one-line
    message), slices segmented (``slices``; those of inputs whose outputs all existed: ``slices_skipped``), wall
    time, whether it was ``stopped`` early and the device used."""

    written: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    failures: list[tuple[Path, str]] = field(default_factory=list)
    slices: int = 0
    slices_skipped: int = 0
    seconds: float = 0.0
    stopped: bool = False
    device: str = ""
    #: The precision the network ran in (``fp32``, ``bf16``, ``fp16``).
    precision: str = ""

    @property
    def ok(self) -> bool:
        return not self.failures and not self.stopped


def output_paths(path: Path, outdir: Path, probabilities: bool, instances: bool = False) -> dict[str, Path]:
    """``{"labels": OUTDIR/STEM_labels.tif[, "instances": OUTDIR/STEM_instances.tif][, "prob":
    OUTDIR/STEM_prob.tif]}`` for an input file."""
    paths = {"labels": outdir / f"{path.stem}_labels.tif"}
    if instances:
        paths["instances"] = outdir / f"{path.stem}_instances.tif"
    if probabilities:
        paths["prob"] = outdir / f"{path.stem}_prob.tif"
    return paths


def earlier_outputs(found: list[Path]) -> set[Path]:
    """The files of a folder listing that this command wrote from another file in it: at that file's
    ``output_paths`` and recording napari-alnet as their maker. A rerun with the output folder = the input folder
    does not segment them; any other file stays an input (and is never written over)."""
    named = {out for f in found for out in output_paths(f, f.parent, True, True).values()}
    return {f for f in found if f in named and _made_here(f)}


def _made_here(path: Path) -> bool:
    try:
        return str(recorded_info(path).get("software", "")).startswith("napari-alnet")
    except Exception:  # unreadable: not one of ours; reading it as an input will say what is wrong
        return False


def expand_inputs(inputs: Iterable[str | Path]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Image files from files and folders (folders: their image files, sorted, without ``earlier_outputs``), and
    the inputs that are neither."""
    files, failures = [], []
    for item in inputs:
        item = Path(item)
        if item.is_dir():
            found = list_images(item)
            if not found:
                failures.append((item, f"{item}: folder holds no .tif/.tiff/.png/.jpg/.jpeg images"))
            outputs = earlier_outputs(found)
            files.extend(f for f in found if f not in outputs)
        elif item.is_file():
            files.append(item)
        else:
            failures.append((item, f"{item}: no such file or folder"))
    return files, failures


@dataclass(frozen=True)
class Outputs:
    """How each file is segmented: threshold, instance labels or not, which objects they label, slices per forward
    pass, what is recorded in each output's metadata (``info``), and whether instances are split by a watershed."""

    tile: int | None
    threshold: float
    instances: bool
    objects: str
    batch: int = 1
    info: dict = field(default_factory=dict)
    watershed: bool = False

    def info_for(self, kind: str) -> dict:
        """What an output of ``kind`` (``labels``/``prob``) records about how it was made."""
        output = {"prob": "probabilities", "instances": "instances"}.get(kind, "labels")
        return self.info | {"output": output} | ({"watershed": True} if output == "instances" and self.watershed
                                                 else {})


def provenance(segmenter: Segmenter, threshold: float) -> dict:
    """What made an output: software, model, device, precision (and what was asked for), threshold."""
    try:
        version = package_metadata.version("napari-alnet")
    except package_metadata.PackageNotFoundError:
        version = "unknown"
    return {"software": f"napari-alnet {version}", "model": segmenter.source, "modality": segmenter.metadata.modality,
            "device": str(segmenter.device), "precision": segmenter.precision,
            "precision_requested": segmenter.requested, "threshold": threshold}


def segment_files_job(inputs: list[Path], outdir: Path, model: Segmenter, *, tile: int | None = None,
                      threshold: float | None = None, probabilities: bool = False, instances: bool = False,
                      overwrite: bool = False, device: str | torch.device | None = None, axes: str | None = None,
                      series: int | None = None, watershed: bool = False) -> Job[BatchSummary]:
    """Segment every input (files or folders) into ``outdir``; yields ``Progress`` in slices, returns the summary.

    ``axes``/``series``: how every TIFF input's axes read and which series of a multi-series TIFF is segmented
    (``stack_reader.open_slices``). Files in an input folder that are outputs of another file there
    (``earlier_outputs``) are not inputs.

    ``threshold``: default the model's; ``instances``: label connected objects per the model's ``objects``
    metadata instead of the semantic mask; ``watershed``: split them per slice (``postprocess.split_objects``).
    ``device``: ``None`` runs where ``model`` is (a copy runs elsewhere). A ``StopRequested`` thrown in stops after
    cleaning up the file in progress and returns the summary with ``stopped=True``. Failures are also reported as
    they happen, in a ``Progress`` whose ``metrics["failure"]`` is ``(path, message)``.
    """
    start = time.perf_counter()
    if tile is not None:
        check_tile(tile_argument(tile, "tile"))
    if watershed and not instances:
        raise ValueError("the watershed splits instances: give instances=True with it")
    outdir = output_folder(outdir, "outdir")
    files, failures = expand_inputs(inputs)
    summary = BatchSummary(failures=list(failures))
    segmenter = as_segmenter(model, device)
    summary.device, summary.precision = str(segmenter.device), segmenter.precision
    cut = segmenter.threshold if threshold is None else float(threshold)
    # one forward pass per batch, as many slices as ``Segmenter.predict`` puts in one (``inference.DEFAULT_BATCH``),
    # so a stack streamed to disk gets the very probabilities of the in-memory prediction
    settings = Outputs(tile, cut, instances, segmenter.metadata.objects, default_batch(segmenter.precision),
                       provenance(segmenter, cut), watershed=bool(watershed))
    sizes = [count_slices(f, axes=axes, series=series) for f in files]
    try:
        yield from _run_files(files, sizes, failures, outdir, segmenter, settings, summary,
                              kinds=(probabilities, instances), overwrite=overwrite, axes=axes, series=series)
    except StopRequested:
        summary.stopped = True
    summary.seconds = time.perf_counter() - start
    return summary


def _progress(done: int, total: int, message: str, summary: BatchSummary, **metrics) -> Progress:
    """A report of ``done`` slices; ``skipped``: those not segmented in this run (outputs kept, inputs failed)."""
    return Progress(done, total, message, {"skipped": done - summary.slices, **metrics})


def _run_files(files: list[Path], sizes: list[int], failures: list[tuple[Path, str]], outdir: Path,
               segmenter: Segmenter, settings: Outputs, summary: BatchSummary, *, kinds: tuple[bool, bool],
               overwrite: bool, axes: str | None, series: int | None) -> Job[None]:
    """Segment each file in turn into its targets; a file's failure is reported and the batch goes on."""
    total, done = sum(sizes), 0
    inputs_resolved = {f.resolve() for f in files}
    claimed: dict[Path, Path] = {}
    for path, problem in failures:
        yield _progress(0, total, f"failed: {path.name}", summary, failure=(path, problem))
    for path, size in zip(files, sizes, strict=True):
        targets, problem = _targets(path, outdir, kinds, overwrite, inputs_resolved, claimed, summary)
        if problem is None and targets:
            try:
                with open_slices(path, axes=axes, series=series) as reader:
                    done = yield from _segment(reader, targets, segmenter, settings, done=done, total=total,
                                               summary=summary, overwrite=overwrite)
            except StopRequested:
                raise
            except Exception as exc:  # one file's failure must not end the batch
                problem = one_line(exc, path)
        if problem is not None:
            summary.failures.append((path, problem))
            done += size
            yield _progress(done, total, f"failed: {path.name}", summary, failure=(path, problem))
        elif not targets:
            done += size
            summary.slices_skipped += size
            yield _progress(done, total, f"skipped {path.name}: outputs exist", summary)


def one_line(exc: BaseException, path: Path) -> str:
    """An exception as one line naming ``path`` (unexpected exception types are named too)."""
    text = " ".join(str(exc).split())
    if not isinstance(exc, (ValueError, OSError)):
        text = f"{type(exc).__name__}: {text}"
    return text if str(path) in text else f"{path}: {text}"


def _targets(path: Path, outdir: Path, kinds: tuple[bool, bool], overwrite: bool, inputs: set[Path],
             claimed: dict[Path, Path], summary: BatchSummary) -> tuple[dict[str, Path], str | None]:
    """The outputs to write for ``path`` (existing ones kept unless ``overwrite``), or a reason to refuse;
    ``kinds``: (probabilities, instances)."""
    targets = {}
    for kind, out in output_paths(path, outdir, *kinds).items():
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
             total: int, summary: BatchSummary, overwrite: bool = False) -> Job[int]:
    """Stream one file through the network into its target files; returns the updated slice count. Without
    ``overwrite`` a target that another run wrote meanwhile is kept (``FileExistsError`` saying so, see
    ``io.atomic.publish``), never replaced.

    Reading runs ahead in a ``Prefetch`` thread, thresholding and writing behind in a ``Drain`` thread; a file
    whose planes run in tiles goes through ``_segment_tiled`` instead.
    """
    if choose_tile(segmenter.metadata.network_shape(reader.shape[-2:]), settings.tile) is not None:
        return (yield from _segment_tiled(reader, targets, segmenter, settings, done=done, total=total,
                                          summary=summary, overwrite=overwrite))
    writers: dict[str, TiffStackWriter] = {}
    starts = range(0, len(reader), settings.batch)
    prefetch = drain = None
    try:
        for kind, out in targets.items():
            writers[kind] = _writer(kind, out, reader, settings)
        depth = pipeline_depth()
        drain = Drain(_SliceWriter(writers, settings).write, depth, name=f"write {reader.path.name}")
        prefetch = Prefetch(lambda z0: _read_batch(reader, segmenter, settings, z0), starts, depth,
                            name=f"read {reader.path.name}")
        for z0, (planes, prepared) in zip(starts, prefetch, strict=True):
            message = f"{reader.path.name}: slice {z0 + len(planes)}/{len(reader)}"
            probs = yield from _probabilities(segmenter, settings, planes, prepared, reader.rgb,
                                              lambda _p, m=message, d=done: _progress(d, total, m, summary))
            drain.put(probs)
            done += len(planes)
            summary.slices += len(planes)
            yield _progress(done, total, message, summary)
        drain.finish()
        for kind in list(writers):
            summary.written.append(writers.pop(kind).finish(overwrite=overwrite))
        return done
    finally:
        for stage in (prefetch, drain):
            if stage is not None:
                stage.close()
        for writer in writers.values():
            writer.abort()


def _writer(kind: str, out: Path, reader: SliceReader, settings: Outputs) -> TiffStackWriter:
    dtype = {"prob": np.float32, "instances": np.int32}.get(kind, np.uint8)
    return TiffStackWriter(out, reader.shape, dtype, reader.pixel_size, compress=kind != "prob",
                           info=settings.info_for(kind))


def _segment_tiled(reader: SliceReader, targets: dict[str, Path], segmenter: Segmenter, settings: Outputs, *,
                   done: int, total: int, summary: BatchSummary, overwrite: bool = False) -> Job[int]:
    """``_segment`` of a file whose planes run in tiles, one plane at a time and never held whole in float32: each
    plane's probabilities stream tile by tile into a memory-mapped file (``MappedTiff``) — the probability output
    itself (an uncompressed float32 TIFF, published like the others), else a scratch file beside the outputs,
    removed after — whose written pages are released after every batch of tiles; masks and instances are made
    from it (``_SliceWriter.write_plane``)."""
    writers: dict[str, TiffStackWriter] = {}
    mapped = scratch = None
    try:
        for kind, out in targets.items():
            if kind == "prob":
                mapped = _mapped_output(out, reader, settings)
            if kind != "prob" or mapped is None:
                writers[kind] = _writer(kind, out, reader, settings)
        store = mapped or MappedTiff(next(iter(targets.values())), reader.shape[-2:], np.float32)
        scratch = None if mapped else store
        slicer = _SliceWriter(writers, settings)
        for z in range(len(reader)):
            message = f"{reader.path.name}: slice {z + 1}/{len(reader)}"
            job = probability_job(segmenter, _checked(reader, z), tile=settings.tile, batch_size=settings.batch,
                                  rgb=reader.rgb, out=store.plane(0 if scratch else z))
            probs = yield from relay(job, lambda _p, m=message, d=done: _released(store, d, total, m, summary))
            if probs is None:
                raise StopRequested
            del probs
            store.release()
            plane = 0 if scratch else z
            slicer.write_plane(lambda y0, y1, k=plane: store.band(k, y0, y1), reader.shape[-2])
            done += 1
            summary.slices += 1
            yield _progress(done, total, message, summary)
        for kind in list(writers):
            summary.written.append(writers.pop(kind).finish(overwrite=overwrite))
        if mapped is not None:
            summary.written.append(mapped.finish(overwrite=overwrite))
        return done
    finally:
        for writer in (*writers.values(), mapped, scratch):
            if writer is not None:
                writer.abort()


def _mapped_output(out: Path, reader: SliceReader, settings: Outputs) -> MappedTiff | None:
    """The probability output as a ``MappedTiff``; ``None`` where it cannot be one (a multi-page BigTIFF)."""
    try:
        return MappedTiff(out, reader.shape, np.float32, reader.pixel_size, info=settings.info_for("prob"))
    except NotContiguous:
        return None


def _released(store: MappedTiff, done: int, total: int, message: str, summary: BatchSummary) -> Progress:
    """A batch of tiles is written: drop its pages from memory, and report."""
    store.release()
    return _progress(done, total, message, summary)


def _read_batch(reader: SliceReader, segmenter: Segmenter, settings: Outputs,
                z0: int) -> tuple[np.ndarray, Prepared | None]:
    """Slices ``z0 ..`` (one batch) read and checked, and their network input where it can be prepared here."""
    planes = np.stack([_checked(reader, z) for z in range(z0, min(z0 + settings.batch, len(reader)))])
    return planes, prepare_whole(segmenter, planes, tile=settings.tile, rgb=reader.rgb)


def _probabilities(segmenter: Segmenter, settings: Outputs, planes: np.ndarray, prepared: Prepared | None,
                   rgb: bool, report) -> Job[np.ndarray]:
    """(N, Y, X) probabilities of one batch: one forward pass of the prepared input, else ``probability_job``."""
    if prepared is not None:
        return prepared_probabilities(segmenter, prepared)
    job = probability_job(segmenter, planes, tile=settings.tile, batch_size=settings.batch, rgb=rgb)
    probs = yield from relay(job, report)
    if probs is None:
        raise StopRequested
    return probs


#: Rows of a slice thresholded at once (a band of a big plane's probabilities read back from its file).
BAND_ROWS = 512


class _SliceWriter:
    """Thresholds and labels each slice of a batch and hands it to the writers (mask, instance ids,
    probabilities); keeps instance ids increasing through the stack."""

    def __init__(self, writers: dict[str, TiffStackWriter], settings: Outputs) -> None:
        self.writers, self.settings, self.next_id = writers, settings, 0

    def write(self, probs: np.ndarray) -> None:
        for prob in probs:
            self.write_plane(lambda y0, y1, p=prob: p[y0:y1], len(prob))

    def write_plane(self, rows, height: int) -> None:
        """One slice of ``height`` rows whose probabilities ``rows(y0, y1)`` gives (float32 (y1 - y0, X)); the
        mask is thresholded ``BAND_ROWS`` rows at a time."""
        settings = self.settings
        if "labels" in self.writers:
            first = semantic_labels(rows(0, min(BAND_ROWS, height)), settings.threshold)
            mask = np.empty((height, first.shape[1]), np.uint8)
            mask[:len(first)] = first
            for y0 in range(BAND_ROWS, height, BAND_ROWS):
                mask[y0:y0 + BAND_ROWS] = semantic_labels(rows(y0, min(y0 + BAND_ROWS, height)), settings.threshold)
            self.writers["labels"].write(mask)
            del mask
        if "instances" in self.writers:
            ids, self.next_id = offset_ids(instance_labels(rows(0, height), settings.threshold, settings.objects,
                                                           watershed=settings.watershed), self.next_id)
            self.writers["instances"].write(ids)
        if "prob" in self.writers:
            self.writers["prob"].write(rows(0, height))


def _checked(reader: SliceReader, z: int) -> np.ndarray:
    """Slice ``z``, with NaN/inf or a non-numeric dtype reported for that slice."""
    try:
        return check_pixels(reader[z])
    except ValueError as exc:
        raise ValueError(f"slice {z}: {exc}" if reader.is_stack else str(exc)) from exc
