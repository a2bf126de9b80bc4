"""``alnet segment`` of images and TIFF stacks into TIFFs (``engine.batch``); Zarr/N5 volumes and OME-Zarr outputs
go to ``cli.volumes`` (imported only then: dask and zarr are not loaded for TIFF work)."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from pathlib import Path

from ..api import load_model
from ..engine import arguments as checks
from ..engine.batch import BatchSummary, segment_files_job
from ..engine.devices import resolve_device
from ..engine.progress import Progress
from ..engine.tiling import check_tile
from ..io.atomic import remove_stale_parts
from .common import drive, interrupted_exit_code, progress_bar

#: The module (in this package) for Zarr/N5 inputs and OME-Zarr outputs.
VOLUMES = "volumes"
#: Flags that apply to OME-Zarr outputs only.
VOLUME_FLAGS = ("block", "workers", "scheduler", "threads")


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
    volumes = _route(args)
    model = load_model(args.model, device=args.device, precision=args.precision)
    if volumes:
        code = importlib.import_module(f"{__package__}.{VOLUMES}").segment_volumes(args, model, volumes)
        if code or not args.inputs:
            return code
    return _segment_files(args, model)


def _route(args: argparse.Namespace) -> list[str]:
    """The inputs for the volume engine (removed from ``args.inputs``). A Zarr/N5 volume is a folder, so where no
    input is a folder and nothing asks for OME-Zarr, all go to the TIFF batch without loading the volume engine."""
    if args.watershed and not args.instances:
        raise ValueError("--watershed splits instances: give it with --instances 2d or --instances 3d")
    volume_options = any(getattr(args, flag) is not None for flag in VOLUME_FLAGS)
    wants_zarr = str(args.out).lower().rstrip("/").endswith(".zarr") or args.instances == "3d"
    if not (wants_zarr or volume_options or args.watershed_halo is not None
            or any(Path(i).is_dir() for i in args.inputs)):
        volumes: list[str] = []
    else:
        volumes, args.inputs = importlib.import_module(f"{__package__}.{VOLUMES}").routes(args, volume_options)
    if args.watershed_halo is not None and not volumes:
        raise ValueError("--watershed-halo applies to OME-Zarr outputs (Zarr/N5 inputs, -o ending in .zarr, "
                         "--instances 3d); TIFF outputs are split slice by slice, each slice whole")
    if args.watershed_halo is not None and not args.watershed:
        raise ValueError("--watershed-halo is the context of the blockwise watershed: give it with --watershed")
    if volumes and (args.axes or args.series is not None):
        raise ValueError(f"{volumes[0]}: --axes and --series apply to TIFF inputs written as TIFF outputs; a Zarr "
                         "volume says its axes in its metadata, and a TIFF stack for -o *.zarr must read as Z, Y, X")
    return volumes


def _segment_files(args: argparse.Namespace, model) -> int:
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

    job = segment_files_job(args.inputs, args.out, model, tile=args.tile, threshold=args.threshold,
                            probabilities=args.probabilities, instances=bool(args.instances), overwrite=args.overwrite,
                            axes=args.axes, series=args.series, watershed=args.watershed)
    try:
        summary = drive(job, bar, report)
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
