"""The User Manager's AMQP names (CONTRACT.md section 5) and the publisher of everything it
sends to supervisors: persistent JSON on SESSION_SUPERVISOR_EXCHANGE, with the configured
duplicates, delays that shuffle them, and the contract's tolerated quirks."""

from __future__ import annotations

import logging
import random
import threading
from collections import Counter, deque
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

from kombu import Connection, Exchange, Producer

if TYPE_CHECKING:
    from simulator.scheduler import Scheduler

logger = logging.getLogger(__name__)

USER_MANAGER_EXCHANGE = Exchange("USER_MANAGER_EXCHANGE", type="direct", durable=True)
SESSION_SUPERVISOR_EXCHANGE = Exchange("SESSION_SUPERVISOR_EXCHANGE", type="direct", durable=True)
USER_MANAGER_ROUTING_KEY = "SESSION_SUPERVISOR"
RECENT_EVENTS = 200
# A real User Manager does not drop events over a broker restart: keep trying for about a
# minute (the publishing user stalls meanwhile, as a render node would).
RETRY_POLICY = {"max_retries": 40, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 2}


def session_routing_key(session_id: str) -> str:
    """Where the User Manager sends what is meant for one supervisor session."""
    return f"SESSION_SUPERVISOR_{session_id}"


def connection_for(url: str) -> Connection:
    """A kombu connection; on AMQP with publisher confirms so a publish means 'stored'."""
    options = {"confirm_publish": True} if url.startswith(("amqp", "pyamqp")) else {}
    return Connection(url, connect_timeout=5, transport_options=options)


