"""The one mechanism for long work: generators that yield ``Progress`` and return their result.

A consumer stops the work by no longer iterating (``close()``); the worker honours it at its next yield.
napari's generator ``thread_worker`` drives the same generators (``yielded`` / ``returned`` signals).
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass
class Progress:
    """One report: ``step`` of ``total`` done (``total`` 0 = unknown), a message, optional metrics.

    Metrics that consumers read by name (all optional): ``skipped`` (how many of ``step`` were not computed in
    this run, e.g. outputs that existed; left out of rates), ``<unit>_per_s`` and ``eta_s`` (the job's own rate
    and seconds left), ``phase`` (the stage of a job with several), ``failure`` ((path, message) of a failed
    input).
    """

    step: int
    total: int
    message: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def fraction(self) -> float:
        return min(1.0, self.step / self.total) if self.total else 0.0


Job = Generator[Progress, None, T]


def run_job(job: Job[T], on_progress: Callable[[Progress], bool | None] | None = None) -> T:
    """Drive ``job`` to its end and return its result; ``on_progress`` returning True stops it early.

    On an early stop the generator is closed (it finishes cleanly at its current yield) and its
    return value is whatever it returns from that point (``None`` for most jobs).
    """
    try:
        while True:
            report = next(job)
            if on_progress is not None and on_progress(report):
                return stop_job(job)
    except StopIteration as done:
        return done.value


def relay(job: Job[T], report: Callable[[Progress], Progress | None] = lambda p: p) -> Job[T]:
    """Run ``job`` inside another job: each of its reports goes through ``report`` (``None`` drops it) and is
    re-yielded; a ``StopRequested`` thrown into the outer job is passed to the inner one, whose result is returned.

    Use as ``result = yield from relay(inner, lambda p: Progress(...))``.
    """
    try:
        progress = next(job)
        while True:
            mapped = report(progress)
            if mapped is None:
                progress = next(job)
                continue
            try:
                yield mapped
            except StopRequested:
                progress = job.throw(StopRequested())
                continue
            progress = next(job)
    except StopIteration as done:
        return done.value
    finally:
        job.close()


def stop_job(job: Job[T]) -> T:
    """Ask ``job`` to stop: throw ``StopRequested`` into it and return what it returns."""
    try:
        job.throw(StopRequested())
    except (StopIteration) as done:
        return done.value
    except StopRequested:
        return None  # type: ignore[return-value]
    job.close()
    return None  # type: ignore[return-value]


class StopRequested(Exception):
    """Thrown into a job at its current yield to ask it to stop and return what it has."""
