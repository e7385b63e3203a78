"""Peer faults on demand: for a while, one HTTP peer answers 500 (`error`) or behaves as if
it were unreachable (`down`: the connection is dropped without any response).

A fault ends by itself after its seconds on the monotonic clock; expiry is noticed lazily,
on the next request or inspection, so no timer is needed. Only the HTTP side of a peer is
affected: the User Manager keeps consuming and publishing over AMQP whatever its fault.

One fault is a moment rather than a while: `restart` of the `user-manager` (POST
/simulator/faults `{"service": "user-manager", "mode": "restart"}`, or
`Simulator.restart_user_manager()`), which forgets every registration, demand and
user-to-session mapping at once; it is played by the User Manager, not kept here.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

SERVICE_PREFIXES = {
    "catalog": "/api/mongodb-service/",
    "blob": "/api/blob-service/",
    "user-service": "/api/user-service/",
    "user-manager": "/api/user-manager/",
}
FAULT_MODES = ("error", "down")
RESTART_MODE = "restart"
INJECTED_MESSAGE = "injected fault"
RECENT = 50


def service_of(path: str) -> str | None:
    """The peer a request path belongs to, or None (e.g. the `/simulator/` pages)."""
    for service, prefix in SERVICE_PREFIXES.items():
        if path.startswith(prefix):
            return service
    return None


def check_fault(service: object, mode: object, seconds: object) -> float:
    """Validate a fault; return its seconds as a float. ValueError says what is wrong."""
    if service not in SERVICE_PREFIXES:
        raise ValueError(f"service must be one of {', '.join(SERVICE_PREFIXES)}")
    if mode not in FAULT_MODES:
        raise ValueError(f"mode must be one of {', '.join(FAULT_MODES)}")
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        raise ValueError("seconds must be a number")
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError("seconds must be a positive, finite number")
    return float(seconds)


@dataclass
class _Fault:
    service: str
    mode: str
    seconds: float
    until: float
    refused: int = 0

    def describe(self, now: float) -> dict[str, Any]:
        return {
            "service": self.service,
            "mode": self.mode,
            "seconds": self.seconds,
            "seconds_left": round(max(0.0, self.until - now), 3),
            "refused": self.refused,
        }


class Faults:
    """At most one active fault per service; a new one for the same service replaces it."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._active: dict[str, _Fault] = {}
        self._ended: deque[dict[str, Any]] = deque(maxlen=RECENT)
        self._refused: Counter[tuple[str, str]] = Counter()

    def inject(self, service: str, mode: str, seconds: float) -> None:
        """Make `service` fail in `mode` for `seconds`; ValueError on anything else."""
        duration = check_fault(service, mode, seconds)
        with self._lock:
            now = self._clock()
            self._expire(now)
            previous = self._active.pop(service, None)
            if previous is not None:
                self._end(previous, now, "replaced")
            self._active[service] = _Fault(service, mode, duration, now + duration)
        logger.warning(
            "fault injected",
            extra={"event": "fault-injected", "service": service, "mode": mode, "seconds": seconds},
        )

    def clear(self, service: str | None = None) -> int:
        """End every fault (or only `service`'s) now; return how many were active."""
        if service is not None and service not in SERVICE_PREFIXES:
            raise ValueError(f"service must be one of {', '.join(SERVICE_PREFIXES)}")
        with self._lock:
            now = self._clock()
            self._expire(now)
            names = list(self._active) if service is None else [service]
            cleared = [fault for name in names if (fault := self._active.pop(name, None))]
            for fault in cleared:
                self._end(fault, now, "cleared")
        if cleared:
            logger.info(
                "faults cleared",
                extra={"event": "faults-cleared", "services": [f.service for f in cleared]},
            )
        return len(cleared)

    def refuse(self, path: str) -> str | None:
        """The mode of the active fault covering `path`, counted as one refused request;
        None when the request should be served normally."""
        service = service_of(path)
        if service is None:
            return None
        with self._lock:
            self._expire(self._clock())
            fault = self._active.get(service)
            if fault is None:
                return None
            fault.refused += 1
            self._refused[(service, fault.mode)] += 1
            return fault.mode

    def snapshot(self) -> dict[str, Any]:
        """Active faults with seconds left, recently ended ones, and refusals since start."""
        with self._lock:
            now = self._clock()
            self._expire(now)
            refused: dict[str, dict[str, int]] = {}
            for (service, mode), count in sorted(self._refused.items()):
                refused.setdefault(service, {})[mode] = count
            return {
                "active": [fault.describe(now) for fault in self._active.values()],
                "ended": list(self._ended),
                "refused": refused,
            }

    def _expire(self, now: float) -> None:
        """Called with the lock held."""
        for service, fault in list(self._active.items()):
            if fault.until <= now:
                del self._active[service]
                self._end(fault, now, "expired")

    def _end(self, fault: _Fault, now: float, how: str) -> None:
        """Called with the lock held."""
        entry = fault.describe(now)
        del entry["seconds_left"]
        entry["ended"] = how
        self._ended.append(entry)
        logger.info(
            "fault ended",
            extra={
                "event": "fault-ended",
                "service": fault.service,
                "mode": fault.mode,
                "how": how,
                "refused": fault.refused,
            },
        )
