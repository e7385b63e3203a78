"""Intake of User Manager messages inside the Celery worker.

A consumer bootstep runs a kombu `ConsumerMixin` on USER_MANAGER_BROKER_URL (its own
connection: the User Manager's exchanges need not live on Celery's broker). For each
message it parses and validates, records the event in the Postgres inbox (only for a known
session), hands the inbox id to a Celery task, and only then acks. A message that makes no
sense is refused: logged with its reason, counted, kept on the dead-letter queue, and
acked, so it is never redelivered in a loop.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from celery import Celery, bootsteps
from kombu import Connection, Consumer, Message
from kombu.mixins import ConsumerMixin

from supervisor import inbox
from supervisor.intake import RefusedMessage, parse
from supervisor.messaging import IntakeTopology
from supervisor.refusals import refuse
from supervisor.service import Supervisor
from tasks.event_tasks import TASK_FOR_TOPIC

logger = logging.getLogger(__name__)

PREFETCH = 64
RETRY_PAUSE_SECONDS = 1.0


class IntakeConsumer(ConsumerMixin):
    """Survives broker restarts (ConsumerMixin reconnects with backoff)."""

    def __init__(
        self,
        topology: IntakeTopology,
        celery: Celery,
        supervisor: Callable[[], Supervisor],
        *,
        settle_seconds: float = 0.0,
    ) -> None:
        self.topology = topology
        self.connection = Connection(topology.url, heartbeat=30)
        self.celery = celery
        self.supervisor = supervisor
        self.settle_seconds = settle_seconds

    def get_consumers(self, consumer_class: type[Consumer], channel: Any) -> list[Consumer]:
        queue = self.topology.declare(channel)
        consumer = consumer_class(
            queues=[queue], on_message=self.on_message, prefetch_count=PREFETCH
        )
        return [consumer]

    def on_connection_revived(self) -> None:
        logger.info("user manager intake connected", extra={"queue": self.topology.queue_name})

    def on_message(self, message: Message) -> None:
        routing_key = message.delivery_info.get("routing_key")
        body = message.body
        try:
            event = parse(body, routing_key)
            inbox_id = inbox.record(self.supervisor().db, event)
            if inbox_id is None:
                raise RefusedMessage("unknown-session", event.session_id)
        except RefusedMessage as exc:
            refuse(
                self.supervisor(),
                reason=exc.reason,
                detail=exc.detail,
                routing_key=routing_key,
                body=body,
            )
            message.ack()
            return
        except Exception:
            logger.exception("intake could not record a message; it will be redelivered")
            time.sleep(RETRY_PAUSE_SECONDS)
            message.requeue()
            return
        options: dict[str, Any] = {}
        if event.topic == "user-rendering-completed" and self.settle_seconds:
            options["countdown"] = self.settle_seconds
        try:
            self.celery.send_task(TASK_FOR_TOPIC[event.topic], args=[inbox_id], **options)
        except Exception:
            logger.warning(
                "event recorded but not handed to a task; beat will dispatch it",
                extra={"workload_id": event.session_id, "topic": event.topic},
                exc_info=True,
            )
        message.ack()


class UserManagerIntake(bootsteps.ConsumerStep):
    """Runs the intake consumer in a thread for as long as the worker's consumer runs."""

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self._consumer: IntakeConsumer | None = None
        self._thread: threading.Thread | None = None

    def start(self, parent: Any) -> None:
        from tasks.runtime import supervisor

        settings = parent.app.conf.supervisor_settings
        self._consumer = IntakeConsumer(
            supervisor().topology,
            parent.app,
            supervisor,
            settle_seconds=settings.completion_settle_seconds,
        )
        self._thread = threading.Thread(
            target=self._consumer.run, name="user-manager-intake", daemon=True
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
