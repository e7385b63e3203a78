"""Peer faults on demand: for a while, one HTTP peer answers 500 (`error`) or behaves as if
it were unreachable (`down`: the connection is dropped without any response); or, counted
rather than timed, the next N requests to one path answer a status of the test's choosing
(`fail_next`), nothing done.

A timed fault ends by itself after its seconds on the monotonic clock; expiry is noticed
lazily, on the next request or inspection, so no timer is needed. A counted failure ends
when its requests are used up. Only the HTTP side of a peer is affected: the User Manager
keeps consuming and publishing over AMQP whatever its fault. None of this is on unless a
test or a human asks for it.

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
COUNTED_MODE = "status"  # how a counted failure is reported among refusals
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


def check_failure(path_suffix: object, status: object, times: object) -> None:
    """Validate a counted failure (see `Faults.fail_next`); ValueError says what is wrong."""
    if not isinstance(path_suffix, str) or not path_suffix.startswith("/"):
        raise ValueError("path must be a string starting with '/'")
    if isinstance(status, bool) or not isinstance(status, int) or not 400 <= status <= 599:
        raise ValueError("status must be an HTTP error status, 400..599")
    if isinstance(times, bool) or not isinstance(times, int) or times < 1:
        raise ValueError("times must be a positive integer")


@dataclass(frozen=True)
class Refusal:
    """How one request is refused: `down` (no response at all), or a `status` answered with
    `{"message": INJECTED_MESSAGE}` and nothing done (500 for an `error` fault)."""

    mode: str
    status: int | None = None


@dataclass
class _Failure:
    path_suffix: str
    status: int
    left: int
    refused: int = 0

    def describe(self) -> dict[str, Any]:
        return {
            "path": self.path_suffix,
            "status": self.status,
            "left": self.left,
            "refused": self.refused,
        }


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
    """At most one active timed fault per service, and one counted failure per path suffix;
    a new one for the same service or suffix replaces it."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._active: dict[str, _Fault] = {}
        self._failing: dict[str, _Failure] = {}
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

    def fail_next(self, path_suffix: str, status: int = 503, times: int = 1) -> None:
        """Answer the next `times` requests to a peer path ending in `path_suffix` with
        `status` (and `{"message": "injected fault"}`), nothing done; ValueError on a suffix
        not starting with '/', a status outside 400..599 or a non-positive count. A timed
        fault of the path's service goes first: requests it refuses are not counted here."""
        check_failure(path_suffix, status, times)
        with self._lock:
            self._failing[path_suffix] = _Failure(path_suffix, status, times)
        logger.warning(
            "failure injected",
            extra={
                "event": "failure-injected",
                "path": path_suffix,
                "status": status,
                "times": times,
            },
        )

    def failures(self) -> dict[str, int]:
        """Counted failures still to come, by path suffix."""
        with self._lock:
            return {suffix: f.left for suffix, f in self._failing.items() if f.left > 0}

    def clear_failures(self) -> int:
        """End every counted failure now; return how many had requests left."""
        with self._lock:
            cleared = sum(1 for failure in self._failing.values() if failure.left > 0)
            self._failing.clear()
        return cleared

    def clear(self, service: str | None = None) -> int:
        """End every fault, counted failures included (or only `service`'s timed fault) now;
        return how many were active."""
        if service is not None and service not in SERVICE_PREFIXES:
            raise ValueError(f"service must be one of {', '.join(SERVICE_PREFIXES)}")
        with self._lock:
            now = self._clock()
            self._expire(now)
            names = list(self._active) if service is None else [service]
            cleared = [fault for name in names if (fault := self._active.pop(name, None))]
            for fault in cleared:
                self._end(fault, now, "cleared")
        counted = self.clear_failures() if service is None else 0
        if cleared:
            logger.info(
                "faults cleared",
                extra={"event": "faults-cleared", "services": [f.service for f in cleared]},
            )
        return len(cleared) + counted

    def reset(self) -> None:
        """Forget every fault, counted failure and refusal, as at start."""
        with self._lock:
            self._active.clear()
            self._failing.clear()
            self._ended.clear()
            self._refused.clear()

    def refuse(self, path: str) -> Refusal | None:
        """How a request to `path` is refused, counted as one refused request: by the active
        timed fault of its service, else by a counted failure of a suffix it ends with (the
        longest such suffix); None when it should be served normally."""
        service = service_of(path)
        if service is None:
            return None
        with self._lock:
            self._expire(self._clock())
            fault = self._active.get(service)
            if fault is not None:
                fault.refused += 1
                self._refused[(service, fault.mode)] += 1
                return Refusal(fault.mode, 500 if fault.mode == "error" else None)
            matching = [
                f for f in self._failing.values() if f.left > 0 and path.endswith(f.path_suffix)
            ]
            if not matching:
                return None
            failure = max(matching, key=lambda f: len(f.path_suffix))
            failure.left -= 1
            failure.refused += 1
            self._refused[(service, COUNTED_MODE)] += 1
            return Refusal(COUNTED_MODE, failure.status)

    def snapshot(self) -> dict[str, Any]:
        """Active faults with seconds left, recently ended ones, counted failures with the
        requests they have left, and refusals since start (counted ones as mode `status`)."""
        with self._lock:
            now = self._clock()
            self._expire(now)
            refused: dict[str, dict[str, int]] = {}
            for (service, mode), count in sorted(self._refused.items()):
                refused.setdefault(service, {})[mode] = count
            return {
                "active": [fault.describe(now) for fault in self._active.values()],
                "ended": list(self._ended),
                "failing": [failure.describe() for failure in self._failing.values()],
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
