"""The ``alnet`` program: chooses how torch's OpenMP threads wait for the sub-command's kind of work (before torch
loads), then runs the command line (``cli.main``)."""

from __future__ import annotations

import importlib
import sys

from .engine.threads import command_kind, prepare_for


def main(argv: list[str] | None = None) -> int:
    """``alnet …``: ``train`` runs with busy-waiting OpenMP threads, everything else with sleeping ones."""
    args = sys.argv[1:] if argv is None else list(argv)
    prepare_for(command_kind(args))
    return importlib.import_module("napari_alnet.cli").main(args)


if __name__ == "__main__":
    sys.exit(main())
