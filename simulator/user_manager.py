"""The User Manager: registers supervisor sessions (HTTP), takes their demand over AMQP and
answers it from the idle-user pool with `new-users`, in waves (`join_delay`, `join_batch`).

The consumer is a kombu ConsumerMixin in its own thread, so it reconnects by itself after a
broker restart. Every message is acknowledged after handling, whatever it holds: a bad
message is logged and kept for inspection, never redelivered forever.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from collections import Counter, deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

from kombu import Connection, Consumer, Queue
from kombu.message import Message
from kombu.mixins import ConsumerMixin

from simulator.amqp import (
    USER_MANAGER_EXCHANGE,
    USER_MANAGER_ROUTING_KEY,
    EventPublisher,
    connection_for,
)
from simulator.scheduler import Scheduler
from simulator.users import UserPool

logger = logging.getLogger(__name__)

DEMAND_TOPICS = (
    "more-users",
    "update-user-count",
    "users-released",
    "remove-users-demand-completely",
)
RECENT = 100
STOP_POLL_SECONDS = 0.05  # how long stop() may wait for the consumer loop to notice


@dataclass
class Session:
    """A registered supervisor session and what it is still owed."""

    session_id: str
    registered_user_count: int
    registered_at: float
    demand: int = 0
    served: int = 0
    wave_due: float = 0.0
    wave_scheduled: bool = False


class UserManager:
    """Demand bookkeeping; `handle` is fed one decoded body per AMQP message."""

    def __init__(
        self,
        pool: UserPool,
        publisher: EventPublisher,
        scheduler: Scheduler,
        *,
        join_delay: float = 0.0,
        join_batch: int = 0,
    ) -> None:
        self._pool = pool
        self._publisher = publisher
        self._scheduler = scheduler
        self._join_delay = join_delay
        self._join_batch = join_batch
        self._lock = threading.Lock()
        self._stats_lock = threading.Lock()
        self._sessions: dict[str, Session] = {}
        self.ignored: deque[dict[str, Any]] = deque(maxlen=RECENT)
        self.ignored_counts: Counter[str] = Counter()
        self.received: Counter[str] = Counter()

    def register(self, session_id: str, user_count: int) -> None:
        """Registration is idempotent: a repeat keeps the session's demand and users."""
        with self._lock:
            session = self._sessions.get(session_id)
            if session is None:
                self._sessions[session_id] = Session(session_id, user_count, time.time())
            else:
                session.registered_user_count = user_count
        logger.info(
            "session registered",
            extra={"event": "session-registered", "session_id": session_id, "users": user_count},
        )

    def is_registered(self, session_id: str) -> bool:
        with self._lock:
            return session_id in self._sessions

    def ignore(self, reason: str, body: Any) -> None:
        logger.warning(
            "message ignored: %s", reason, extra={"event": "message-ignored", "reason": reason}
        )
        with self._stats_lock:
            self.ignored_counts[reason] += 1
            self.ignored.append({"reason": reason, "body": body})

    def handle(self, body: Any) -> None:
        """Apply one message from USER_MANAGER_EXCHANGE; anything off-contract is ignored."""
        if not isinstance(body, dict) or not isinstance(body.get("topic"), str):
            self.ignore("not a JSON object with a topic", body)
            return
        topic = body["topic"]
        with self._stats_lock:
            self.received[topic] += 1
        data = body.get("data", body.get("payload"))
        if topic not in DEMAND_TOPICS:
            self.ignore("unknown topic", body)
            return
        if not isinstance(data, dict):
            self.ignore("data is not an object", body)
            return
        session_id = body.get("supervisor-id")
        if topic == "remove-users-demand-completely":
            session_id = data.get("session_supervisor_id") or session_id
        if not isinstance(session_id, str) or not self.is_registered(session_id):
            self.ignore("unregistered session", body)
            return
        logger.info(
            "demand message",
            extra={"event": "demand-message", "topic": topic, "session_id": session_id},
        )
        if topic == "users-released":
            self._release(session_id, data, body)
        elif topic == "remove-users-demand-completely":
            self._set_demand(session_id, 0, add=False)
        else:
            count = data.get("user_count")
            if isinstance(count, bool) or not isinstance(count, int) or count < 0:
                self.ignore("user_count is not a non-negative integer", body)
                return
            self._set_demand(session_id, count, add=topic == "more-users")

    def _set_demand(self, session_id: str, count: int, *, add: bool) -> None:
        with self._lock:
            session = self._sessions[session_id]
            before = session.demand
            session.demand = before + count if add else count
            if before == 0 and session.demand > 0:
                session.wave_due = time.monotonic() + self._join_delay
            self._schedule_wave(session)

    def _release(self, session_id: str, data: dict[str, Any], body: Any) -> None:
        users = data.get("user_list")
        if not isinstance(users, list) or not all(isinstance(u, str) for u in users):
            self.ignore("user_list is not a list of user ids", body)
            return
        moved = self._pool.release(session_id, users)
        if len(moved) != len(users):
            self.ignore("some released users are not this session's", body)
        logger.info(
            "users released",
            extra={"event": "users-released", "session_id": session_id, "users": moved},
        )
        with self._lock:
            for session in self._sessions.values():
                self._schedule_wave(session)

    def _schedule_wave(self, session: Session) -> None:
        """Called with the lock held: make sure a wave will run when one is due."""
        if session.demand <= 0 or session.wave_scheduled:
            return
        session.wave_scheduled = True
        delay = session.wave_due - time.monotonic()
        self._scheduler.call_later(delay, lambda: self._serve(session.session_id))

    def _serve(self, session_id: str) -> None:
        """One wave: hand at most `join_batch` idle users (all owed if 0) to the session."""
        with self._lock:
            session = self._sessions.get(session_id)
            if session is None:
                return
            session.wave_scheduled = False
            want = (
                session.demand if self._join_batch == 0 else min(session.demand, self._join_batch)
            )
            users = self._pool.take_idle(want, session_id) if want > 0 else []
            if not users:
                return
            session.demand -= len(users)
            session.served += len(users)
            session.wave_due = time.monotonic() + self._join_delay
        data = {"user_list": users, "session_supervisor_id": session_id}
        undo = partial(self._unserve, session, users)
        if not self._publisher.publish(session_id, "new-users", data, on_failure=undo):
            undo()
        with self._lock:
            self._schedule_wave(session)

    def _unserve(self, session: Session, users: list[str]) -> None:
        """The session never heard of these users: back to the pool, and owed again."""
        self._pool.release(session.session_id, users)
        with self._lock:
            session.demand += len(users)
            session.served -= len(users)
            self._schedule_wave(session)

    def stats(self) -> dict[str, Any]:
        """Copies of the message counters, safe to take while the consumer runs."""
        with self._stats_lock:
            return {
                "received": dict(self.received),
                "ignored_count": sum(self.ignored_counts.values()),
                "ignored_by_reason": dict(self.ignored_counts),
                "ignored_recent": list(self.ignored),
            }

    def state(self) -> dict[str, Any]:
        with self._lock:
            sessions = list(self._sessions.values())
        return {
            s.session_id: {
                "registered_user_count": s.registered_user_count,
                "registered_at": s.registered_at,
                "demand": s.demand,
                "served": s.served,
                "users": self._pool.users_of(s.session_id),
            }
            for s in sessions
        }


