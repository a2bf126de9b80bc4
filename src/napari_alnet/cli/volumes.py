"""``alnet segment`` of Zarr/N5 volumes (or any input, to an OME-Zarr output): blockwise, resumable
(``engine.volume``; docs/volumes.md)."""

from __future__ import annotations

import argparse
import sys

from ..engine.request import SegmentRequest, segment_job
from ..engine.volume import VolumeSummary
from .common import drive, interrupted_exit_code, progress_bar


def segment_volume(args: argparse.Namespace, request: SegmentRequest) -> int:
    """Segment the one volume of ``request`` (a blockwise part) into OME-Zarr; 0, or the interrupted exit code."""
    try:
        summary = drive(segment_job(request), progress_bar(args, "segment", "slices"))
    except KeyboardInterrupt as exc:
        print("alnet segment: interrupted; finished blocks are kept: run the same command again to continue",
              file=sys.stderr)
        return interrupted_exit_code(exc)
    report_volume(summary)
    return 0


def report_volume(summary: VolumeSummary) -> None:
    """What the run did; the rate only for blocks computed now (a resumed run does not count the earlier ones)."""
    objects = f", {summary.objects} objects" if summary.objects is not None else ""
    if summary.blocks_run:
        done = (f"{summary.blocks_run} now, {summary.blocks_resumed} done before) in {summary.seconds:.1f} s "
                f"({summary.slices_per_second:.2f} slices/s")
    else:
        done = f"all {summary.blocks_resumed} done before: nothing computed now) in {summary.seconds:.1f} s"
    print(f"segmented {summary.shape} in {summary.blocks} blocks of {summary.block} ({done}) on {summary.device}, "
          f"{summary.workers}{objects}; wrote {summary.labels} ({summary.dtype})"
          + (f" and {summary.probabilities}" if summary.probabilities else ""))
