"""AMQP names of the User Manager contract and the publisher we send with."""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from typing import Any

from kombu import Connection, Exchange, Producer, Queue
from kombu.transport import redis as redis_transport

logger = logging.getLogger(__name__)

USER_MANAGER_EXCHANGE = Exchange("USER_MANAGER_EXCHANGE", type="direct", durable=True)
SESSION_SUPERVISOR_EXCHANGE = Exchange("SESSION_SUPERVISOR_EXCHANGE", type="direct", durable=True)
USER_MANAGER_ROUTING_KEY = "SESSION_SUPERVISOR"


def session_routing_key(session_id: str) -> str:
    """The routing key the User Manager uses for messages meant for one session."""
    return f"SESSION_SUPERVISOR_{session_id}"


def user_manager_body(topic: str, session_id: str, data: dict[str, Any]) -> dict[str, Any]:
    return {"topic": topic, "supervisor-id": session_id, "data": data}


class JsonPublisher:
    """Publishes persistent JSON messages to one exchange, with publisher confirms on AMQP.

    The connection is opened lazily, reused, and rebuilt in a forked child, so no socket is
    shared across a fork. Publishing raises on failure (after dropping the connection);
    callers keep the message and retry."""

    def __init__(
        self,
        url: str,
        exchange: Exchange,
        *,
        declare: tuple[Queue, ...] = (),
        timeout: float = 10.0,
    ) -> None:
        self.url = url
        self.exchange = exchange
        self.declare = declare
        self.timeout = timeout
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._connection: Connection | None = None
        self._producer: Producer | None = None

    def _ensure_producer(self) -> Producer:
        if self._producer is None or self._pid != os.getpid():
            self._connection = Connection(
                self.url,
                connect_timeout=self.timeout,
                transport_options={"confirm_publish": True},
            )
            self._producer = Producer(self._connection.channel(), serializer="json")
            self.exchange(self._producer.channel).declare()
            for queue in self.declare:
                queue(self._producer.channel).declare()
            self._pid = os.getpid()
        return self._producer

    def send(self, body: dict[str, Any], routing_key: str) -> None:
        """Send one body; on AMQP the call returns only once the broker has confirmed it."""
        with self._lock:
            try:
                self._ensure_producer().publish(
                    body,
                    exchange=self.exchange,
                    routing_key=routing_key,
                    delivery_mode=2,
                    serializer="json",
                    timeout=self.timeout,
                )
            except Exception:
                self._reset()
                raise

    def _reset(self) -> None:
        connection, self._connection, self._producer = self._connection, None, None
        if connection is not None and self._pid == os.getpid():
            try:
                connection.release()
            except Exception:  # a broken connection may fail to close; we drop it anyway
                logger.debug("broker connection close failed", exc_info=True)

    def close(self) -> None:
        with self._lock:
            self._reset()


class UserManagerPublisher(JsonPublisher):
    """What we send to the User Manager: USER_MANAGER_EXCHANGE, key SESSION_SUPERVISOR."""

    def __init__(self, url: str, *, timeout: float = 10.0) -> None:
        super().__init__(url, USER_MANAGER_EXCHANGE, timeout=timeout)

    def publish(self, body: dict[str, Any]) -> None:
        self.send(body, USER_MANAGER_ROUTING_KEY)


DEAD_LETTER_EXCHANGE = Exchange("SESSION_SUPERVISOR_DEAD_LETTERS", type="direct", durable=True)


