"""``alnet segment`` of Zarr/N5 volumes (or any input, to an OME-Zarr output): blockwise, resumable
(``engine.blockwise``; docs/volumes.md)."""

from __future__ import annotations

import argparse
import sys

from ..engine import arguments as checks
from ..engine.blockwise import VolumeSummary, segment_volume_job, volume_routes
from ..engine.segmenter import Segmenter
from .common import drive, interrupted_exit_code, progress_bar


def routes(args: argparse.Namespace, volume_options: bool) -> tuple[list[str], list[str]]:
    """(inputs for the volume engine, inputs for the TIFF batch), with the volume flags checked."""
    volumes, files = volume_routes(args.inputs, args.out, args.instances, volume_options)
    if volumes:
        checks.block(args.block)
        checks.workers(args.workers)
        checks.threads(args.threads)
        if args.workers is not None and args.scheduler is not None:
            raise checks.UsageError("--workers starts a local cluster and --scheduler uses a running one: give one")
    return volumes, files


def segment_volumes(args: argparse.Namespace, model: Segmenter, sources: list[str]) -> int:
    """Segment each volume of ``sources`` blockwise into OME-Zarr; 0, or the interrupted exit code."""
    for source in sources:
        job = segment_volume_job(model, source, args.out, block=args.block, probabilities=args.probabilities,
                                 instances=args.instances, threshold=args.threshold, overwrite=args.overwrite,
                                 tile=args.tile, workers=args.workers, scheduler=args.scheduler, threads=args.threads,
                                 **_watershed_options(args))
        try:
            summary = drive(job, progress_bar(args, "segment", "slices"))
        except KeyboardInterrupt as exc:
            print("alnet segment: interrupted; finished blocks are kept: run the same command again to continue",
                  file=sys.stderr)
            return interrupted_exit_code(exc)
        report_volume(summary)
    return 0


def _watershed_options(args: argparse.Namespace) -> dict:
    """The engine's watershed options from --watershed / --watershed-halo (none when off: the engine's defaults)."""
    if not args.watershed:
        return {}
    return {"watershed": True} | ({"watershed_halo": args.watershed_halo} if args.watershed_halo is not None else {})


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
