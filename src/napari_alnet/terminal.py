"""Terminal progress for ``Progress`` reports: a tqdm bar on a terminal, milestone lines in a log, JSON lines.

Modes (``alnet ... --progress MODE``; ``--quiet`` is ``none``): ``auto`` a bar on a terminal and log lines
elsewhere (a file, a pipe, a Slurm or LSF job log); ``bar``; ``log``; ``json``, one JSON object a line
(``done``, ``total``, ``unit``, ``rate``, ``eta_s``, ``stage``, ``message`` and the float metrics); ``none``.
Log and JSON lines are written at milestones only, and flushed: every ``EVERY_FRACTION`` of the total or
``EVERY_SECONDS`` (whichever comes first), the first report, reports whose message ends in "done" (an epoch's
summary) and the first report of the whole total. When no report comes for ``EVERY_SECONDS`` (one long block), a
heartbeat line repeats the last one with the time since it ("still working"), so a job log never goes quiet.
"""

from __future__ import annotations

import json
import math
import os
import sys
import threading
import time
from typing import TYPE_CHECKING, TextIO

from .engine.progress import Progress

if TYPE_CHECKING:
    from tqdm import tqdm

#: Size of the bar's screen where the terminal does not say its own (a stream without a file descriptor, a pty of
#: size 0 x 0): tqdm draws nothing at width 0 or height 0.
FALLBACK_COLUMNS, FALLBACK_LINES = 150, 24
PROGRESS_MODES = ("auto", "bar", "log", "json", "none")
#: Off a terminal a line is written at every 5 % of the total, and at least every 30 s while reports come.
EVERY_FRACTION, EVERY_SECONDS = 0.05, 30.0
#: Metrics shown in their own fields, not repeated after the message.
_OWN_FIELDS = ("eta_s", "skipped")


