"""Two bounded hand-overs between threads, for streaming stacks: ``Prefetch`` (work ahead of the consumer) and
``Drain`` (work behind the producer). Each holds at most ``depth`` results, so memory stays flat however long the
stack; an exception in the background thread is raised in the calling thread at the item it concerns; ``close()``
stops and joins the thread (call it in a ``finally``). ``depth=0`` runs the work inline in the calling thread (no
thread; for measuring what the overlap gains).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

_END = object()
_POLL = 0.05


class Prefetch(Generic[T, R]):
    """``produce(item)`` for each of ``items``, in order, in a background thread at most ``depth`` results ahead of
    the iteration over this object."""

    def __init__(self, produce: Callable[[T], R], items: Iterable[T], depth: int = 2, name: str = "prefetch") -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._inline = (produce, list(items)) if depth < 1 else None
        self._thread = threading.Thread(target=self._run, args=(produce, list(items)), name=name, daemon=True)
        if self._inline is None:
            self._thread.start()

    def _run(self, produce: Callable[[T], R], items: list[T]) -> None:
        for item in items:
            if self._stop.is_set():
                return
            try:
                result = (True, produce(item))
            except BaseException as exc:  # raised in the consumer instead
                result = (False, exc)
            if not self._put(result) or not result[0]:
                return
        self._put(_END)

    def _put(self, value) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(value, timeout=_POLL)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> Iterator[R]:
        if self._inline is not None:
            produce, items = self._inline
            yield from (produce(item) for item in items)
            return
        while True:
            try:
                value = self._queue.get(timeout=_POLL)
            except queue.Empty:
                if not self._thread.is_alive() and self._queue.empty():
                    raise RuntimeError("the prefetch thread stopped early") from None
                continue
            if value is _END:
                return
            ok, result = value
            if not ok:
                raise result
            yield result

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()


class Drain(Generic[T]):
    """``consume(item)`` for each item given to ``put``, in order, in a background thread; ``put`` blocks while
    ``depth`` items wait. The first exception of ``consume`` is raised by the next ``put`` or by ``finish``."""

    def __init__(self, consume: Callable[[T], None], depth: int = 2, name: str = "drain") -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._inline = consume if depth < 1 else None
        self._thread = threading.Thread(target=self._run, args=(consume,), name=name, daemon=True)
        if self._inline is None:
            self._thread.start()

    def _run(self, consume: Callable[[T], None]) -> None:
        while not self._stop.is_set():
            try:
                item = self._queue.get(timeout=_POLL)
            except queue.Empty:
                continue
            if item is _END:
                return
            try:
                consume(item)
            except BaseException as exc:  # raised in the producer instead
                self._error = exc
                return

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error
        if not self._thread.is_alive():
            raise RuntimeError("the drain thread stopped early")

    def put(self, item: T) -> None:
        if self._inline is not None:
            self._inline(item)
            return
        while True:
            self._raise()
            try:
                self._queue.put(item, timeout=_POLL)
                return
            except queue.Full:
                continue

    def finish(self) -> None:
        """Wait until every item is consumed; raises the consumer's exception if there was one."""
        if self._inline is not None:
            return
        self.put(_END)
        self._thread.join()
        if self._error is not None:
            raise self._error

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
