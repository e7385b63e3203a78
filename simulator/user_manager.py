"""The User Manager: registers supervisor sessions (HTTP), takes their demand over AMQP,
answers it from the idle-user pool with `new-users`, and forwards the users' events.

Two behaviours (`peer_mode`). "ideal" plays CONTRACT.md's tables: `more-users` adds to the
demand, a demand is kept until filled, in waves (`join_delay`, `join_batch`), and every user
event is forwarded. "real" plays section 7, the original User Manager: demands wait in one
FIFO queue, `more-users` is ignored while the session's demand is queued, a demand served in
part is popped (the rest forgotten), releases re-serve the queue at once, events reach only
registered sessions (`user-rendering-completed` never), in the real shapes (no
`supervisor-id`, `frame-number` of a rendered frame as a string, `{"user-id"}` on a
disconnect), and `user-error-sending-frame` only when the node's blend-file-hash was empty
(the User Service's inverted test). There `join_delay` / `join_batch` are users connecting
over time, each arrival serving the queue.

The pool's user-to-session assignment is the User Manager's map of users to sessions: a
release, a disconnect or a restart ends it; a clean-up does not.

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
from collections.abc import Callable, Iterator
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
LOG_LIMIT = 5000  # entries kept in the demand and new-users logs (a test reads them whole)
STOP_POLL_SECONDS = 0.05  # how long stop() may wait for the consumer loop to notice
APPLIED = "applied"
QUEUED_ALREADY = "ignored: a demand of this session is queued"

# Why a user's event did not reach its supervisor (real peer mode).
DROP_COMPLETED = "user-rendering-completed is never forwarded"
DROP_ERROR_WITH_HASH = "user-error-sending-frame with a blend-file-hash (User Service drops it)"
DROP_UNREGISTERED = "session not registered"
DROP_UNMAPPED = "user not mapped to a session"


def real_event_data(topic: str, data: dict[str, Any]) -> dict[str, Any]:
    """An event's data as the real User Service and User Manager shape it."""
    if topic == "user-frame-rendered":
        return {**data, "frame-number": str(data.get("frame-number"))}
    if topic == "user-disconnected":
        return {"user-id": data.get("user-id", data.get("user_id"))}
    if topic == "user-error-sending-frame":
        return {**data, "blend-file-hash": ""}
    return dict(data)


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
    """Demand bookkeeping; `handle` is fed one decoded body per AMQP message, `forward` one
    event of a user for its session."""

    def __init__(
        self,
        pool: UserPool,
        publisher: EventPublisher,
        scheduler: Scheduler,
        *,
        join_delay: float = 0.0,
        join_batch: int = 0,
        real: bool = False,
    ) -> None:
        self._pool = pool
        self._publisher = publisher
        self._scheduler = scheduler
        self._join_delay = join_delay
        self._join_batch = join_batch
        self.real = real
        # Lock order: _lock, then the pool's locks. _routes_lock and _stats_lock are leaves,
        # taken by users while they hold their own lock.
        self._lock = threading.Lock()
        self._routes_lock = threading.Lock()
        self._stats_lock = threading.Lock()
        self._sessions: dict[str, Session] = {}
        self._queue: list[str] = []  # real mode: sessions with a demand, first served first
        self._routes: set[str] = set()
        self.restarts = 0
        self.ignored: deque[dict[str, Any]] = deque(maxlen=RECENT)
        self.ignored_counts: Counter[str] = Counter()
        self.received: Counter[str] = Counter()
        self.cleanups: Counter[str] = Counter()
        self.dropped: deque[dict[str, Any]] = deque(maxlen=RECENT)
        self.dropped_uploads: set[str] = set()
        self.dropped_counts: Counter[str] = Counter()
        self._demand_log: deque[dict[str, Any]] = deque(maxlen=LOG_LIMIT)
        self._new_users_log: deque[dict[str, Any]] = deque(maxlen=LOG_LIMIT)
        # The real User Manager appends to a list of active sessions on every new-session
        # and removes one entry per cleanup-session: what a supervisor leaves listed leaks.
        self._listed: Counter[str] = Counter()

    # ------------------------------------------------------------ HTTP side

    def register(self, session_id: str, user_count: int) -> None:
        """Registration is idempotent: a repeat keeps the session's demand and users."""
        with self._lock:
            session = self._sessions.get(session_id)
            if session is None:
                self._sessions[session_id] = Session(session_id, user_count, time.time())
            else:
                session.registered_user_count = user_count
            with self._routes_lock:
                self._routes.add(session_id)
            self._listed[session_id] += 1
        logger.info(
            "session registered",
            extra={"event": "session-registered", "session_id": session_id, "users": user_count},
        )

    def cleanup(self, session_id: str) -> None:
        """Forget a session's registration and demand (unknown ones too, as the original).
        Users still assigned to it stay so: releasing them is the supervisor's job."""
        with self._lock:
            self._sessions.pop(session_id, None)
            self._unqueue(session_id)
            with self._routes_lock:
                self._routes.discard(session_id)
            if self._listed[session_id] > 0:
                self._listed[session_id] -= 1
            if self._listed[session_id] == 0:
                del self._listed[session_id]
        with self._stats_lock:
            self.cleanups[session_id] += 1
        logger.info(
            "session cleaned up", extra={"event": "session-cleanup", "session_id": session_id}
        )

    def dropped_upload_keys(self) -> set[str]:
        with self._stats_lock:
            return set(self.dropped_uploads)

    def listed_sessions(self) -> dict[str, int]:
        """Sessions still on the active list, with how many entries each has left."""
        with self._lock:
            return dict(self._listed)

    def is_registered(self, session_id: str) -> bool:
        with self._lock:
            return session_id in self._sessions

    def restart(self) -> list[str]:
        """Play a restart: every registration, demand and user-to-session mapping is
        forgotten. In real mode the User Manager forgets the nodes too (seen in the interop
        run, docs/INTEROP.md): they keep rendering, their events are dropped, and nothing
        offers them again until a supervisor releases them. In ideal mode they stop and come
        back idle. Nothing is sent to anyone. Return the users concerned."""
        with self._lock:
            self._sessions.clear()
            self._listed.clear()
            self._queue.clear()
            with self._routes_lock:
                self._routes.clear()
            reset = self._pool.forget_all() if self.real else self._pool.reset_all()
            self.restarts += 1
        logger.warning(
            "user manager restarted",
            extra={"event": "user-manager-restart", "users_reset": reset},
        )
        return reset

    def start(self) -> None:
        """Real mode: schedule the users still to connect, `join_batch` every `join_delay`."""
        if self.real and self._pool.arriving():
            self._scheduler.call_later(self._join_delay, self._arrive)

    def _arrive(self) -> None:
        joined = self._pool.connect_next(self._join_batch)
        logger.info("users connected", extra={"event": "users-connected", "users": joined})
        self._distribute()
        if self._pool.arriving():
            self._scheduler.call_later(self._join_delay, self._arrive)

    # ------------------------------------------------------------ demand over AMQP

    def ignore(self, reason: str, body: Any) -> str:
        logger.warning(
            "message ignored: %s", reason, extra={"event": "message-ignored", "reason": reason}
        )
        with self._stats_lock:
            self.ignored_counts[reason] += 1
            self.ignored.append({"reason": reason, "body": body})
        return f"ignored: {reason}"

    def handle(self, body: Any) -> None:
        """Apply one message from USER_MANAGER_EXCHANGE; anything off-contract is ignored."""
        received_at = time.monotonic()
        if not isinstance(body, dict) or not isinstance(body.get("topic"), str):
            self.ignore("not a JSON object with a topic", body)
            return
        outcome = self._apply(body)
        data = body.get("data", body.get("payload"))
        session_id = body.get("supervisor-id")
        if body["topic"] == "remove-users-demand-completely" and isinstance(data, dict):
            session_id = data.get("session_supervisor_id") or session_id
        with self._stats_lock:
            self._demand_log.append(
                {
                    "topic": body["topic"],
                    "session_id": session_id,
                    "data": data,
                    "time": received_at,
                    "outcome": outcome,
                }
            )

    def _apply(self, body: dict[str, Any]) -> str:
        topic = body["topic"]
        with self._stats_lock:
            self.received[topic] += 1
        data = body.get("data", body.get("payload"))
        if topic not in DEMAND_TOPICS:
            return self.ignore("unknown topic", body)
        if not isinstance(data, dict):
            return self.ignore("data is not an object", body)
        session_id = body.get("supervisor-id")
        if topic == "remove-users-demand-completely":
            session_id = data.get("session_supervisor_id") or session_id
        if not isinstance(session_id, str):
            return self.ignore("unregistered session", body)
        # The real User Manager takes released users back from anyone; they are what a
        # supervisor still returns after its clean-up or a restart.
        released_anyway = self.real and topic == "users-released"
        if not released_anyway and not self.is_registered(session_id):
            return self.ignore("unregistered session", body)
        logger.info(
            "demand message",
            extra={"event": "demand-message", "topic": topic, "session_id": session_id},
        )
        if topic == "users-released":
            return self._release(session_id, data, body)
        if topic == "remove-users-demand-completely":
            return self._set_demand(session_id, 0, topic)
        count = data.get("user_count")
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            return self.ignore("user_count is not a non-negative integer", body)
        return self._set_demand(session_id, count, topic)

    def _set_demand(self, session_id: str, count: int, topic: str) -> str:
        if self.real:
            return self._set_queued_demand(session_id, count, topic)
        with self._lock:
            session = self._sessions.get(session_id)
            if session is None:
                return self.ignore("unregistered session", {"supervisor-id": session_id})
            before = session.demand
            session.demand = before + count if topic == "more-users" else count
            if before == 0 and session.demand > 0:
                session.wave_due = time.monotonic() + self._join_delay
            self._schedule_wave(session)
        return APPLIED

    def _set_queued_demand(self, session_id: str, count: int, topic: str) -> str:
        """Real mode: `more-users` only when nothing of this session is queued; an update
        replaces the queued demand in its place, or queues one; 0 or a removal drops it."""
        with self._lock:
            session = self._sessions.get(session_id)
            if session is None:
                return self.ignore("unregistered session", {"supervisor-id": session_id})
            queued = session_id in self._queue
            if topic == "more-users" and queued:
                return QUEUED_ALREADY
            if topic == "remove-users-demand-completely" or count == 0:
                session.demand = 0
                self._unqueue(session_id)
                return APPLIED
            session.demand = count
            if not queued:
                self._queue.append(session_id)
        self._distribute()
        return APPLIED

    def _unqueue(self, session_id: str) -> None:
        """Called with the lock held."""
        if session_id in self._queue:
            self._queue.remove(session_id)

    def _release(self, session_id: str, data: dict[str, Any], body: Any) -> str:
        users = data.get("user_list")
        if not isinstance(users, list) or not all(isinstance(u, str) for u in users):
            return self.ignore("user_list is not a list of user ids", body)
        moved = self._pool.release(session_id, users)
        outcome = APPLIED
        if len(moved) != len(users):
            outcome = self.ignore("some released users are not this session's", body)
        logger.info(
            "users released",
            extra={"event": "users-released", "session_id": session_id, "users": moved},
        )
        if self.real:
            self._distribute()
        else:
            with self._lock:
                for session in self._sessions.values():
                    self._schedule_wave(session)
        return outcome

    # ------------------------------------------------------------ serving: real mode

    def _distribute(self) -> None:
        """Serve queued demands first come first served while users are idle; each is
        popped, however few users it got."""
        served: list[tuple[str, list[str]]] = []
        with self._lock:
            while self._queue and self._pool.idle():
                session_id = self._queue.pop(0)
                session = self._sessions[session_id]
                wanted = session.demand
                users = self._pool.take_idle(wanted, session_id)
                session.demand = 0
                session.served += len(users)
                served.append((session_id, users, wanted))
        for session_id, users, wanted in served:
            undo = partial(self._unassign, session_id, users)
            self._send_new_users(session_id, users, undo, wanted=wanted)

    def _unassign(self, session_id: str, users: list[str]) -> None:
        """The session never heard of these users: back to the pool (the demand stays
        popped), and on to whoever waits."""
        self._pool.release(session_id, users)
        self._distribute()

    # ------------------------------------------------------------ serving: ideal mode

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
        self._send_new_users(session_id, users, partial(self._unserve, session, users))
        with self._lock:
            self._schedule_wave(session)

    def _unserve(self, session: Session, users: list[str]) -> None:
        """The session never heard of these users: back to the pool, and owed again."""
        self._pool.release(session.session_id, users)
        with self._lock:
            session.demand += len(users)
            session.served -= len(users)
            self._schedule_wave(session)

    # ------------------------------------------------------------ sending

    def _send_new_users(
        self,
        session_id: str,
        users: list[str],
        undo: Callable[[], None],
        *,
        wanted: int | None = None,
    ) -> None:
        """Hand users over; the log keeps how many the demand asked for (`wanted`), so a test
        can tell a demand filled in part."""
        data = {"user_list": users, "session_supervisor_id": session_id}
        sent_at = time.monotonic()
        sent = self._publisher.publish(
            session_id, "new-users", data, on_failure=undo, supervisor_id=not self.real
        )
        if not sent:
            undo()
            return
        with self._stats_lock:
            self._new_users_log.append(
                {
                    "session_id": session_id,
                    "users": users,
                    "wanted": len(users) if wanted is None else wanted,
                    "time": sent_at,
                }
            )

    def forward(self, session_id: str | None, topic: str, data: dict[str, Any]) -> bool:
        """Pass one event of a session's user on to the supervisor; False when it did not
        go out. In real mode this drops what the real User Service and User Manager drop."""
        if not self.real:
            return session_id is not None and self._publisher.publish(session_id, topic, data)
        if topic == "user-rendering-completed":
            return self._drop(DROP_COMPLETED, session_id, topic, data)
        if topic == "user-error-sending-frame" and data.get("blend-file-hash"):
            return self._drop(DROP_ERROR_WITH_HASH, session_id, topic, data)
        if session_id is None or self._pool.is_forgotten(data.get("user-id", data.get("user_id"))):
            return self._drop(DROP_UNMAPPED, session_id, topic, data)
        with self._routes_lock:
            registered = session_id in self._routes
        if not registered:
            return self._drop(DROP_UNREGISTERED, session_id, topic, data)
        shaped = real_event_data(topic, data)
        return self._publisher.publish(session_id, topic, shaped, supervisor_id=False)

    def _drop(self, reason: str, session_id: str | None, topic: str, data: dict[str, Any]) -> bool:
        logger.info(
            "event dropped: %s",
            reason,
            extra={
                "event": "event-dropped",
                "reason": reason,
                "topic": topic,
                "session_id": session_id,
                "user_id": data.get("user-id", data.get("user_id")),
            },
        )
        with self._stats_lock:
            self.dropped_counts[reason] += 1
            if topic == "user-frame-rendered":
                self.dropped_uploads.add(str(data.get("image-binary-path")))
            self.dropped.append(
                {"reason": reason, "session_id": session_id, "topic": topic, "data": dict(data)}
            )
        return False

    # ------------------------------------------------------------ inspection

    def stats(self) -> dict[str, Any]:
        """Copies of the message counters, safe to take while the consumer runs."""
        with self._stats_lock:
            return {
                "received": dict(self.received),
                "ignored_count": sum(self.ignored_counts.values()),
                "ignored_by_reason": dict(self.ignored_counts),
                "ignored_recent": list(self.ignored),
            }

    def dropped_events(self) -> dict[str, int]:
        """User events not forwarded, by reason."""
        with self._stats_lock:
            return dict(self.dropped_counts)

    def cleanup_calls(self) -> dict[str, int]:
        """cleanup-session calls received, by session id."""
        with self._stats_lock:
            return dict(self.cleanups)

    def demand_log(self) -> list[dict[str, Any]]:
        """Every message received on USER_MANAGER_EXCHANGE with a topic, in order: topic,
        session_id, data, time (monotonic, at receipt) and outcome (`applied` or why not)."""
        with self._stats_lock:
            return [dict(entry) for entry in self._demand_log]

    def new_users_log(self) -> list[dict[str, Any]]:
        """Every `new-users` sent, in order: session_id, users, time (monotonic)."""
        with self._stats_lock:
            return [{**entry, "users": list(entry["users"])} for entry in self._new_users_log]

    def sessions(self) -> dict[str, dict[str, Any]]:
        """Each session the User Manager knows or still maps users to: whether registered,
        its queued demand and the users mapped to it."""
        assigned = self._pool.assignments()
        with self._lock:
            known = {sid: s.demand for sid, s in self._sessions.items()}
        return {
            sid: {
                "registered": sid in known,
                "demand": known.get(sid, 0),
                "users": assigned.get(sid, []),
            }
            for sid in sorted(set(known) | set(assigned))
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

    def inspection(self) -> dict[str, Any]:
        """The User Manager's part of `/simulator/state` beyond `sessions`."""
        with self._stats_lock:
            dropped = {
                "count": sum(self.dropped_counts.values()),
                "by_reason": dict(self.dropped_counts),
                "recent": list(self.dropped),
            }
        with self._lock:
            queue, restarts = list(self._queue), self.restarts
        return {
            "peer_mode": "real" if self.real else "ideal",
            "restarts": restarts,
            "sessions": self.sessions(),
            "demand_queue": queue,
            "cleanup_calls": self.cleanup_calls(),
            "demand_log": self.demand_log()[-RECENT:],
            "new_users_log": self.new_users_log()[-RECENT:],
            "dropped_events": dropped,
            "users_to_connect": self._pool.arriving(),
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
