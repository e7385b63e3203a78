"""Timers on a heap, run by a few worker threads: a hundred simulated users rendering at once
cost a hundred heap entries, not a hundred sleeping threads."""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable

logger = logging.getLogger(__name__)


class Scheduler:
    """`call_later(delay, fn)` runs `fn` on one of `workers` threads once `delay` has passed.

    A callback that raises is logged and forgotten; it never stops a worker. Callbacks still
    pending at `stop()` are dropped.
    """

    def __init__(self, workers: int = 4, name: str = "sim-scheduler") -> None:
        self._workers = workers
        self._name = name
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._counter = itertools.count()
        self._cond = threading.Condition()
        self._stopping = False
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for index in range(self._workers):
            thread = threading.Thread(target=self._run, name=f"{self._name}-{index}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def call_later(self, delay: float, fn: Callable[[], None]) -> None:
        when = time.monotonic() + max(0.0, delay)
        with self._cond:
            if self._stopping:
                return
            heapq.heappush(self._heap, (when, next(self._counter), fn))
            self._cond.notify()

    def pending(self) -> int:
        with self._cond:
            return len(self._heap)

    def _next(self) -> Callable[[], None] | None:
        with self._cond:
            while not self._stopping:
                if not self._heap:
                    self._cond.wait()
                    continue
                wait = self._heap[0][0] - time.monotonic()
                if wait <= 0:
                    return heapq.heappop(self._heap)[2]
                self._cond.wait(wait)
            return None

    def _run(self) -> None:
        while (fn := self._next()) is not None:
            try:
                fn()
            except Exception:
                logger.exception("scheduled callback failed", extra={"event": "callback-failed"})

    def stop(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._stopping = True
            self._heap.clear()
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout)
        self._threads.clear()
