"""What every sub-command shares: driving a job with its progress display, interruption by signals."""

from __future__ import annotations

import argparse
import signal
from typing import TypeVar

from ..engine.progress import Job, run_job
from ..terminal import ProgressBar

T = TypeVar("T")


def progress_bar(args: argparse.Namespace, label: str, unit: str) -> ProgressBar:
    """The progress display ``--progress`` / ``--quiet`` ask for."""
    return ProgressBar(label, unit, mode="none" if args.quiet else args.progress)


def drive(job: Job[T], bar: ProgressBar, on_progress=None) -> T:
    """Drive ``job`` with ``bar`` (or ``on_progress``) showing its reports; the job and the bar are closed after."""
    try:
        return run_job(job, on_progress or bar)
    finally:
        job.close()
        bar.close()


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGHUP (``timeout``, Slurm, ``docker stop``, a closed terminal), raised where the program is, so
    the same clean-up runs as for Ctrl-C."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def interrupted_exit_code(exc: KeyboardInterrupt) -> int:
    """128 + the signal's number: 130 for Ctrl-C, 143 for SIGTERM, 129 for SIGHUP."""
    return 128 + getattr(exc, "signum", signal.SIGINT)


def raise_interrupted(signum: int, _frame) -> None:
    raise Interrupted(signum)
