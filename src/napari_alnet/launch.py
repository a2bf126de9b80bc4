"""The ``alnet`` program: chooses how torch's OpenMP threads wait for the sub-command's kind of work (before torch
loads), runs the command line (``cli.main``), then leaves without Python's interpreter teardown (``leave``)."""

from __future__ import annotations

import contextlib
import importlib
import logging
import multiprocessing
import os
import sys
import threading

from .engine.threads import command_kind, prepare_for


def main(argv: list[str] | None = None) -> int:
    """``alnet …``: ``train`` runs with busy-waiting OpenMP threads, everything else as ``prepare_for`` decides.
    Called as the program (``argv`` None) it ends the process when the command returns (``leave``)."""
    args = sys.argv[1:] if argv is None else list(argv)
    prepare_for(command_kind(args))
    code = importlib.import_module("napari_alnet.cli").main(args)
    if argv is None:
        leave(code)
    return code


def can_leave_at_once() -> bool:
    """Whether nothing would still run at a normal exit: no other non-daemon thread, no child process of
    ``multiprocessing`` (a Dask cluster's workers)."""
    others = [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon]
    return not others and not multiprocessing.active_children()


def leave(code: int) -> None:
    """End the process with ``code`` once output is flushed, skipping the interpreter's teardown: with torch
    loaded, unloading its modules one by one took 0.3-1.5 s after every command (benchmarks/startup.py), and
    every output is complete by now (written to a temporary file and renamed into place). Returns instead where
    a normal exit would still wait for something (``can_leave_at_once``)."""
    if not can_leave_at_once():
        return
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe or stream: nothing more can reach it
            stream.flush()
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