class EventPublisher:
    """Publishes `{"topic", "supervisor-id", "data"}` bodies to a session's routing key
    (`{"topic", "data"}` when asked, as the real User Manager sends them).

    One connection behind a lock, so any thread may publish. `duplicate` is the chance that a
    body is sent twice; with `quirks`, bodies randomly take the tolerated variants: no
    `supervisor-id`, `frame-number` as a string, `payload` instead of `data` for
    `user-rendering-completed`. A publish that still fails after retries is logged and counted.

    With `reorder` > 0 every copy (a duplicate on its own) is handed to `scheduler` to be sent
    after a uniform random delay in [0, reorder], so events and duplicates arrive shuffled.
    Delays come from the same seeded generator as the rest.
    """

    def __init__(
        self,
        url: str,
        *,
        duplicate: float = 0.0,
        quirks: bool = False,
        seed: int | None = None,
        reorder: float = 0.0,
        scheduler: Scheduler | None = None,
    ) -> None:
        if reorder > 0 and scheduler is None:
            raise ValueError("reorder needs a scheduler")
        self._url = url
        self._duplicate = duplicate
        self._quirks = quirks
        self._reorder = reorder
        self._scheduler = scheduler
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._stats_lock = threading.Lock()
        self._connection: Connection | None = None
        self._producer: Producer | None = None
        self._closed = False
        self.counts: Counter[str] = Counter()
        self.duplicates = 0
        self.failures = 0
        self.recent: deque[dict[str, Any]] = deque(maxlen=RECENT_EVENTS)

    def _ensure(self) -> Producer:
        if self._producer is None:
            self._connection = connection_for(self._url)
            self._producer = Producer(self._connection, serializer="json")
        return self._producer

    def _body(
        self, session_id: str, topic: str, data: dict[str, Any], *, supervisor_id: bool
    ) -> dict[str, Any]:
        data = dict(data)
        body: dict[str, Any] = {"topic": topic}
        if supervisor_id:
            body["supervisor-id"] = session_id
        if self._quirks:
            if "frame-number" in data and self._rng.random() < 0.5:
                data["frame-number"] = str(data["frame-number"])
            if self._rng.random() < 0.3:
                body.pop("supervisor-id", None)
            if topic == "user-rendering-completed" and self._rng.random() < 0.5:
                body["payload"] = data
                return body
        body["data"] = data
        return body

    def publish(
        self,
        session_id: str,
        topic: str,
        data: dict[str, Any],
        *,
        on_failure: Callable[[], None] | None = None,
        supervisor_id: bool = True,
    ) -> bool:
        """Send one event (twice with probability `duplicate`); False if it could not be sent.
        `supervisor_id=False` leaves the body's `supervisor-id` out, as the real User Manager
        does on everything it forwards.

        With `reorder`, the copies are only scheduled here and True means "scheduled"; if
        later none of them can be sent, `on_failure` is called (on a scheduler thread).
        """
        with self._lock:
            if self._closed:
                self._dropped(session_id, topic)
                return False
            body = self._body(session_id, topic, data, supervisor_id=supervisor_id)
            copies = 2 if self._rng.random() < self._duplicate else 1
            if self._reorder > 0 and self._scheduler is not None:
                outing = _Outing(copies, on_failure)
                for copy in range(copies):
                    delay = self._rng.uniform(0.0, self._reorder)
                    send = partial(self._send_later, session_id, topic, data, body, copy, outing)
                    self._scheduler.call_later(delay, send)
                return True
            for copy in range(copies):
                if not self._send(session_id, topic, body):
                    if copy == 0:
                        return False
                    break
                self._record(session_id, topic, body, copy)
        self._log_published(session_id, topic, data, copies=copies)
        return True

    def _send_later(
        self,
        session_id: str,
        topic: str,
        data: dict[str, Any],
        body: dict[str, Any],
        copy: int,
        outing: _Outing,
    ) -> None:
        """One delayed copy, run by the scheduler."""
        with self._lock:
            if self._closed:
                self._dropped(session_id, topic)
                sent = False
            else:
                sent = self._send(session_id, topic, body)
                if sent:
                    self._record(session_id, topic, body, copy)
        if sent:
            self._log_published(session_id, topic, data, copy=copy)
        if outing.settle(sent) and outing.on_failure is not None:
            outing.on_failure()

    def _record(self, session_id: str, topic: str, body: dict[str, Any], copy: int) -> None:
        with self._stats_lock:
            self.counts[topic] += 1
            self.duplicates += copy
            self.recent.append({"session_id": session_id, "body": body, "duplicate": copy > 0})

    def _dropped(self, session_id: str, topic: str) -> None:
        logger.warning(
            "publish after close dropped",
            extra={"event": "publish-dropped", "topic": topic, "session_id": session_id},
        )

    def _log_published(
        self, session_id: str, topic: str, data: dict[str, Any], **details: int
    ) -> None:
        logger.info(
            "published",
            extra={
                "event": "published",
                "topic": topic,
                "session_id": session_id,
                "user_id": data.get("user-id", data.get("user_id")),
                "frame": data.get("frame-number"),
                **details,
            },
        )

    def _send(self, session_id: str, topic: str, body: dict[str, Any]) -> bool:
        try:
            self._ensure().publish(
                body,
                exchange=SESSION_SUPERVISOR_EXCHANGE,
                routing_key=session_routing_key(session_id),
                declare=[SESSION_SUPERVISOR_EXCHANGE],
                delivery_mode=2,
                serializer="json",
                retry=True,
                retry_policy=RETRY_POLICY,
            )
        except Exception:
            with self._stats_lock:
                self.failures += 1
            logger.exception(
                "publish failed",
                extra={"event": "publish-failed", "topic": topic, "session_id": session_id},
            )
            self._reset()
            return False
        return True

    def stats(self) -> dict[str, Any]:
        """A consistent copy of the counters, safe to take while others publish."""
        with self._stats_lock:
            return {
                "published": dict(self.counts),
                "duplicates": self.duplicates,
                "failures": self.failures,
                "recent": list(self.recent),
            }

    def _reset(self) -> None:
        connection, self._connection, self._producer = self._connection, None, None
        if connection is not None:
            try:
                connection.release()
            except Exception:
                logger.debug("closing a broken connection failed", exc_info=True)

    def close(self) -> None:
        """Close the connection; later publishes are dropped (logged), never reconnect."""
        with self._lock:
            self._closed = True
            self._reset()


class _Outing:
    """The copies of one delayed event: `settle` is True once, for the last copy to finish,
    when none of them could be sent."""

    def __init__(self, copies: int, on_failure: Callable[[], None] | None) -> None:
        self.on_failure = on_failure
        self._left = copies
        self._sent = False
        self._lock = threading.Lock()

    def settle(self, sent: bool) -> bool:
        with self._lock:
            self._left -= 1
            self._sent = self._sent or sent
            return self._left == 0 and not self._sent
