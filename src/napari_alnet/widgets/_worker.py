"""The one way widgets launch long work: a ``JobRunner`` drives a core ``Job`` in a napari worker thread.

It forwards each ``Progress`` to the widget's progress bar and napari's activity dock, disables the
widget's controls while running and restores them on success, error and cancel, stops the job
between its steps when Cancel is pressed (``StopRequested`` is thrown in at its current yield), and
turns exceptions into napari notifications (never a traceback dialog). With ``synchronous=True``
the same job runs inline, so tests and scripts can drive a widget without a thread.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from napari.qt.threading import GeneratorWorker, create_worker
from napari.utils.notifications import show_error, show_info

from ..engine.progress import Job, Progress, stop_job

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class Outcome(Generic[T]):
    """How a run ended: ``status`` is ``done``, ``cancelled`` or ``failed``; ``value`` the job's result."""

    status: str
    value: T | None = None
    error: BaseException | None = None


def describe_error(exc: BaseException) -> str:
    """A user-facing sentence for ``exc``: what went wrong (and, where we know, what to do)."""
    text = str(exc) or type(exc).__name__
    if isinstance(exc, MemoryError) or "out of memory" in text.lower():
        return "ran out of memory; choose a smaller tile size, 'current slice', or the cpu device"
    if isinstance(exc, (ValueError, OSError)):  # our core raises these with user-facing messages
        return text
    return f"{type(exc).__name__}: {text} (details in the log)"


def _drive(job: Job[T], stop: threading.Event) -> Generator[Progress, None, Outcome[T]]:
    """Run ``job``, re-yielding its reports; honour ``stop`` between steps; never raise."""
    try:
        while True:
            if stop.is_set():
                return Outcome("cancelled", stop_job(job))
            report = next(job)
            yield report
    except StopIteration as done:
        return Outcome("done", done.value)
    except Exception as exc:
        log.exception("job failed")
        return Outcome("failed", error=exc)


