"""Terminal progress for ``Progress`` reports: a tqdm bar on a terminal, one line per milestone elsewhere."""

from __future__ import annotations

import os
import sys
import time
from typing import TextIO

from tqdm import tqdm

from .engine.progress import Progress

#: Size of the bar's screen where the terminal does not say its own (a stream without a file descriptor, a pty of
#: size 0 x 0): tqdm draws nothing at width 0 or height 0.
FALLBACK_COLUMNS, FALLBACK_LINES = 150, 24


class ProgressBar:
    """Feeds ``Progress`` reports to a tqdm bar on ``stream`` (default stderr); ``unit`` names what ``step`` counts.

    On a terminal the bar is redrawn at most every 0.2 s, milestones always. Off a terminal (a log file, a pipe)
    only milestones are written, one line each: reports whose message ends in "done", and the last
    (``step == total``). Both show the step, the rate in ``unit``/s, the message and the float metrics.
    ``close()`` ends the bar's line; a later report starts a new bar.
    """

    def __init__(self, label: str, unit: str = "steps", stream: TextIO | None = None) -> None:
        self.label, self.unit = label, unit
        self.stream = stream or sys.stderr
        self.start = time.perf_counter()
        self._bar: tqdm | None = None

    def __call__(self, report: Progress) -> None:
        milestone = report.message.endswith("done") or report.step == report.total
        if not self.stream.isatty():
            if milestone:
                self.stream.write(self._log_line(report) + "\n")
                self.stream.flush()
            return
        if self._bar is None:  # drawn with this report
            self._open(report)
            return
        bar = self._bar
        if (report.total or None) != bar.total:
            bar.total = report.total or None
        bar.set_postfix_str(_describe(report), refresh=False)
        bar.update(report.step - bar.n)  # redraws when mininterval has passed
        if milestone:  # never dropped (an epoch's summary line)
            bar.refresh()

    def write(self, text: str) -> None:
        """Print one line to the stream without breaking the bar (it is redrawn below the line)."""
        if self._bar is not None:
            tqdm.write(text, file=self.stream)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def _open(self, report: Progress) -> None:
        follow = min(_screen_size(self.stream)) > 0  # a terminal that says its size: tqdm follows its width
        self._bar = tqdm(total=report.total or None, initial=report.step, desc=self.label, unit=self.unit,
                         postfix=_describe(report), file=self.stream, mininterval=0.2, dynamic_ncols=follow,
                         ncols=None if follow else FALLBACK_COLUMNS, nrows=None if follow else FALLBACK_LINES,
                         leave=True)

    def _log_line(self, report: Progress) -> str:
        rate = report.step / max(time.perf_counter() - self.start, 1e-9)
        if report.total:
            filled = int(24 * report.fraction)
            count = f"[{'#' * filled}{'.' * (24 - filled)}] {report.step}/{report.total}"
        else:
            count = f"{report.step}"
        return f"{self.label} {count} {rate:.2f} {self.unit}/s {_describe(report)}"


def _screen_size(stream: TextIO) -> tuple[int, int]:
    """(columns, lines) of the terminal behind ``stream``; (0, 0) where it has none."""
    try:
        return tuple(os.get_terminal_size(stream.fileno()))
    except (AttributeError, OSError, ValueError):  # no file descriptor (io.UnsupportedOperation is an OSError)
        return 0, 0


def _describe(report: Progress) -> str:
    """The message and the float metrics (``loss 0.5123``); other metrics (ints, failures) are not shown."""
    extra = " ".join(f"{k} {v:.4g}" for k, v in report.metrics.items() if isinstance(v, float))
    return f"{report.message} {extra}".strip()