class ProgressBar:
    """Feeds ``Progress`` reports to ``stream`` (default stderr) as ``mode`` says; ``unit`` names what ``step``
    counts.

    On a terminal the bar is redrawn at most every 0.2 s, milestones always. Log lines show the step of the
    total, the percentage, the rate in ``unit``/s and the ETA, the message and the float metrics. The rate counts
    the work done in this run: a job says its own in ``metrics[f"{unit}_per_s"]`` (and ``metrics["eta_s"]``), or
    counts the steps it did not compute (outputs that existed) in ``metrics["skipped"]``. ``close()`` ends the
    bar's line; a later report starts a new bar.
    """

    def __init__(self, label: str, unit: str = "steps", stream: TextIO | None = None, *, mode: str = "auto",
                 every_fraction: float = EVERY_FRACTION, every_seconds: float = EVERY_SECONDS) -> None:
        if mode not in PROGRESS_MODES:
            raise ValueError(f"progress mode {mode!r}: choose one of {', '.join(PROGRESS_MODES)}")
        self.label, self.unit = label, unit
        self.stream = stream or sys.stderr
        self.mode = ("bar" if self.stream.isatty() else "log") if mode == "auto" else mode
        self.every_fraction, self.every_seconds = every_fraction, every_seconds
        self.start = time.perf_counter()
        self._bar: tqdm | None = None
        self._last: float | None = None  # when the last line was written
        self._next_step = 0
        self._finished = False
        self._lock = threading.Lock()  # the heartbeat thread writes too
        self._latest: tuple[Progress, float, float | None, float] | None = None  # report, rate, eta, when
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None

    def __call__(self, report: Progress) -> None:
        if self.mode == "none":
            return
        if self.mode == "bar":
            self._draw(report)
            return
        with self._lock:
            self._latest = (report, *self._rate(report), time.perf_counter())
            if self._milestone(report):
                self._emit(self.record(report) if self.mode == "json" else self._log_line(report))
        if self._heartbeat is None and self.every_seconds > 0:
            self._heartbeat = threading.Thread(target=self._beat, name=f"progress {self.label}", daemon=True)
            self._heartbeat.start()

    def write(self, text: str) -> None:
        """Print one line (an error) without breaking the bar (it is redrawn below the line); in JSON mode it is
        a ``{"message": ...}`` object, so that every line parses."""
        if self._bar is not None:
            self._bar.write(text, file=self.stream)
            self.stream.flush()
            return
        with self._lock:
            self._emit({"message": text} if self.mode == "json" else text)

    def close(self) -> None:
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join(timeout=5)
            self._heartbeat = None
        self._stop.clear()
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def _emit(self, line: str | dict) -> None:
        self.stream.write((json.dumps(line) if isinstance(line, dict) else line) + "\n")
        self.stream.flush()

    def _beat(self) -> None:
        """Until ``close()``: where no line was written for ``every_seconds``, repeat the last report's line with
        the time since it (its rate, and its ETA less that time)."""
        while not self._stop.wait(self.every_seconds / 4):
            with self._lock:
                now = time.perf_counter()
                if self._latest is None or self._finished or now - (self._last or now) < self.every_seconds:
                    continue
                report, rate, eta, when = self._latest
                since = now - when
                eta = None if eta is None else max(0.0, eta - since)
                try:
                    self._emit(self._heartbeat_line(report, rate, eta, since))
                except (OSError, ValueError):  # the stream was closed under us
                    return
                self._last = now

    def _heartbeat_line(self, report: Progress, rate: float, eta: float | None, since: float) -> str | dict:
        still = f"still working, {duration(since)} since the last report"
        if self.mode == "json":
            return self.record(report) | {"eta_s": None if eta is None else round(eta, 1), "heartbeat": still}
        return self._log_line(report, (rate, eta)) + f" ({still})"

    def record(self, report: Progress) -> dict:
        """What a JSON line holds: done, total (``None`` when unknown), unit, rate, eta_s, stage, message and the
        numeric metrics (``blocks_done``, ``loss``, ...)."""
        rate, eta = self._rate(report)
        numbers = {k: v for k, v in report.metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
                   and math.isfinite(v) and k not in _OWN_FIELDS and not k.endswith("_per_s")}
        return {"done": report.step, "total": report.total or None, "unit": self.unit, "rate": round(rate, 4),
                "eta_s": None if eta is None else round(eta, 1), "stage": str(report.metrics.get("phase", self.label)),
                "message": report.message} | numbers

    def _milestone(self, report: Progress) -> bool:
        """Whether ``report`` gets a line: the first, a "done" message, the whole total (once), a new 5 % step or
        30 s since the last line."""
        now = time.perf_counter()
        whole = bool(report.total) and report.step >= report.total and not self._finished
        due = (self._last is None or report.message.endswith("done") or whole
               or (report.total and self._step_of(report) >= self._next_step)
               or now - self._last >= self.every_seconds)
        if due:
            self._last, self._finished = now, self._finished or whole
            self._next_step = self._step_of(report) + 1
        return bool(due)

    def _step_of(self, report: Progress) -> int:
        """Which ``every_fraction`` step of the total ``report`` has reached (0 for the first 5 %)."""
        return math.floor(report.fraction / self.every_fraction + 1e-9)

    def _rate(self, report: Progress) -> tuple[float, float | None]:
        """(rate in units/s of this run's work, seconds left or ``None``)."""
        own = report.metrics.get(f"{self.unit}_per_s")
        if isinstance(own, (int, float)) and math.isfinite(own):
            rate = float(own)
        else:
            computed = report.step - int(report.metrics.get("skipped", 0))
            rate = max(computed, 0) / max(time.perf_counter() - self.start, 1e-9)
        eta = report.metrics.get("eta_s")
        if not isinstance(eta, (int, float)) or not math.isfinite(eta):
            eta = (report.total - report.step) / rate if report.total and rate > 0 else None
        return rate, (max(0.0, float(eta)) if eta is not None else None)

    def _draw(self, report: Progress) -> None:
        if self._bar is None:  # drawn with this report
            self._open(report)
            return
        bar = self._bar
        if (report.total or None) != bar.total:
            bar.total = report.total or None
        bar.set_postfix_str(_describe(report), refresh=False)
        bar.update(report.step - bar.n)  # redraws when mininterval has passed
        if report.message.endswith("done") or report.step == report.total:  # never dropped (an epoch's summary)
            bar.refresh()

    def _open(self, report: Progress) -> None:
        from tqdm import tqdm  # here: tqdm takes 0.2 s to import, and only a bar on a terminal needs it

        follow = min(_screen_size(self.stream)) > 0  # a terminal that says its size: tqdm follows its width
        self._bar = tqdm(total=report.total or None, initial=report.step, desc=self.label, unit=self.unit,
                         postfix=_describe(report), file=self.stream, mininterval=0.2, dynamic_ncols=follow,
                         ncols=None if follow else FALLBACK_COLUMNS, nrows=None if follow else FALLBACK_LINES,
                         leave=True)

    def _log_line(self, report: Progress, rate_eta: tuple[float, float | None] | None = None) -> str:
        rate, eta = rate_eta or self._rate(report)
        if report.total:
            filled = int(24 * report.fraction)
            count = f"[{'#' * filled}{'.' * (24 - filled)}] {report.step}/{report.total} {100 * report.fraction:.0f}%"
        else:
            count = f"{report.step}"
        left = f" ETA {duration(eta)}" if eta is not None and report.step < report.total else ""
        return f"{self.label} {count} {rate:.2f} {self.unit}/s{left} {_describe(report)}".rstrip()


def duration(seconds: float) -> str:
    """``1h02m`` / ``3m05s`` / ``12s``."""
    seconds = round(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds // 60 % 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def _screen_size(stream: TextIO) -> tuple[int, int]:
    """(columns, lines) of the terminal behind ``stream``; (0, 0) where it has none."""
    try:
        return tuple(os.get_terminal_size(stream.fileno()))
    except (AttributeError, OSError, ValueError):  # no file descriptor (io.UnsupportedOperation is an OSError)
        return 0, 0


def _describe(report: Progress) -> str:
    """The message and the float metrics (``loss 0.5123``); other metrics (ints, failures), the ETA and the job's
    own rate are not shown."""
    extra = " ".join(f"{k} {v:.4g}" for k, v in report.metrics.items()
                     if isinstance(v, float) and k not in _OWN_FIELDS and not k.endswith("_per_s"))
    return f"{report.message} {extra}".strip()
