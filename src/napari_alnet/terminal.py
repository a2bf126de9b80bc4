"""A dependency-free progress bar for the terminal, fed by ``Progress`` reports."""

from __future__ import annotations

import sys
import time

from .engine.progress import Progress


class ProgressBar:
    """Redraws one stderr line per report (at most every 0.2 s, milestones always); ``unit`` names what ``step`` counts.

    Off a terminal only milestones are written, one line each: reports whose message ends in "done", and the last.
    """

    def __init__(self, label: str, unit: str = "steps", stream=None) -> None:
        self.label, self.unit = label, unit
        self.stream = stream or sys.stderr
        self.start = time.perf_counter()
        self.last = 0.0
        self.active = False

    def __call__(self, report: Progress) -> None:
        now = time.perf_counter()
        milestone = report.message.endswith("done") or report.step == report.total
        if now - self.last < 0.2 and not milestone:  # milestones are never dropped (an epoch's summary line)
            return
        self.last = now
        rate = report.step / max(now - self.start, 1e-9)
        if report.total:
            filled = int(24 * report.fraction)
            bar = f"[{'#' * filled}{'.' * (24 - filled)}] {report.step}/{report.total}"
        else:
            bar = f"{report.step}"
        extra = " ".join(f"{k} {v:.4g}" for k, v in report.metrics.items() if isinstance(v, float))
        line = f"{self.label} {bar} {rate:.2f} {self.unit}/s {report.message} {extra}"
        if self.stream.isatty():
            self.stream.write("\r" + line[:150].ljust(150))
            self.active = True
        elif milestone:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.active:
            self.stream.write("\n")
            self.stream.flush()
            self.active = False
