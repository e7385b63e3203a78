"""Intake of User Manager messages inside the Celery worker.

A consumer bootstep runs a kombu `ConsumerMixin` on USER_MANAGER_BROKER_URL (its own
connection: the User Manager's exchanges need not live on Celery's broker). For each
batch of messages it parses and validates, records the events in the Postgres inbox (only
for a known session), hands the inbox ids to Celery tasks, and only then acks. A message
that makes no
sense is refused: logged with its reason, counted, kept on the dead-letter queue, and
acked, so it is never redelivered in a loop.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from celery import Celery, bootsteps
from kombu import Connection, Consumer, Message
from kombu.mixins import ConsumerMixin

from supervisor import inbox, users
from supervisor.messages import Event, NewUsers, parse
from supervisor.messaging import IntakeTopology
from supervisor.refusals import Refused, refuse
from supervisor.services import Services
from tasks import names
from tasks.base import build_services

logger = logging.getLogger(__name__)

PREFETCH = 256
BATCH_SIZE = 128
# A frame waits at most this long for company; each batch costs five transactions and two
# Celery hand-offs whatever its size, so at 20 ms (about 4 events a batch under load) those
# were a quarter of the worker's CPU per event. Frames take seconds to render; 0.1 s is noise.
FLUSH_SECONDS = 0.1
RETRY_PAUSE_SECONDS = 1.0


class IntakeConsumer(ConsumerMixin):
    """Survives broker restarts (ConsumerMixin reconnects with backoff).

    Messages are taken in batches: up to BATCH_SIZE, or whatever arrived within
    FLUSH_SECONDS, are recorded in one inbox statement and handed to one task, then acked.
    Nothing is acked before its event is in Postgres; a batch lost with its connection is
    redelivered by the broker."""

    def __init__(
        self,
        topology: IntakeTopology,
        celery: Celery,
        services: Services,
        *,
        settle_seconds: float = 0.0,
    ) -> None:
        self.topology = topology
        self.connection = Connection(topology.url, heartbeat=30)
        self.celery = celery
        self.services = services
        self.settle_seconds = settle_seconds
        self._pending: list[Message] = []
        self._oldest = 0.0

    def get_consumers(self, consumer_class: type[Consumer], channel: Any) -> list[Consumer]:
        queue = self.topology.declare(channel)
        consumer = consumer_class(
            queues=[queue], on_message=self.on_message, prefetch_count=PREFETCH
        )
        return [consumer]

    def on_connection_revived(self) -> None:
        logger.info("user manager intake connected", extra={"queue": self.topology.queue_name})

    def on_consume_ready(
        self, connection: Any, channel: Any, consumers: Any, **kwargs: Any
    ) -> None:
        """A new channel: messages held from an old one will come again; drop them."""
        self._pending = []

    def on_message(self, message: Message) -> None:
        if not self._pending:
            self._oldest = time.monotonic()
        self._pending.append(message)
        if len(self._pending) >= BATCH_SIZE:
            self.flush()

    def on_iteration(self) -> None:
        if self._pending and time.monotonic() - self._oldest >= FLUSH_SECONDS:
            self.flush()

    def run_batched(self) -> None:
        """The consume loop, waking every FLUSH_SECONDS so a short batch is not held back."""
        self.run(safety_interval=FLUSH_SECONDS)

    def flush(self) -> None:
        batch, self._pending = self._pending, []
        sv = self.services
        parsed: list[tuple[Message, Event]] = []
        for message in batch:
            routing_key = message.delivery_info.get("routing_key")
            try:
                parsed.append((message, parse(message.body, routing_key)))
            except Refused as exc:
                self._refuse(sv, message, exc)
        try:
            inbox_ids = inbox.record_many(sv.db, [event for _, event in parsed])
        except Exception:
            logger.exception(
                "intake could not record a batch; it will be redelivered",
                extra={"messages": len(parsed)},
            )
            time.sleep(RETRY_PAUSE_SECONDS)
            for message, _ in parsed:
                message.requeue()
            return
        batched: list[int] = []
        forgotten: list[NewUsers] = []
        for (message, event), inbox_id in zip(parsed, inbox_ids, strict=True):
            if inbox_id is None:
                if isinstance(event, NewUsers):
                    forgotten.append(event)
                self._refuse(sv, message, Refused("unknown-session", event.session_id))
            elif event.topic in names.BATCHED_TOPICS:
                batched.append(inbox_id)
            elif event.topic == "user-rendering-completed" and self.settle_seconds:
                self._dispatch(names.TASK_FOR_TOPIC[event.topic], [inbox_id], self.settle_seconds)
            else:
                self._dispatch(names.TASK_FOR_TOPIC[event.topic], [inbox_id])
        if batched:
            self._dispatch(names.FRAMES_RENDERED, [batched])
        if forgotten:
            self._return_users(sv, forgotten)
        for message, _ in parsed:
            if not message.acknowledged:
                message.ack()

    def _refuse(self, sv: Services, message: Message, exc: Refused) -> None:
        refuse(
            sv,
            reason=exc.reason,
            detail=exc.detail,
            routing_key=message.delivery_info.get("routing_key"),
            body=message.body,
        )
        message.ack()

    def _return_users(self, sv: Services, events: list[NewUsers]) -> None:
        """Their messages are dead-lettered all the same: a record of what came back."""
        try:
            users.return_users_of_forgotten_sessions(sv, events)
        except Exception:
            logger.exception(
                "could not return the users of forgotten sessions",
                extra={"messages": len(events)},
            )

    def _dispatch(self, task: str, args: list[Any], countdown: float | None = None) -> None:
        """Hand recorded events to a task; if that fails, beat re-dispatches them."""
        options = {"countdown": countdown} if countdown else {}
        try:
            self.celery.send_task(task, args=args, **options)
        except Exception:
            logger.warning(
                "events recorded but not handed to a task; beat will dispatch them",
                extra={"task": task},
                exc_info=True,
            )


class UserManagerIntake(bootsteps.ConsumerStep):
    """Runs the intake consumer in a thread for as long as the worker's consumer runs, with
    a `Services` of its own in the worker's main process (the pool's children build theirs
    after the fork)."""

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self._services: Services | None = None
        self._consumer: IntakeConsumer | None = None
        self._thread: threading.Thread | None = None

    def start(self, parent: Any) -> None:
        if self._services is None:
            self._services = build_services(parent.app)
        settings = self._services.settings
        self._consumer = IntakeConsumer(
            self._services.topology,
            parent.app,
            self._services,
            settle_seconds=settings.completion_settle_seconds,
        )
        self._thread = threading.Thread(
            target=self._consumer.run_batched, name="user-manager-intake", daemon=True
        )
        self._thread.start()
        logger.info("user manager intake started")

    def stop(self, parent: Any) -> None:
        if self._consumer is not None:
            self._consumer.should_stop = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._consumer = None
        self._thread = None

    def shutdown(self, parent: Any) -> None:
        self.stop(parent)
        if self._services is not None:
            self._services.close()
            self._services = None
