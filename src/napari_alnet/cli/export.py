"""``alnet export``: a model as a bioimage.io package, ONNX or TorchScript, checked before it is written."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..engine import arguments as checks
from ..engine.export import export_job
from .common import drive, interrupted_exit_code, progress_bar

#: The file name each single-file format is written under.
SUFFIXES = {"onnx": (".onnx",), "torchscript": (".pt", ".pth")}


def check(args: argparse.Namespace) -> None:
    """``-o`` suits the format: .onnx / .pt files, a bioimage.io .zip or a folder that is new or holds a package
    (``export.check_request`` refuses the rest before any work)."""
    out = Path(args.out).expanduser()
    wanted = SUFFIXES.get(args.format)
    if wanted and out.suffix.lower() not in wanted:
        raise checks.UsageError(f"-o {args.out}: a {args.format} export is one {' or '.join(wanted)} file; give a "
                                f"path ending in {wanted[0]}")
    if args.format == "bioimageio" and out.exists() and out.is_file() and out.suffix.lower() != ".zip":
        raise checks.UsageError(f"-o {args.out}: is a file; a bioimage.io package is a .zip file or a folder")


def run(args: argparse.Namespace) -> int:
    job = export_job(args.model, args.out, args.format, sample=args.sample, overwrite=args.overwrite,
                     name=args.name, authors=args.author)
    try:
        report = drive(job, progress_bar(args, "export", "steps"))
    except KeyboardInterrupt as exc:
        print("alnet export: interrupted; nothing was written", file=sys.stderr)
        return interrupted_exit_code(exc)
    print(report.summary())
    return 0