@dataclass(frozen=True)
class IntakeTopology:
    """Where User Manager messages are consumed and where refused ones are kept.

    One durable queue every worker consumes; each active session binds its routing key
    to it. On AMQP, a message the consumer rejects goes to the dead-letter queue by itself."""

    url: str
    queue_name: str = "session-supervisor.user-manager-events"
    dead_letter_queue_name: str = "session-supervisor.dead-letter"

    @property
    def dead_letter_queue(self) -> Queue:
        return Queue(
            self.dead_letter_queue_name,
            exchange=DEAD_LETTER_EXCHANGE,
            routing_key=self.dead_letter_queue_name,
            durable=True,
        )

    @property
    def intake_queue(self) -> Queue:
        arguments = None
        if self.url.startswith(("amqp", "pyamqp")):
            arguments = {
                "x-dead-letter-exchange": DEAD_LETTER_EXCHANGE.name,
                "x-dead-letter-routing-key": self.dead_letter_queue_name,
            }
        return Queue(
            self.queue_name,
            exchange=SESSION_SUPERVISOR_EXCHANGE,
            routing_key=self.queue_name,
            durable=True,
            queue_arguments=arguments,
        )

    def declare(self, channel: Any) -> Queue:
        self.dead_letter_queue(channel).declare()
        queue = self.intake_queue(channel)
        queue.declare()
        return queue


class SessionBindings:
    """Adds and removes a session's routing key on the intake queue.

    Binding happens before we register with the User Manager, so no reply can be lost;
    a binding left behind by a crash only routes messages that are then refused."""

    def __init__(self, topology: IntakeTopology, *, timeout: float = 10.0) -> None:
        self.topology = topology
        self.timeout = timeout

    def bind(self, session_id: str) -> None:
        with Connection(self.topology.url, connect_timeout=self.timeout) as connection:
            queue = self.topology.declare(connection.default_channel)
            queue.bind_to(SESSION_SUPERVISOR_EXCHANGE, routing_key=session_routing_key(session_id))
        logger.info("session bound", extra={"workload_id": session_id})

    def unbind(self, session_id: str) -> None:
        routing_key = session_routing_key(session_id)
        with Connection(self.topology.url, connect_timeout=self.timeout) as connection:
            channel = connection.default_channel
            queue = self.topology.declare(channel)
            queue.unbind_from(SESSION_SUPERVISOR_EXCHANGE, routing_key=routing_key)
            if isinstance(channel, redis_transport.Channel):
                _forget_redis_binding(
                    channel, queue.name, SESSION_SUPERVISOR_EXCHANGE.name, routing_key
                )
        logger.info("session unbound", extra={"workload_id": session_id})


def _forget_redis_binding(
    channel: redis_transport.Channel, queue: str, exchange: str, routing_key: str
) -> None:
    """Remove a binding from where kombu's Redis transport keeps it.

    kombu's virtual `queue_unbind` filters the list `get_table` returned, but on Redis that
    list is a fresh copy of the set `_kombu.binding.<exchange>`, and the transport has no
    `_queue_unbind` to write the change back: the member stays, and every later connection
    routes the session's messages to the queue again. We delete it as the transport's own
    queue deletion does: from that set and from the one that keeps the table from a sweep."""
    meta = channel.typeof(exchange).prepare_bind(queue, exchange, routing_key, None)
    member = channel.sep.join(part or "" for part in meta)
    keys = [channel.keyprefix_queue % (exchange,)]
    # Older kombu releases (setup.cfg allows 5.4) have no binding expiry, hence no such set.
    permanent = getattr(channel, "keyprefix_binding_permanent", None)
    if permanent:
        keys.append(permanent % (exchange,))
    with channel.conn_or_acquire() as client, client.pipeline() as pipe:
        for key in keys:
            pipe.srem(key, member)
        pipe.execute()


class DeadLetters:
    """Keeps refused messages for inspection, with the reason, on the dead-letter queue."""

    def __init__(self, topology: IntakeTopology, *, timeout: float = 10.0) -> None:
        self._routing_key = topology.dead_letter_queue_name
        self._publisher = JsonPublisher(
            topology.url,
            DEAD_LETTER_EXCHANGE,
            declare=(topology.dead_letter_queue,),
            timeout=timeout,
        )

    def keep(self, *, reason: str, routing_key: str | None, body: bytes | str) -> None:
        text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
        record = {"reason": reason, "routing_key": routing_key, "body": text[:65536]}
        self._publisher.send(record, self._routing_key)

    def close(self) -> None:
        self._publisher.close()
