"""A value worth reusing for a moment: what a flood of identical requests (scrapes, probes)
may share instead of each paying for its own I/O."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Recent(Generic[T]):
    """`compute()`'s answer, computed again only once it is older than `max_age` seconds.
    One caller computes while the others wait for its answer; an exception reaches the
    caller and nothing is kept, so the next call tries again."""

    def __init__(self, compute: Callable[[], T], max_age: float) -> None:
        self._compute = compute
        self._max_age = max_age
        self._lock = threading.Lock()
        self._kept: tuple[float, T] | None = None

    def get(self) -> T:
        with self._lock:
            now = time.monotonic()
            if self._kept is None or now - self._kept[0] > self._max_age:
                self._kept = (now, self._compute())
            return self._kept[1]
