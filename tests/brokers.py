"""A look at the session bindings of the intake queue on either transport the User Manager
exchanges live on: RabbitMQ in production, kombu's Redis transport in the embedded mode."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from urllib.parse import urlsplit

import redis
from kombu import Connection, Producer
from kombu.transport.redis import Channel as RedisChannel

from supervisor.messaging import (
    SESSION_SUPERVISOR_EXCHANGE,
    IntakeTopology,
    SessionBindings,
    session_routing_key,
)

PREFIX = session_routing_key("")


@dataclass
class Broker:
    kind: str
    topology: IntakeTopology

    @property
    def bindings(self) -> SessionBindings:
        return SessionBindings(self.topology)

    def recorded_keys(self) -> set[str] | None:
        """Session routing keys the broker records for our queue; None when we cannot ask."""
        if self.kind == "redis":
            return self._redis_keys()
        return self._rabbitmq_keys()

    def _redis_keys(self) -> set[str]:
        client = redis.Redis.from_url(self.topology.url)
        members = client.smembers(f"_kombu.binding.{SESSION_SUPERVISOR_EXCHANGE.name}")
        keys = set()
        for member in members:
            routing_key, _pattern, queue = member.decode().split(RedisChannel.sep)
            if queue == self.topology.queue_name and routing_key.startswith(PREFIX):
                keys.add(routing_key)
        return keys

    def _rabbitmq_keys(self) -> set[str] | None:
        host = urlsplit(self.topology.url).hostname
        if host not in {"127.0.0.1", "localhost", "::1"} or not shutil.which("rabbitmqctl"):
            return None  # the CLI talks to the local node only; routing is still checked
        vhost = Connection(self.topology.url).virtual_host or "/"
        columns = ["source_name", "destination_name", "routing_key"]
        listing = subprocess.run(
            ["rabbitmqctl", "list_bindings", "-q", "--no-table-headers", "-p", vhost, *columns],
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout
        keys = set()
        for line in listing.splitlines():
            source, destination, routing_key = [*line.split("\t"), "", "", ""][:3]
            if (
                source == SESSION_SUPERVISOR_EXCHANGE.name
                and destination == self.topology.queue_name
                and routing_key.startswith(PREFIX)
            ):
                keys.add(routing_key)
        return keys

    def routed(self, routing_keys: list[str]) -> int:
        """Publish one probe per key on a new connection; how many reached the intake queue.
        The queue is emptied again afterwards."""
        with Connection(
            self.topology.url, transport_options={"confirm_publish": True}
        ) as connection:
            channel = connection.default_channel
            producer = Producer(channel, serializer="json")
            for routing_key in routing_keys:
                producer.publish(
                    {"probe": routing_key},
                    exchange=SESSION_SUPERVISOR_EXCHANGE,
                    routing_key=routing_key,
                )
            # On AMQP each publish returned once confirmed, so the queue already holds it. Not
            # a passive declare: on Redis an empty queue is no key at all, hence "no queue".
            queue = self.topology.declare(channel)
            count = queue.queue_declare().message_count
            queue.purge()
            return count

    def assert_bound(self, session_ids: list[str]) -> None:
        keys = [session_routing_key(s) for s in session_ids]
        assert self.routed(keys) == len(keys)
        recorded = self.recorded_keys()
        if recorded is not None:
            assert set(keys) <= recorded

    def assert_unbound(self, session_ids: list[str]) -> None:
        keys = [session_routing_key(s) for s in session_ids]
        assert self.routed(keys) == 0, "an unbound session's messages still reach the queue"
        recorded = self.recorded_keys()
        if recorded is not None:
            assert not set(keys) & recorded, f"left behind: {sorted(set(keys) & recorded)[:5]}"