class UserManagerConsumer(ConsumerMixin):
    """Consumes USER_MANAGER_EXCHANGE / SESSION_SUPERVISOR in a thread; stops on `stop()`."""

    def __init__(self, url: str, queue_name: str, manager: UserManager, *, private: bool) -> None:
        self.connection = connection_for(url)
        self.manager = manager
        if private:
            self.queue = Queue(
                f"{queue_name}.{secrets.token_hex(4)}",
                exchange=USER_MANAGER_EXCHANGE,
                routing_key=USER_MANAGER_ROUTING_KEY,
                durable=False,
                exclusive=True,
                auto_delete=True,
            )
        else:
            self.queue = Queue(
                queue_name,
                exchange=USER_MANAGER_EXCHANGE,
                routing_key=USER_MANAGER_ROUTING_KEY,
                durable=True,
            )
        self.ready = threading.Event()
        self.connects = 0
        self._thread = threading.Thread(target=self._run, name="sim-user-manager", daemon=True)

    def get_consumers(self, consumer: type[Consumer], channel: Any) -> list[Consumer]:
        return [consumer(queues=[self.queue], on_message=self._on_message, prefetch_count=64)]

    def on_consume_ready(
        self, connection: Connection, channel: Any, consumers: Any, **_: Any
    ) -> None:
        self.connects += 1
        logger.info(
            "consuming",
            extra={"event": "consuming", "queue": self.queue.name, "connects": self.connects},
        )
        self.ready.set()

    @contextmanager
    def establish_connection(self) -> Iterator[Connection]:
        """As kombu's, with short retry intervals so that a restarted broker is found again
        within seconds and `stop()` is not held up by a 30-second back-off."""
        with self.create_connection() as connection:
            connection.ensure_connection(
                self.on_connection_error,
                self.connect_max_retries,
                interval_start=0.2,
                interval_step=0.5,
                interval_max=3,
            )
            yield connection

    def on_connection_error(self, exc: Exception, interval: float) -> None:
        if self.should_stop:
            raise _Stopped from exc
        logger.warning(
            "broker unreachable, retrying in %ss: %s",
            interval,
            exc,
            extra={"event": "broker-unreachable"},
        )

    def _on_message(self, message: Message) -> None:
        try:
            raw = message.body
            body = json.loads(raw.decode("utf-8") if isinstance(raw, bytes) else raw)
        except (ValueError, UnicodeDecodeError):
            self.manager.ignore("not JSON", repr(message.body)[:200])
        else:
            try:
                self.manager.handle(body)
            except Exception:
                logger.exception("handling a message failed", extra={"event": "handler-failed"})
        message.ack()

    def _run(self) -> None:
        try:
            self.run(safety_interval=STOP_POLL_SECONDS)
        except _Stopped:
            pass
        except Exception:
            logger.exception("user manager consumer died", extra={"event": "consumer-died"})

    def start(self, timeout: float) -> bool:
        """Start consuming; True once the queue is declared and bound within `timeout`."""
        self._thread.start()
        return self.ready.wait(timeout)

    def stop(self) -> None:
        self.should_stop = True
        if self._thread.is_alive():
            self._thread.join(10)
        self.connection.release()


class _Stopped(Exception):
    """Raised from the reconnect loop to leave it when stopping."""
