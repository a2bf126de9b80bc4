"""The ``alnet`` command line: demo, segment, train, evaluate, export.

``alnet --help`` reads only the parser (``cli.parser``); a sub-command's module, and with it torch and the engine,
is imported when that sub-command runs (``COMMANDS``), so that the command line starts fast (benchmarks/startup.py).
"""

from __future__ import annotations

import gc
import importlib
import signal
import sys
from types import ModuleType

from ..engine.arguments import UsageError
from ..engine.threads import TRAINING_COMMANDS, prepare_for
from .common import Interrupted, interrupted_exit_code, raise_interrupted
from .parser import build_parser

#: The module (in this package) that runs each sub-command: its ``check(args)`` (the flag checks that need the
#: engine, e.g. whether a device exists here: argparse's exit 2 with the usage line) and ``run(args) -> int``.
COMMANDS = {"demo": "demo", "segment": "segment", "train": "train", "evaluate": "evaluate", "export": "export"}

__all__ = ["COMMANDS", "Interrupted", "build_parser", "interrupted_exit_code", "main"]


def import_command(name: str) -> ModuleType:
    """The sub-command's module. Its first import (torch's with it: ~300,000 objects) runs with the cyclic garbage
    collector paused and the objects it made frozen after (``gc.freeze``): else three full collections walk them
    during the import and each later collection of the run again (0.6-0.9 s of a one-image ``alnet segment`` on a
    loaded 2-core machine, 0.02 s frozen; benchmarks/startup.py)."""
    module = f"{__name__}.{COMMANDS[name]}"
    if module in sys.modules:
        return sys.modules[module]
    enabled = gc.isenabled()
    gc.disable()
    try:
        return importlib.import_module(module)
    finally:
        gc.freeze()
        if enabled:
            gc.enable()


def main(argv: list[str] | None = None) -> int:
    """Run one command. Exit codes: 0 done, 1 some inputs failed (segment), 2 a usage or input error (nothing
    was written; flags refused as they are read raise ``SystemExit(2)`` as argparse does), 128 + signal when
    interrupted (130 Ctrl-C, 143 SIGTERM, 129 SIGHUP)."""
    args = build_parser().parse_args(argv)
    handlers = {sig: signal.signal(sig, raise_interrupted) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        prepare_for("train" if args.command in TRAINING_COMMANDS else "segment")  # before torch loads OpenMP
        command = import_command(args.command)
        try:
            command.check(args)
        except UsageError as exc:
            args.parser.error(str(exc))  # the usage line and the message, exit 2, as for flags argparse refuses
        return command.run(args)
    except KeyboardInterrupt as exc:
        print(f"alnet {args.command}: interrupted ({exc or 'SIGINT'})", file=sys.stderr)
        return interrupted_exit_code(exc)
    except (ValueError, OSError) as exc:
        print(f"alnet {args.command}: error: {exc}", file=sys.stderr)
        return 2
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