class JobRunner:
    """Runs one job at a time for a widget.

    ``progress_bar`` (magicgui ``ProgressBar``), ``status`` (magicgui ``Label``) and ``cancel_button`` are
    optional; ``controls`` are disabled while a job runs. ``name`` prefixes notifications and the activity
    dock entry. ``last`` is the last run's ``Outcome``; ``running`` says whether a job is in flight.
    """

    def __init__(self, name: str, *, progress_bar: Any = None, status: Any = None, cancel_button: Any = None,
                 controls: Sequence[Any] = (), synchronous: bool = False) -> None:
        self.name = name
        self.progress_bar = progress_bar
        self.status = status
        self.cancel_button = cancel_button
        self.controls = list(controls)
        self.synchronous = synchronous
        self.worker: GeneratorWorker | None = None
        self.last: Outcome | None = None
        self._stop_event = threading.Event()
        self._running = False
        self._saved: list[bool] = []
        self._handlers: tuple[Callable[[Any], None], Callable | None, Callable | None] | None = None
        if cancel_button is not None:
            cancel_button.enabled = False
            cancel_button.changed.connect(self.cancel)
        self._show_bar(False)

    @property
    def running(self) -> bool:
        return self._running

    def start(self, job: Job[T], on_done: Callable[[T], None], *,
              on_progress: Callable[[Progress], None] | None = None,
              on_cancelled: Callable[[T | None], None] | None = None) -> bool:
        """Run ``job``; False (and a notification) if a job is already running.

        In the GUI thread: ``on_progress(report)`` for each report, ``on_done(result)`` on success. On cancel the
        job returns what it has: ``on_cancelled(partial)`` gets it (e.g. the best weights of a stopped training);
        without ``on_cancelled`` it is dropped and nothing is applied.
        """
        if self._running:
            show_info(f"{self.name}: already running; wait or press Cancel")
            return False
        self._stop_event.clear()
        self._running = True
        self._handlers = (on_done, on_progress, on_cancelled)
        self._busy(True)
        if self.synchronous:
            self._run_inline(_drive(job, self._stop_event))
            return True
        worker = create_worker(_drive, job, self._stop_event, _start_thread=False, _ignore_errors=True,
                               _progress={"desc": self.name, "total": 0})
        # each signal is taken from this worker only: an earlier worker's ``finished`` can still be queued when the
        # next run starts, and would end that run as failed
        worker.yielded.connect(lambda report, w=worker: self._is_current(w) and self._on_progress(report))
        worker.returned.connect(lambda outcome, w=worker: self._is_current(w) and self._on_returned(outcome))
        worker.errored.connect(lambda exc, w=worker: self._is_current(w)
                               and self._on_returned(Outcome("failed", error=exc)))
        worker.finished.connect(lambda w=worker: self._is_current(w) and self._on_finished())
        self.worker = worker
        worker.start()
        return True

    def run_inline(self, start: Callable[[], bool]) -> bool:
        """Call ``start`` (a widget's launch method) with its job run inline, not in a thread: for scripts/tests."""
        synchronous, self.synchronous = self.synchronous, True
        try:
            return start()
        finally:
            self.synchronous = synchronous

    def cancel(self, *_: Any) -> None:
        """Ask the running job to stop at its next step (it returns what it has; nothing is applied)."""
        if self._running:
            self._stop_event.set()
            if self.status is not None:
                self.status.value = "cancelling…"

    def _run_inline(self, driver: Generator[Progress, None, Outcome]) -> None:
        try:
            while True:
                self._on_progress(next(driver))
        except StopIteration as done:
            self._on_returned(done.value)

    def _on_progress(self, report: Progress) -> None:
        # The widget's callback runs first: napari's progress-bar update below processes Qt events, which may
        # deliver the job's "returned" signal and clear the handlers before this report reaches the widget.
        callback = self._handlers[1] if self._handlers else None
        if callback is not None:
            self._guard(callback, report)
        if self.progress_bar is not None:
            self.progress_bar.max = max(report.total, 1)
            self.progress_bar.value = min(report.step, max(report.total, 1))
        if self.status is not None and not self._stop_event.is_set():
            self.status.value = report.message
        pbar = getattr(self.worker, "pbar", None) if not self.synchronous else None
        if pbar is not None:
            if report.total and pbar.total != report.total:
                pbar.total = report.total
            pbar.n = report.step
            pbar.update(0)
            if report.message:
                pbar.set_description(f"{self.name}: {report.message}")

    def _is_current(self, worker: GeneratorWorker) -> bool:
        """Whether ``worker`` runs this runner's current job (signals of earlier workers are dropped)."""
        return worker is self.worker

    def _on_returned(self, outcome: Outcome) -> None:
        if not self._running:
            return
        on_done, _, on_cancelled = self._handlers or (None, None, None)
        self.last = outcome
        before = self.status.value if self.status is not None else None
        try:
            if outcome.status == "failed":
                show_error(f"{self.name}: {describe_error(outcome.error)}")
            elif outcome.status == "cancelled" and on_cancelled is not None:
                self._guard(on_cancelled, outcome.value)
            elif outcome.status == "cancelled":
                show_info(f"{self.name}: cancelled; nothing was changed")
            elif on_done is not None:
                self._guard(on_done, outcome.value)
        finally:  # a status the callback wrote (e.g. what a cancelled run kept) stays
            self._finish(outcome.status, said=self.status is not None and self.status.value != before)

    def _on_finished(self) -> None:
        if self._running:  # ended without a return value (should not happen): still give the UI back
            self.last = Outcome("failed")
            self._finish("failed")

    def _guard(self, callback: Callable[[Any], None], arg: Any) -> None:
        try:
            callback(arg)
        except Exception as exc:
            log.exception("%s: callback failed", self.name)
            self.last = Outcome("failed", error=exc)
            show_error(f"{self.name}: {describe_error(exc)}")

    def _finish(self, status: str, said: bool = False) -> None:
        self._running = False
        self._handlers = None
        try:
            self._busy(False)
            if self.status is not None and status != "done" and not said:
                self.status.value = status
        except RuntimeError:  # the dock was closed while the job ran: nothing left to restore
            log.debug("%s: widgets already deleted", self.name)

    def _busy(self, busy: bool) -> None:
        if busy:
            self._saved = [_enabled(w) for w in self.controls]
            for widget in self.controls:
                _set_enabled(widget, False)
        else:
            for widget, was in zip(self.controls, self._saved or [True] * len(self.controls), strict=False):
                _set_enabled(widget, was)
        if self.cancel_button is not None:
            self.cancel_button.enabled = busy
        self._show_bar(busy)

    def _show_bar(self, visible: bool) -> None:
        if self.progress_bar is not None:
            self.progress_bar.value = 0
            self.progress_bar.visible = visible


def _enabled(widget: Any) -> bool:
    return bool(widget.enabled) if hasattr(widget, "enabled") else bool(widget.isEnabled())


def _set_enabled(widget: Any, enabled: bool) -> None:
    if hasattr(widget, "enabled"):
        widget.enabled = enabled
    else:
        widget.setEnabled(enabled)


def unwrap(obj: T) -> T:
    """The object behind napari's ``PublicOnlyProxy`` (plugin widgets get a proxied viewer; layers taken from it
    would be new proxies each time, so identity checks and layer pickers need the real objects)."""
    return getattr(obj, "__wrapped__", obj)
