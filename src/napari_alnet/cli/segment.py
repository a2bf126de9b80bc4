"""``alnet segment``: the flags as one ``SegmentRequest`` (``engine.request``), whose parts run on their routes:
images and TIFF stacks streamed into TIFFs here; Zarr/N5 volumes and OME-Zarr outputs blockwise in ``cli.volumes``
(imported only then: dask and zarr are not loaded for TIFF work)."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from pathlib import Path

from ..engine import arguments as checks
from ..engine.batch import BatchSummary
from ..engine.devices import resolve_device
from ..engine.progress import Progress
from ..engine.request import BLOCKWISE, SegmentRequest, file_request, segment_job
from ..engine.tiling import check_tile
from ..io.atomic import remove_stale_parts
from .common import drive, interrupted_exit_code, progress_bar

#: The module (in this package) for Zarr/N5 inputs and OME-Zarr outputs.
VOLUMES = "volumes"


def check(args: argparse.Namespace) -> None:
    """The flag checks that need the engine: the device exists here, the tile suits the network, ``-o``."""
    check_device(args.device)
    if args.tile is not None:
        try:
            check_tile(args.tile)
        except ValueError as exc:
            raise checks.UsageError(f"--tile: {exc}") from None
    if not str(args.out).lower().rstrip("/").endswith(".zarr"):
        checks.output_folder(args.out)


def check_device(device: str | None) -> None:
    """``--device`` names a device this machine has."""
    try:
        resolve_device(device)
    except (ValueError, RuntimeError) as exc:
        raise checks.UsageError(f"argument --device: {exc}") from None


def run(args: argparse.Namespace) -> int:
    logging.getLogger("tifffile").setLevel(logging.CRITICAL)  # unreadable files get our one-line error instead
    request = build_request(args).loaded()  # the routes are checked before the model is loaded
    for part in request.parts():
        if part.route == BLOCKWISE:
            code = importlib.import_module(f"{__package__}.{VOLUMES}").segment_volume(args, part)
            if code:
                return code
        else:
            return _segment_files(args, part)
    return 0


def build_request(args: argparse.Namespace) -> SegmentRequest:
    """The ``SegmentRequest`` of the command's flags (its routes: Zarr/N5 volumes and OME-Zarr outputs blockwise,
    the rest streamed into TIFFs)."""
    return file_request(args.inputs, args.out, args.model, device=args.device, precision=args.precision,
                        tile=args.tile, threshold=args.threshold, probabilities=args.probabilities,
                        instances=args.instances, watershed=args.watershed, watershed_halo=args.watershed_halo,
                        overwrite=args.overwrite, block=args.block, workers=args.workers, scheduler=args.scheduler,
                        threads=args.threads, axes=args.axes, series=args.series)


def _segment_files(args: argparse.Namespace, request: SegmentRequest) -> int:
    removed = remove_stale_parts(Path(args.out))
    if removed:
        print(f"alnet segment: removed {len(removed)} temporary file(s) left by an earlier interrupted run: "
              + ", ".join(p.name for p in removed), file=sys.stderr)
    bar = progress_bar(args, "segment", "slices")

    def report(progress: Progress) -> None:
        failure = progress.metrics.get("failure")
        if failure:
            bar.write(f"alnet segment: error: {failure[1]}")  # once, as it happens; the summary names the input
        bar(progress)

    try:
        summary = drive(segment_job(request), bar, report)
    except KeyboardInterrupt as exc:
        print("alnet segment: interrupted; outputs written so far are complete, no partial file was left",
              file=sys.stderr)
        return interrupted_exit_code(exc)
    return report_summary(summary, args.out)


def report_summary(summary: BatchSummary, out: str) -> int:
    """What the batch did, honestly: slices segmented now (and their rate), outputs kept, inputs that failed."""
    if summary.slices:
        rate = summary.slices / summary.seconds if summary.seconds else 0.0
        print(f"segmented {summary.slices} slices into {len(summary.written)} files in {summary.seconds:.1f} s "
              f"({rate:.2f} slices/s) on {summary.device} ({summary.precision}); output folder {out}")
    elif not summary.failures:
        print(f"nothing to segment: every output exists; output folder {out}")
    if summary.skipped:
        print(f"skipped {len(summary.skipped)} existing outputs (--overwrite replaces them): "
              + ", ".join(p.name for p in summary.skipped))
    if summary.failures:
        names = ", ".join(Path(path).name for path, _ in summary.failures)
        print(f"{len(summary.failures)} input(s) failed (the errors are above): {names}", file=sys.stderr)
        return 1
    return 0
